"""Which operations of a model break the twice-differentiability the bounds assume.

The bounds of the paper assume a locally linear attribution, i.e. a twice
differentiable classifier (docs/math.md §6). With ReLU the Hessian is zero almost everywhere
(the saliency bound is 0, meaningless); max-pooling switches its winner under tiny
perturbations. This module lists such operations so every result can carry a warning.

The check runs one forward pass under a dispatch mode that records every ATen operator
the model calls (which catches ``F.relu`` inside ``forward`` as well as ``nn.ReLU``, and
works for eager, torch.export and TorchScript models alike), and also reads the
ATen operator names of TorchScript graphs. The forward runs as the attributions run it
(:func:`attrcert.attributions.differentiable.probe_forward`), so that what is recorded is
what the attribution graph holds: e.g. the activation inside ``nn.TransformerEncoderLayer``,
not the fused op of its inference fast path (which a traced archive may still hold, and
which is then reported, since it has no derivative at all).
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import Module

from .attributions import Model
from .attributions.differentiable import FAST_PATH_OPS, ProbeMode, probe_forward

#: ATen operators (overload packet names) whose first or second derivative jumps.
NONSMOOTH_OPS: dict[str, str] = {
    "relu": "ReLU",
    "relu_": "ReLU",
    "relu6": "ReLU6",
    "leaky_relu": "LeakyReLU",
    "leaky_relu_": "LeakyReLU",
    "prelu": "PReLU",
    "_prelu_kernel": "PReLU",
    "rrelu": "RReLU",
    "rrelu_with_noise": "RReLU",
    "hardtanh": "Hardtanh",
    "hardtanh_": "Hardtanh",
    "hardswish": "Hardswish",
    "hardswish_": "Hardswish",
    "hardsigmoid": "Hardsigmoid",
    "hardsigmoid_": "Hardsigmoid",
    "hardshrink": "Hardshrink",
    "softshrink": "Softshrink",
    "threshold": "Threshold",
    "threshold_": "Threshold",
    "elu": "ELU",
    "elu_": "ELU",
    "celu": "CELU",
    "selu": "SELU",
    "max_pool1d": "max-pooling",
    "max_pool2d": "max-pooling",
    "max_pool3d": "max-pooling",
    "max_pool1d_with_indices": "max-pooling",
    "max_pool2d_with_indices": "max-pooling",
    "max_pool3d_with_indices": "max-pooling",
    "adaptive_max_pool1d": "max-pooling",
    "adaptive_max_pool2d": "max-pooling",
    "adaptive_max_pool3d": "max-pooling",
    "fractional_max_pool2d": "max-pooling",
    "fractional_max_pool3d": "max-pooling",
    "abs": "abs",
    "sign": "sign",
    "sgn": "sign",
    "heaviside": "step",
    "floor": "floor",
    "ceil": "ceil",
    "round": "round",
    "trunc": "trunc",
    "clamp": "clamp",
    "clamp_": "clamp",
    "clamp_min": "clamp",
    "clamp_min_": "clamp",
    "clamp_max": "clamp",
    "clamp_max_": "clamp",
    "clip": "clamp",
    "maximum": "maximum",
    "minimum": "minimum",
    "max": "max",
    "min": "min",
    "amax": "max",
    "amin": "min",
    "topk": "topk",
    "sort": "sort",
    **{op: f"{module} fast path, no derivative" for op, module in FAST_PATH_OPS.items()},
}


#: Set by :mod:`attrcert.loading.smoothing` on a model whose Hardsigmoid/Hardswish it
#: rewrote into forms autograd differentiates twice: their names (still not smooth).
REWRITTEN_ATTR = "attrcert_rewritten_nonsmooth"


class NonSmoothModelWarning(UserWarning):
    """The model contains operations for which the bounds are not certificates."""


class _OpRecorder(ProbeMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _script_ops(model: Model) -> set[str]:
    """The ATen ops of a TorchScript graph, those in branches not taken included (not
    ``prim::`` ops such as ``prim::max`` of two ints, nor the fast-path ops, which a
    scripted ``nn.TransformerEncoderLayer`` holds in a branch taken only without
    gradients)."""
    graph = getattr(model, "inlined_graph", None)
    if graph is None:
        return set()
    kinds = (node.kind() for node in graph.nodes())
    return {kind[len("aten::"):] for kind in kinds
            if kind.startswith("aten::") and kind[len("aten::"):] not in FAST_PATH_OPS}


def find_nonsmooth(model: Model, example: Tensor) -> list[str]:
    """The non-smooth operations ``model`` uses on ``example``: sorted human names, each
    with the ATen ops behind it, e.g. ``"max-pooling (aten.max_pool2d,
    aten.max_pool2d_with_indices)"``.

    ``example`` is one input batch ``(N, C, H, W)``; only ops actually executed are seen
    (plus, for TorchScript, every ATen op of its graph). The model runs on ``example[:1]``
    as the attributions run it (module docstring, :func:`probe_forward`).
    """
    ops = probe_forward(model, example[:1], _OpRecorder).ops | _script_ops(model)
    by_name: dict[str, set[str]] = {}
    for op in ops:
        if op in NONSMOOTH_OPS:
            by_name.setdefault(NONSMOOTH_OPS[op], set()).add(f"aten.{op.rstrip('_')}")
    found = {f"{name} ({', '.join(sorted(aten))})" for name, aten in by_name.items()}
    if isinstance(model, Module):  # operations rewritten out of the graph, still not smooth
        found.update(name for m in model.modules() for name in getattr(m, REWRITTEN_ATTR, ()))
    return sorted(found)


def nonsmooth_message(ops: list[str]) -> str:
    """The warning shown when :func:`find_nonsmooth` found something."""
    return (
        "model is not twice differentiable (" + ", ".join(ops) + "): the bounds assume a "
        "locally linear attribution and are estimates, not certificates, for this model "
        "(docs/math.md §6); check them with an attack"
    )
