"""How a run is cut to fit its memory budget: the spectral path (full ``J`` or
matrix-free), samples per batch, Jacobian rows per pass (:func:`size_run`), and batches that
are retried smaller when they run out of memory (:func:`fitted_batches`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from .attributions import Attribution, Model
from .errors import OptionError
from .jacobian import default_chunk_size
from .memory import (
    GRAPH_FACTOR,
    MemoryBudgetError,
    Plan,
    activation_bytes,
    default_budget,
    format_size,
    free_memory,
    halving,
    parse_size,
    plan,
)
from .spectral import AttributionGraph

__all__ = ["AUTO_FULL_MAX_D", "AUTO_FULL_MAX_D_LINF", "FOOTPRINT_FACTOR", "SPECTRAL", "Sizing",
           "default_batch_size", "fitted_batches", "point_bytes", "points_per_pass",
           "resolve_spectral", "size_run"]

BatchResult = TypeVar("BatchResult")


SPECTRAL = ("auto", "full", "iterative")
#: ``spectral="auto"`` forms J up to this d for l-inf, where Theorem 2 needs every entry of
#: ``P = J^T J``; above it l-inf uses Corollary 1 from the matrix-free path (BENCHMARKS.md).
AUTO_FULL_MAX_D_LINF = 4096
#: ``spectral="auto"`` forms J up to this d for every norm: measured on a Softplus CNN with
#: IG m = 50 (1 thread, ``benchmarks/bench_crossover.py``), the full path took half the
#: matrix-free time at d = 16, and the matrix-free path won from d = 36 on (1.3x; 2.3x at
#: 64, 5.6x at 256, 30x at 784).
AUTO_FULL_MAX_D = 32


def resolve_spectral(spectral: str, d: int, p: float) -> str:
    """``"full"`` or ``"iterative"`` for ``spectral`` (see :data:`AUTO_FULL_MAX_D` and
    :data:`AUTO_FULL_MAX_D_LINF`)."""
    if spectral not in SPECTRAL:
        raise OptionError(f"unknown spectral {spectral!r}: use one of {', '.join(SPECTRAL)}")
    if spectral != "auto":
        return spectral
    if d <= AUTO_FULL_MAX_D or (math.isinf(p) and d <= AUTO_FULL_MAX_D_LINF):
        return "full"
    return "iterative"


#: Peak memory of the matrix-free products over the bytes their graphs save
#: (:func:`point_bytes`): measured 0.94-1.56 on the zoo's nets at 3x224x224 with IG m = 16
#: (peak RSS less the process before the run and the Krylov basis; BENCHMARKS.md).
FOOTPRINT_FACTOR = 2
#: PROPACK's Krylov basis: ``2 d k`` float64 for a basis of ``k = min(d, 300)`` vectors.
_BASIS_VECTORS = 300


def point_bytes(attribution: Attribution, model: Model, x: Tensor, target: Tensor) -> int:
    """Bytes that one point of ``attribution`` (one Riemann point of integrated gradients,
    or the one gradient of saliency) holds in the matrix-free products' graph, measured:
    the graph of the first point of ``x[:1]`` is built as :class:`JacobianProducts` builds
    it, and the distinct storages that autograd saves for it are summed
    (``torch.autograd.graph.saved_tensors_hooks``; each held until the sum, so that no
    address is counted twice or missed), the model's parameters and buffers excepted (they
    are in memory anyway). One forward and two backward passes of one point; the estimate
    the planner used before (``GRAPH_FACTOR * A`` per point) was off by up to 6x on the zoo
    (BENCHMARKS.md)."""
    owned = [*model.parameters(), *model.buffers()] if isinstance(model, torch.nn.Module) \
        else []
    skip = {t.untyped_storage().data_ptr() for t in owned}
    saved: dict[int, int] = {}
    held: list[Tensor] = []  # alive until summed: a freed storage's address is not reused

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            saved[storage.data_ptr()] = storage.nbytes()
            held.append(t)
        return t

    points = attribution.points
    first = attribution.segments([1] + ([points - 1] if points > 1 else []))[0]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        graph = AttributionGraph(first, model, x[:1].detach(), target[:1], copies=1)
    extra = sum(t.numel() * t.element_size() for t in (graph.g, graph.w) if t is not None)
    total = sum(saved.values()) + extra
    held.clear()
    return total


def points_per_pass(attribution: Attribution, model: Model, x: Tensor, target: Tensor,
                    budget: int) -> tuple[int | None, int]:
    """``(points per pass, bytes per point)`` for the matrix-free products of a multi-point
    attribution: as many points as :data:`FOOTPRINT_FACTOR` times :func:`point_bytes`
    allows in ``budget`` less the Krylov basis (``None``: all of them fit; one-point
    methods are not measured).

    Raises:
        MemoryBudgetError: one point alone needs more than the memory free on the device
            (a CPU process that outgrows it is killed by the system, not warned).
    """
    points = attribution.points
    if points <= 1:
        return None, 0
    per_point = point_bytes(attribution, model, x, target)
    d = x[0].numel()
    room = budget - 2 * d * min(d, _BASIS_VECTORS) * 8
    need = FOOTPRINT_FACTOR * per_point
    free = free_memory(x.device)
    if need > free:
        raise MemoryBudgetError(
            f"one point of {attribution.name} needs about {format_size(need)} for its "
            f"attribution graph, more than the {format_size(free)} free on {x.device}: use "
            "smaller inputs, --dtype float32 or a machine with more memory")
    fit = max(1, room // max(1, need))
    return (None if fit >= points else int(fit)), per_point


@dataclass(frozen=True)
class Sizing:
    """How a run is cut to fit its memory budget (:func:`size_run`).

    Attributes:
        spectral: ``"full"`` or ``"iterative"``.
        abs_sum_blocked: Theorem 2's ``sum |P_ij|`` column block by column block (``auto``
            for l-inf when the full Jacobian does not fit).
        batch_size: samples per batch.
        chunk_size: rows (or columns) per replicated pass.
        plan: the estimates behind them.
        activation: ``A``, bytes one forward pass of one sample produces.
        points_per_pass: the attribution's points that the matrix-free products may hold
            in memory at once (:func:`points_per_pass`; ``None``: all).
        point_bytes: the measured graph of one point (0: not measured).
    """

    spectral: str
    abs_sum_blocked: bool
    batch_size: int
    chunk_size: int
    plan: Plan
    activation: int = 0
    points_per_pass: int | None = None
    point_bytes: int = 0

    @property
    def value_points(self) -> int | None:
        """Attribution points (Riemann points times input rows) that one first-order pass
        (``g`` without the products' graph) may hold in the budget: about ``2 A`` each,
        the activations kept for one backward pass (``None``: ``A`` not measured)."""
        return max(1, self.plan.budget // (2 * self.activation)) if self.activation else None

    def classes_per_pass(self, batch: int, label_gradient: str, steps: int) -> int:
        """Class copies of a batch of ``batch`` samples that Proposition 1's gradients may
        stack in one pass: first-order passes keep about ``2 A`` per copy, second-order
        ones (``label_gradient="attribution"``) an attribution graph, ``4 m A``."""
        per_copy = (GRAPH_FACTOR * max(1, steps) if label_gradient == "attribution" else 2)
        return max(1, self.plan.budget // max(1, batch * per_copy * self.activation))


def size_run(model: Model, x: Tensor, attribution: Attribution, *, spectral: str, p: float,
             memory_budget: int | str | None, batch_size: int | None,
             chunk_size: int | None, target: Tensor | None = None) -> Sizing:
    """Spectral path, batch size and chunk size for ``memory_budget`` bytes (``None``:
    :func:`attrcert.memory.default_budget`), from :func:`attrcert.memory.plan`'s estimates.

    Sizes the user gave are kept. ``spectral="auto"`` for l-inf forms ``J`` only where it
    fits the budget (else ``sum |P_ij|`` blocked, ``O(chunk d)`` memory); ``"full"`` that
    cannot fit even one sample is refused before any pass runs (a CPU process that
    outgrows its memory is killed by the system, not warned). On the matrix-free path a
    multi-point attribution (integrated gradients) is given :func:`points_per_pass`, from
    a graph measured on the first sample (``target``: its class, default 0).
    """
    budget = default_budget(x.device) if memory_budget is None else parse_size(memory_budget)
    d = x[0].numel()
    how = resolve_spectral(spectral, d, p)
    def estimate_for(path: str) -> Plan:
        return plan(budget, d=d, steps=int(getattr(attribution, "steps", 1)),
                    activation=activation, itemsize=x.element_size(), spectral=path,
                    default_batch=batch_size or default_batch_size(x.device))

    activation = activation_bytes(model, x)
    estimate = estimate_for(how)
    blocked = False
    if how == "full" and not estimate.full_fits:
        if spectral != "auto":
            raise MemoryBudgetError(
                f"the full Jacobian path needs about {format_size(estimate.full_bytes)} per "
                f"sample (d = {d}), over the memory budget of {format_size(budget)}: use "
                "--spectral iterative or a larger --memory-budget")
        how, blocked = "iterative", True
        estimate = estimate_for(how)
    batch = batch_size or estimate.batch_size
    chunk = chunk_size or min(estimate.chunk_size, default_chunk_size(attribution, x[:batch]))
    per_pass, per_point = None, 0
    if how == "iterative":
        first = target[:1] if target is not None else torch.zeros(1, dtype=torch.long,
                                                                  device=x.device)
        per_pass, per_point = points_per_pass(attribution, model, x, first, budget)
    return Sizing(spectral=how, abs_sum_blocked=blocked, batch_size=batch, chunk_size=chunk,
                  plan=estimate, activation=activation, points_per_pass=per_pass,
                  point_bytes=per_point)


def default_batch_size(device: torch.device) -> int:
    """Samples per batch when none is given: 1 on CPU, where one sample per graph is fastest
    (BENCHMARKS.md: 2 samples sharing each pass cost 1.1x per sample), 16 on accelerators."""
    return 1 if device.type == "cpu" else 16


def fitted_batches(n: int, batch_size: int, device: torch.device,
                    work: Callable[[slice], BatchResult]) -> Iterator[BatchResult]:
    """``work`` on consecutive slices of ``batch_size`` samples, in order. A slice that runs
    out of memory is retried with half as many samples (:func:`attrcert.memory.halving`),
    and later slices keep the smaller size; results do not depend on the slicing."""
    size, start = batch_size, 0
    while start < n:
        def run(b: int, first: int = start) -> BatchResult:
            return work(slice(first, min(n, first + b)))

        result, size = halving(run, size, device=device, what="sample per batch")
        yield result
        start = min(n, start + size)
