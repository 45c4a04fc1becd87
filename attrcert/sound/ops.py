"""The affine ATen operations of one variable input, as :class:`.nodes.Affine` in float64.

Each returns ``lin`` (``t -> A t``), ``lin_abs`` (``t -> |A| t``), the bias, and the fan-in /
fan-out that the rounding term needs (the most terms torch sums per output, and per input
in the backward pass). Maps whose weights are nonnegative (pooling, means, reshapes,
broadcasting) are their own ``lin_abs``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from .nodes import Affine
from .support import refusal

Val = Callable[[object], object]
F64 = Callable[[object], "Tensor | None"]
IsVar = Callable[[object], bool]
SHAPE_OPS = ("flatten", "view", "reshape", "_unsafe_view", "contiguous", "clone", "alias",
             "dropout", "squeeze", "unsqueeze", "expand", "lift_fresh_copy", "to", "_to_copy")
REDUCE_OPS = ("mean", "sum", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "avg_pool2d")
CONST_OPS = ("add", "sub", "mul", "div", "neg", "rsub")


def _per_sample(meta: object, op: str) -> tuple[int, ...]:
    if not isinstance(meta, Tensor):
        raise refusal(f"{op} (no shape recorded)")
    return tuple(int(s) for s in meta.shape[1:])


def _reshape(shape: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    def f(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], *shape)
    return f


def _expand(shape: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    def f(t: Tensor) -> Tensor:
        return t.expand(t.shape[0], *shape)
    return f


def broadcast(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Affine:
    """Broadcasting ``(B, *in_shape)`` to ``(B, *out_shape)`` (same rank): its transpose sums
    ``prod(out) / prod(in)`` copies."""
    if len(in_shape) != len(out_shape):
        raise InputError(f"--sound cannot broadcast a value of shape {in_shape} against "
                         f"{out_shape}: give both operands the same number of dimensions")
    f = _expand(out_shape)
    copies = math.prod(out_shape) // max(math.prod(in_shape), 1)
    return Affine("broadcast", f, f, None, fan_out=copies + 1)


def shape_op(op: str, node: object, args: tuple, kwargs: dict, val: Val) -> Affine:
    """Reshapes, copies, eval dropout, broadcasting and casts to the same dtype (the reader
    refuses any other dtype): exact, ``|A| = A``. A reshape must keep the batch axis and
    each sample's values (``view(-1)`` of a batch is refused)."""
    if op == "dropout" and val(args[2] if len(args) > 2 else kwargs.get("train")):
        raise InputError("--sound needs dropout in eval mode")
    shape = _per_sample(getattr(node, "meta", {}).get("val"), op)
    in_meta: Tensor = getattr(args[0], "meta", {}).get("val")  # type: ignore[assignment]
    in_shape = _per_sample(in_meta, op)
    out_meta: Tensor = node.meta["val"]  # type: ignore[attr-defined]
    if out_meta.shape[:1] != in_meta.shape[:1] or (
            op != "expand" and math.prod(shape) != math.prod(in_shape)):
        raise refusal(f"{op} across the batch axis")
    if op == "expand":
        return broadcast(in_shape, shape)
    f = _reshape(shape)
    return Affine(f"aten.{op}", f, f, None)


def detach_op() -> Affine:
    """``aten.detach``: the value passes, no adjoint does (:attr:`.nodes.Affine.stop`)."""
    return Affine("aten.detach", lambda t: t.detach(), lambda t: t, None, stop=True)


def slice_op(op: str, args: tuple, val: Val) -> Affine:
    """``slice`` / ``select`` of a per-sample axis (a selection: ``|A| = A``, exact); the
    whole batch axis passes through."""
    rest = [val(a) for a in args[1:]]
    dim = int(rest[0]) if rest else 0  # type: ignore[arg-type]
    if op == "slice":
        start, end, step = (rest[1:] + [None, None, 1][len(rest) - 1:])[:3]
        if dim == 0:
            if (start in (None, 0)) and (end is None or int(end) >= 2 ** 62) and step == 1:
                return Affine("aten.slice", lambda t: t, lambda t: t, None)
            raise refusal("slice of the batch axis")

        def f(t: Tensor) -> Tensor:
            return torch.ops.aten.slice(t, dim, start, end, step)
    else:
        if dim == 0:
            raise refusal("select of the batch axis")
        index = int(rest[1])  # type: ignore[arg-type]

        def f(t: Tensor) -> Tensor:
            return torch.select(t, dim, index)
    return Affine(f"aten.{op}", f, f, None)


def permute_op(op: str, args: tuple, val: Val) -> Affine:
    """``permute`` / ``transpose`` of the per-sample axes (the batch axis stays first)."""
    if op == "permute":
        dims = [int(d) for d in val(args[1])]  # type: ignore[union-attr]
        if dims[0] != 0:
            raise refusal("permute of the batch axis")

        def f(t: Tensor) -> Tensor:
            return t.permute(*dims)
    else:
        d0, d1 = int(val(args[1])), int(val(args[2]))  # type: ignore[arg-type]
        if 0 in (d0, d1):
            raise refusal("transpose of the batch axis")

        def f(t: Tensor) -> Tensor:
            return t.transpose(d0, d1)
    return Affine(f"aten.{op}", f, f, None)


def reduce_op(op: str, node: object, args: tuple, kwargs: dict, val: Val) -> Affine:
    """Means, sums and average pooling (nonnegative weights): ``|A| = A``."""
    name = f"aten.{op}"
    rest = [val(a) for a in args[1:]]
    in_meta = args[0].meta.get("val")
    in_shape = _per_sample(in_meta, op)
    out_shape = _per_sample(getattr(node, "meta", {}).get("val"), op)
    if op == "avg_pool2d":
        def f(t: Tensor) -> Tensor:
            return F.avg_pool2d(t, *rest)

        kernel = rest[0] if isinstance(rest[0], (list, tuple)) else [rest[0]] * 2
        taps = int(math.prod(int(k) for k in kernel)) + 1
        return Affine(name, f, f, None, fan_in=taps, fan_out=taps)
    if op in ("adaptive_avg_pool2d", "_adaptive_avg_pool2d"):
        size = rest[0]

        def f(t: Tensor) -> Tensor:
            return F.adaptive_avg_pool2d(t, size)
    else:
        dims = rest[0] if rest else None
        keep = bool(rest[1]) if len(rest) > 1 else bool(kwargs.get("keepdim", False))
        if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
            raise refusal(f"{op} over every axis (the batch axis included)")
        dims = [int(d) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        if any(d % (len(in_shape) + 1) == 0 for d in dims):
            raise refusal(f"{op} over the batch axis")
        dt = kwargs.get("dtype")
        if dt is not None and dt != torch.float64 and not dt.is_floating_point:
            raise refusal(f"{op} to {dt}")
        fn = torch.mean if op == "mean" else torch.sum

        def f(t: Tensor) -> Tensor:
            return fn(t, dim=dims, keepdim=keep)
    taps = math.prod(in_shape) // max(math.prod(out_shape), 1) + 1
    return Affine(name, f, f, None, fan_in=taps + 1, fan_out=2)


def conv_op(op: str, args: tuple, val: Val, f64: F64, is_var: IsVar) -> Affine:
    if not is_var(args[0]) or any(is_var(a) for a in args[1:]):
        raise refusal(op)
    w = f64(val(args[1]))
    assert w is not None
    b = f64(val(args[2])) if len(args) > 2 else None
    if op in ("convolution", "_convolution"):
        stride, padding, dilation, transposed, _, groups = (val(a) for a in args[3:9])
        if transposed:
            raise refusal("conv_transpose")
    else:
        rest = [val(a) for a in args[3:]]
        stride, padding, dilation, groups = (rest + [1, 0, 1, 1][len(rest):])[:4]
    if isinstance(padding, str):
        raise refusal(f"conv2d(padding={padding!r})")
    if w.ndim != 4:
        raise refusal(f"{op} of {w.ndim - 2} spatial dimensions (Conv2d only)")
    wa = w.abs()

    def conv(t: Tensor, weight: Tensor = w) -> Tensor:
        return F.conv2d(t, weight, None, stride, padding, dilation, groups)

    taps = int(w[0].numel())
    return Affine(f"aten.{op}", conv, lambda t: conv(t, wa),
                  None if b is None else b.view(1, -1, 1, 1), fan_in=taps + 1,
                  fan_out=(int(w.shape[0]) // int(groups)) * int(w[0, 0].numel()) + 1)


def linear_op(op: str, args: tuple, val: Val, f64: F64, is_var: IsVar,
              kwargs: dict | None = None) -> Affine:
    kwargs = kwargs or {}
    if op == "linear":
        w, xarg = f64(val(args[1])), args[0]
        b = f64(val(args[2])) if len(args) > 2 and args[2] is not None else None
    elif op == "addmm":
        if any(float(val(args[i] if len(args) > i else kw)) != 1.0  # type: ignore[arg-type]
               for i, kw in ((3, kwargs.get("beta", 1.0)), (4, kwargs.get("alpha", 1.0)))):
            raise refusal("addmm with beta or alpha other than 1")
        b, xarg, w = f64(val(args[0])), args[1], f64(val(args[2])).t()  # type: ignore[union-attr]
    else:
        b, xarg, w = None, args[0], f64(val(args[1])).t()  # type: ignore[union-attr]
    others = [a for a in args if a is not xarg]
    if not is_var(xarg) or any(is_var(a) for a in others):
        raise InputError(f"--sound does not support aten.{op} of two activations (as in "
                         "attention): only products with a weight matrix")
    assert w is not None
    wa = w.abs()
    return Affine(f"aten.{op}", lambda t: F.linear(t, w), lambda t: F.linear(t, wa),
                  None if b is None else b.view(1, -1),
                  fan_in=int(w.shape[1]) + 1, fan_out=int(w.shape[0]))


def batch_norm_op(op: str, node: object, args: tuple, val: Val, f64: F64) -> Affine:
    """Eval BatchNorm: ``t s + (bias - mean s)``, ``s = weight / sqrt(var + eps)``."""
    if op == "batch_norm":
        weight, bias, mean, var, training, _, eps = (val(a) for a in args[1:8])
        if training:
            raise InputError("--sound needs BatchNorm in eval mode")
    else:
        weight, bias, mean, var, _, eps = (val(a) for a in args[1:7])
    mean_t, var_t = f64(mean), f64(var)
    if mean_t is None or var_t is None:
        raise InputError("--sound needs BatchNorm with running statistics (eval mode)")
    scale = 1.0 / torch.sqrt(var_t + eps)
    if weight is not None:
        scale = scale * f64(weight)
    shift = -mean_t * scale + (f64(bias) if bias is not None else 0.0)
    ndim = len(args[0].meta["val"].shape) if "val" in args[0].meta else 4
    view = (1, -1) + (1,) * (ndim - 2)
    s, sa, sh = scale.view(view), scale.abs().view(view), shift.view(view)
    # torch computes scale and shift in the model's precision: rounding relative to
    # |s t| + |bias| + |mean s|, a few roundings each (fan_in 10 covers them)
    extra = ((f64(bias).abs() if bias is not None else 0.0)  # type: ignore[union-attr]
             + (mean_t * scale).abs()).view(view)
    return Affine(f"aten.{op}", lambda t: t * s, lambda t: t * sa, sh, fan_in=10, fan_out=6,
                  bias_abs=extra)


def const_op(op: str, args: tuple, kwargs: dict, val: Val, f64: F64,
             is_var: IsVar) -> Affine:
    """``x + c``, ``x - c``, ``c - x``, ``x * c``, ``x / c``, ``-x`` with ``c`` a constant."""
    name = f"aten.{op}"
    if op == "neg":
        return Affine(name, lambda t: -t, lambda t: t, None)
    if len(args) < 2:
        raise refusal(op)
    left = is_var(args[0])
    c = f64(val(args[1] if left else args[0]))
    assert c is not None
    alpha = float(val(kwargs.get("alpha", args[2] if len(args) > 2 else 1.0)))  # type: ignore[arg-type]
    if op == "rsub":  # rsub(a, b, alpha) = b - alpha a
        if left:
            return Affine(name, lambda t: -alpha * t, lambda t: abs(alpha) * t, c,
                          fan_in=2, fan_out=1)
        return Affine(name, lambda t: t, lambda t: t, -alpha * c, fan_in=2)
    if op in ("add", "sub"):
        sign = 1.0 if op == "add" else -1.0
        if left:
            return Affine(name, lambda t: t, lambda t: t, sign * alpha * c, fan_in=2)
        if alpha != 1.0:
            raise refusal(f"{op}(constant, x, alpha={alpha:g})")
        return Affine(name, lambda t: sign * t, lambda t: t, c, fan_in=1)
    if op == "mul":
        ca = c.abs()
        return Affine(name, lambda t: t * c, lambda t: t * ca, None, fan_in=1, fan_out=1)
    if left:  # div by a constant (the float64 copy multiplies by 1/c, rounded: one more)
        inv = 1.0 / c
        inva = inv.abs()
        return Affine(name, lambda t: t * inv, lambda t: t * inva, None, fan_in=2,
                      fan_out=2)
    raise InputError("--sound does not support dividing by an activation (aten.div of "
                     "a constant by x)")


def rounded_division(op: str, kwargs: dict) -> bool:
    """Whether ``op`` is ``div`` with a ``rounding_mode`` (floor or trunc: piecewise
    constant, not the smooth ``x / c`` that :func:`const_op` models)."""
    return op == "div" and kwargs.get("rounding_mode") is not None
