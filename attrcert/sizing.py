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
    halving,
    parse_size,
    plan,
)

__all__ = ["AUTO_FULL_MAX_D", "AUTO_FULL_MAX_D_LINF", "SPECTRAL", "Sizing",
           "default_batch_size", "fitted_batches", "resolve_spectral", "size_run"]

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
    """

    spectral: str
    abs_sum_blocked: bool
    batch_size: int
    chunk_size: int
    plan: Plan
    activation: int = 0

    def classes_per_pass(self, batch: int, label_gradient: str, steps: int) -> int:
        """Class copies of a batch of ``batch`` samples that Proposition 1's gradients may
        stack in one pass: first-order passes keep about ``2 A`` per copy, second-order
        ones (``label_gradient="attribution"``) an attribution graph, ``4 m A``."""
        per_copy = (GRAPH_FACTOR * max(1, steps) if label_gradient == "attribution" else 2)
        return max(1, self.plan.budget // max(1, batch * per_copy * self.activation))


def size_run(model: Model, x: Tensor, attribution: Attribution, *, spectral: str, p: float,
             memory_budget: int | str | None, batch_size: int | None,
             chunk_size: int | None) -> Sizing:
    """Spectral path, batch size and chunk size for ``memory_budget`` bytes (``None``:
    :func:`attrcert.memory.default_budget`), from :func:`attrcert.memory.plan`'s estimates.

    Sizes the user gave are kept. ``spectral="auto"`` for l-inf forms ``J`` only where it
    fits the budget (else ``sum |P_ij|`` blocked, ``O(chunk d)`` memory); ``"full"`` that
    cannot fit even one sample is refused before any pass runs (a CPU process that
    outgrows its memory is killed by the system, not warned).
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
    return Sizing(spectral=how, abs_sum_blocked=blocked, batch_size=batch, chunk_size=chunk,
                  plan=estimate, activation=activation)


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
