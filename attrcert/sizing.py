"""What one pass holds, measured or estimated, for :mod:`attrcert.plan`: the spectral path
(full ``J`` or matrix-free, :func:`resolve_spectral`), the graph one attribution point keeps
(:func:`point_bytes`), and the samples per batch when none is given
(:func:`default_batch_size`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .attributions import Attribution, Model
from .errors import OptionError
from .spectral import AttributionGraph, CurvatureProducts

__all__ = ["AUTO_FULL_MAX_D", "AUTO_FULL_MAX_D_LINF", "FOOTPRINT_FACTOR", "GRAPHS", "SPECTRAL",
           "default_batch_size", "point_bytes", "resolve_spectral"]


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
#: The graphs :func:`point_bytes` measures: ``"curvature"``, the first-order graph of ``G``
#: that the default Krylov products keep (:class:`~attrcert.spectral.CurvatureProducts`);
#: ``"double_vjp"``, the second-order graph of ``g`` that the double-VJP products
#: (:class:`~attrcert.spectral.JacobianProducts`, the svds solvers), the attack's gradient
#: and ``J delta`` (:func:`attrcert.attack.jacobian_vector_product`) keep.
GRAPHS = ("curvature", "double_vjp")


def point_bytes(attribution: Attribution, model: Model, x: Tensor, target: Tensor, *,
                graph: str = "curvature") -> int:
    """Bytes that one point of ``attribution`` (one Riemann point of integrated gradients,
    or the one gradient of saliency) holds in ``graph`` (:data:`GRAPHS`), measured: the
    graph of the first point of ``x[:1]`` is built as the products build it, and the
    distinct storages that autograd saves for it are summed
    (``torch.autograd.graph.saved_tensors_hooks``; each held until the sum, so that no
    address is counted twice or missed), with the tensors the products keep beside it, the
    model's parameters and buffers excepted (they are in memory anyway). One forward and
    one backward pass of one point (two for ``"double_vjp"``); the estimate the planner
    used before (``GRAPH_FACTOR * A`` per point) was off by up to 6x on the zoo
    (BENCHMARKS.md)."""
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}: use one of {', '.join(GRAPHS)}")
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
    one, target = x[:1].detach(), target[:1]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if graph == "curvature":
            ops = CurvatureProducts(first, model, one, target)
            kept = (ops.gradient, ops.factor)
        else:
            double = AttributionGraph(first, model, one, target, copies=1)
            kept = (double.g, double.w)
    extra = sum(t.numel() * t.element_size() for t in kept if t is not None)
    total = sum(saved.values()) + extra
    held.clear()
    return total


def default_batch_size(device: torch.device) -> int:
    """Samples per batch when none is given: 1 on CPU, where one sample per graph is fastest
    (BENCHMARKS.md: 2 samples sharing each pass cost 1.1x per sample; with small inputs on
    the matrix-free path a larger batch pays, :data:`attrcert.plan.LOCKSTEP_CPU_MAX_WIDTH`,
    and is the user's to ask for), 16 on accelerators."""
    return 1 if device.type == "cpu" else 16
