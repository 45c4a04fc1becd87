"""Which node of a torch.fx graph is ReLU or one of its relatives, and with what arguments.

A model reaches :mod:`attrcert.loading.smoothing` as one of two kinds of fx graph: ATen
calls (``torch.export``'s ``ep.module()``, TorchScript rebuilt by
:func:`attrcert.sound.torchscript.from_torchscript`), or torch-level calls
(``torch.fx.symbolic_trace`` of an ``nn.Module``: ``call_module`` of ``nn.ReLU``,
``call_function`` of ``F.relu``, ``call_method`` ``x.relu()``). :func:`match` reads all of
them into one :class:`Found`: the kind of operation, its tensor operands and parameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KINDS", "Found", "ModuleAttr", "match"]

#: kind -> the operation's name in messages.
KINDS = {"relu": "ReLU", "leaky": "LeakyReLU", "prelu": "PReLU", "clamp": "clamp/Hardtanh",
         "hardsigmoid": "Hardsigmoid", "hardswish": "Hardswish", "maximum": "maximum",
         "minimum": "minimum", "max_pool2d": "max-pooling",
         "adaptive_max_pool2d": "adaptive max-pooling"}


class ModuleAttr(str):
    """The path of a submodule's parameter (PReLU's ``weight``), read with ``get_attr``."""


@dataclass(frozen=True)
class Found:
    """One ReLU-like operation of a graph.

    Attributes:
        kind: a key of :data:`KINDS`.
        inputs: the tensor operands (``x``; ``a, b`` for maximum/minimum).
        params: the parameters by name (``slope``; ``weight``; ``lo``, ``hi``; the pooling's
            ``kernel_size``, ``stride``, ``padding``, ``dilation``, ``ceil_mode``;
            ``output_size``), numbers or graph nodes.
        inplace: the operation overwrites ``inputs[0]`` (``relu_``, ``inplace=True``).
        pair: it returns ``(values, indices)`` (``max_pool2d_with_indices``).
        what: how the graph names it (``aten.relu_``, ``nn.ReLU``, ``F.relu``), for messages.
    """

    kind: str
    inputs: tuple[Any, ...]
    params: dict[str, Any]
    inplace: bool = False
    pair: bool = False
    what: str = ""


_NO = inspect.Parameter.empty


def _sig(*params: tuple[str, Any]) -> inspect.Signature:
    """The signature of a torch-level call (its parameters and defaults), for binding."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([inspect.Parameter(n, kind, default=d) for n, d in params])


UNARY = _sig(("input", _NO), ("inplace", False))
HARDTANH = _sig(("input", _NO), ("min_val", -1.0), ("max_val", 1.0), ("inplace", False))
LEAKY = _sig(("input", _NO), ("negative_slope", 0.01), ("inplace", False))
PRELU = _sig(("input", _NO), ("weight", _NO))
CLAMP = _sig(("input", _NO), ("min", None), ("max", None))
CLAMP_MIN = _sig(("input", _NO), ("min", _NO))
CLAMP_MAX = _sig(("input", _NO), ("max", _NO))
BINARY = _sig(("input", _NO), ("other", _NO))
MAX_POOL = _sig(("input", _NO), ("kernel_size", _NO), ("stride", None), ("padding", 0),
                ("dilation", 1), ("ceil_mode", False), ("return_indices", False))
ADAPTIVE_MAX = _sig(("input", _NO), ("output_size", _NO), ("return_indices", False))

Spec = tuple[str, inspect.Signature, bool]  # kind, signature, always in place
FUNCTIONS: dict[Callable[..., Any], Spec] = {
    F.relu: ("relu", UNARY, False), torch.relu: ("relu", UNARY, False),
    F.relu_: ("relu", UNARY, True), torch.relu_: ("relu", UNARY, True),
    F.relu6: ("relu6", UNARY, False), F.hardtanh: ("hardtanh", HARDTANH, False),
    F.hardtanh_: ("hardtanh", HARDTANH, True), F.leaky_relu: ("leaky", LEAKY, False),
    F.leaky_relu_: ("leaky", LEAKY, True), F.prelu: ("prelu", PRELU, False),
    torch.prelu: ("prelu", PRELU, False), F.hardsigmoid: ("hardsigmoid", UNARY, False),
    F.hardswish: ("hardswish", UNARY, False), torch.clamp: ("clamp", CLAMP, False),
    torch.clip: ("clamp", CLAMP, False), torch.clamp_: ("clamp", CLAMP, True),
    torch.clamp_min: ("clamp_min", CLAMP_MIN, False),
    torch.clamp_max: ("clamp_max", CLAMP_MAX, False),
    torch.maximum: ("maximum", BINARY, False), torch.minimum: ("minimum", BINARY, False),
    F.max_pool2d: ("max_pool2d", MAX_POOL, False),
    torch.max_pool2d: ("max_pool2d", MAX_POOL, False),
    F.max_pool2d_with_indices: ("max_pool2d_pair", MAX_POOL, False),
    F.adaptive_max_pool2d: ("adaptive_max_pool2d", ADAPTIVE_MAX, False),
    F.adaptive_max_pool2d_with_indices: ("adaptive_pair", ADAPTIVE_MAX, False),
}
METHODS: dict[str, Spec] = {
    "relu": ("relu", UNARY, False), "relu_": ("relu", UNARY, True),
    "clamp": ("clamp", CLAMP, False), "clip": ("clamp", CLAMP, False),
    "clamp_": ("clamp", CLAMP, True), "clip_": ("clamp", CLAMP, True),
    "clamp_min": ("clamp_min", CLAMP_MIN, False), "clamp_min_": ("clamp_min", CLAMP_MIN, True),
    "clamp_max": ("clamp_max", CLAMP_MAX, False), "clamp_max_": ("clamp_max", CLAMP_MAX, True),
    "maximum": ("maximum", BINARY, False), "minimum": ("minimum", BINARY, False),
}
#: ATen overload packets (in-place ones end in ``_``) -> the kind their arguments read as.
ATEN = {"relu": "relu", "relu6": "relu6", "hardtanh": "hardtanh", "leaky_relu": "leaky",
        "prelu": "prelu", "_prelu_kernel": "prelu", "hardsigmoid": "hardsigmoid",
        "hardswish": "hardswish", "clamp": "clamp", "clip": "clamp",
        "clamp_min": "clamp_min", "clamp_max": "clamp_max", "maximum": "maximum",
        "minimum": "minimum", "max_pool2d": "max_pool2d",
        "max_pool2d_with_indices": "max_pool2d_pair",
        "adaptive_max_pool2d": "adaptive_pair"}


def _found(kind: str, bound: dict[str, Any], inplace: bool, what: str) -> Found | None:
    """The :class:`Found` of ``kind`` from its arguments by name (torch's or ATen's)."""
    x = bound.get("input", bound.get("self"))
    inplace = inplace or bool(bound.get("inplace", False))
    if kind in ("relu", "hardsigmoid", "hardswish"):
        return Found(kind, (x,), {}, inplace, what=what)
    if kind == "relu6":
        return Found("clamp", (x,), {"lo": 0.0, "hi": 6.0}, inplace, what=what)
    if kind == "hardtanh":
        return Found("clamp", (x,), {"lo": bound["min_val"], "hi": bound["max_val"]},
                     inplace, what=what)
    if kind in ("clamp", "clamp_min", "clamp_max"):
        lo, hi = bound.get("min"), bound.get("max")
        return Found("clamp", (x,), {"lo": lo, "hi": hi}, inplace, what=what)
    if kind == "leaky":
        return Found("leaky", (x,), {"slope": bound["negative_slope"]}, inplace, what=what)
    if kind == "prelu":
        return Found("prelu", (x,), {"weight": bound["weight"]}, what=what)
    if kind in ("maximum", "minimum"):
        return Found(kind, (x, bound["other"]), {}, what=what)
    if kind in ("max_pool2d", "max_pool2d_pair"):
        pair = kind.endswith("pair") or bool(bound.get("return_indices", False))
        params = {k: bound[k] for k in ("kernel_size", "stride", "padding", "dilation",
                                        "ceil_mode")}
        return Found("max_pool2d", (x,), params, pair=pair, what=what)
    if kind == "adaptive_pair" or kind == "adaptive_max_pool2d":
        pair = kind == "adaptive_pair" or bool(bound.get("return_indices", False))
        return Found("adaptive_max_pool2d", (x,), {"output_size": bound["output_size"]},
                     pair=pair, what=what)
    return None


def _bind(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


def _bind_schema(op: torch._ops.OpOverload, args: tuple, kwargs: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, arg in enumerate(op._schema.arguments):
        if i < len(args):
            out[arg.name] = args[i]
        elif arg.name in kwargs:
            out[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


def _match_aten(op: torch._ops.OpOverload, node: torch.fx.Node) -> Found | None:
    name = op.overloadpacket.__name__
    what = f"aten.{name}"
    if name in ("max", "min") and op._overloadname == "other":
        return Found("maximum" if name == "max" else "minimum", tuple(node.args[:2]), {},
                     what=what)
    inplace = name.endswith("_") and name[:-1] in ATEN
    kind = ATEN.get(name[:-1] if inplace else name)
    if kind is None:
        return None
    return _found(kind, _bind_schema(op, node.args, node.kwargs), inplace, what)


def _match_module(module: nn.Module, node: torch.fx.Node) -> Found | None:
    what = f"nn.{type(module).__name__}"
    inplace = bool(getattr(module, "inplace", False))
    x = node.args[0] if node.args else None
    if isinstance(module, nn.ReLU):
        return Found("relu", (x,), {}, inplace, what=what)
    if isinstance(module, nn.Hardtanh):  # ReLU6 too
        return Found("clamp", (x,), {"lo": float(module.min_val), "hi": float(module.max_val)},
                     inplace, what=what)
    if isinstance(module, nn.LeakyReLU):
        return Found("leaky", (x,), {"slope": float(module.negative_slope)}, inplace, what=what)
    if isinstance(module, nn.PReLU):
        return Found("prelu", (x,), {"weight": ModuleAttr(f"{node.target}.weight")}, what=what)
    if isinstance(module, nn.Hardsigmoid):
        return Found("hardsigmoid", (x,), {}, inplace, what=what)
    if isinstance(module, nn.Hardswish):
        return Found("hardswish", (x,), {}, inplace, what=what)
    if isinstance(module, nn.MaxPool2d):
        params = {"kernel_size": module.kernel_size, "stride": module.stride,
                  "padding": module.padding, "dilation": module.dilation,
                  "ceil_mode": module.ceil_mode}
        return Found("max_pool2d", (x,), params, pair=bool(module.return_indices), what=what)
    if isinstance(module, nn.AdaptiveMaxPool2d):
        return Found("adaptive_max_pool2d", (x,), {"output_size": module.output_size},
                     pair=bool(module.return_indices), what=what)
    return None


def match(node: torch.fx.Node, root: nn.Module) -> Found | None:
    """The ReLU-like operation ``node`` performs (``root``: the graph's module, for
    ``call_module``), or ``None``. ``torch.max(a, b)`` / ``x.max(y)`` count as maximum only
    when both operands are graph nodes (else they are reductions, left alone)."""
    if node.op == "call_module":
        return _match_module(root.get_submodule(str(node.target)), node)
    if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
        return _match_aten(node.target, node)
    spec: Spec | None = None
    if node.op == "call_function":
        target = node.target
        if target in (torch.max, torch.min) and len(node.args) == 2 and not node.kwargs \
                and all(isinstance(a, torch.fx.Node) for a in node.args):
            return Found("maximum" if target is torch.max else "minimum", tuple(node.args),
                         {}, what=f"torch.{target.__name__}")
        spec = FUNCTIONS.get(target) if callable(target) else None
        what = getattr(target, "__name__", str(target))
    elif node.op == "call_method":
        name = str(node.target)
        if name in ("max", "min") and len(node.args) == 2 and not node.kwargs \
                and all(isinstance(a, torch.fx.Node) for a in node.args):
            return Found("maximum" if name == "max" else "minimum", tuple(node.args), {},
                         what=f"Tensor.{name}")
        spec = METHODS.get(name)
        what = f"Tensor.{name}"
    if spec is None:
        return None
    kind, signature, inplace = spec
    bound = _bind(signature, tuple(node.args), dict(node.kwargs))
    return None if bound is None else _found(kind, bound, inplace, what)
