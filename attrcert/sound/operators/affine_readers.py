"""The readers of the affine ATen operations of one variable input (:class:`.affine.Affine`).

Each gives ``lin`` (``t -> A t``), ``lin_abs`` (``t -> |A| t``), the bias, and the fan-in /
fan-out that the rounding term needs (the most terms torch sums per output, and per input
in the backward pass). Maps whose weights are nonnegative (pooling, means, reshapes,
broadcasting) are their own ``lin_abs``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import InputError
from .affine import Affine, LinearFn, StopGradient
from .base import Refused
from .registry import Call, reads

SHAPE_OPS = ("flatten", "view", "reshape", "_unsafe_view", "contiguous", "clone", "alias",
             "dropout", "squeeze", "unsqueeze", "expand", "lift_fresh_copy", "to", "_to_copy")
REDUCE_OPS = ("mean", "sum", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "avg_pool2d")


def _per_sample(meta: Any, op: str) -> tuple[int, ...]:
    if not isinstance(meta, Tensor):
        raise Refused(f"{op} (no shape recorded)")
    return tuple(int(s) for s in meta.shape[1:])


def _meta(a: Any) -> Any:
    return getattr(a, "meta", {}).get("val")


def _reshape(shape: tuple[int, ...]) -> LinearFn:
    def f(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], *shape)
    return f


def _expand(shape: tuple[int, ...]) -> LinearFn:
    def f(t: Tensor) -> Tensor:
        return t.expand(t.shape[0], *shape)
    return f


def _identity(t: Tensor) -> Tensor:
    return t


def _affine(call: Call, op: str, lin: LinearFn, lin_abs: LinearFn, bias: Tensor | None = None,
            **rest: Any) -> Affine:
    """The :class:`Affine` of ``call``'s one variable argument."""
    return Affine(inputs=(call.source(),), name=call.node.name, op=op, lin=lin,
                  lin_abs=lin_abs, bias=bias, **rest)


def broadcast(source: int, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Affine:
    """Broadcasting node ``source`` from ``(B, *in_shape)`` to ``(B, *out_shape)`` (same
    rank): its transpose sums ``prod(out) / prod(in)`` copies."""
    if len(in_shape) != len(out_shape):
        raise InputError(f"--sound cannot broadcast a value of shape {in_shape} against "
                         f"{out_shape}: give both operands the same number of dimensions")
    f = _expand(out_shape)
    copies = math.prod(out_shape) // max(math.prod(in_shape), 1)
    return Affine(inputs=(source,), name="broadcast", op="broadcast", lin=f, lin_abs=f,
                  fan_out=copies + 1)


@reads("linear", "addmm", "mm", supports=("Linear",))
def read_linear(call: Call) -> Affine:
    """``x W^T + b`` (``linear``, ``addmm`` with ``beta = alpha = 1``, ``mm``)."""
    src = call.source()
    op, args, kwargs = call.op, call.args, call.kwargs
    b: Tensor | None
    if op == "linear":
        w, xarg = call.float64(call.value(args[1])), args[0]
        b = call.float64(call.value(args[2])) if len(args) > 2 and args[2] is not None \
            else None
    elif op == "addmm":
        if any(float(call.value(args[i] if len(args) > i else kw)) != 1.0
               for i, kw in ((3, kwargs.get("beta", 1.0)), (4, kwargs.get("alpha", 1.0)))):
            raise Refused("addmm with beta or alpha other than 1")
        b, xarg, w = call.float64(call.value(args[0])), args[1], _t(call, args[2])
    else:
        b, xarg, w = None, args[0], _t(call, args[1])
    others = [a for a in args if a is not xarg]
    if not call.is_var(xarg) or any(call.is_var(a) for a in others):
        raise InputError(f"--sound does not support aten.{op} of two activations (as in "
                         "attention): only products with a weight matrix")
    assert w is not None
    wa = w.abs()
    return Affine(inputs=(src,), name=call.node.name, op=f"aten.{op}",
                  lin=lambda t: F.linear(t, w), lin_abs=lambda t: F.linear(t, wa),
                  bias=None if b is None else b.view(1, -1),
                  fan_in=int(w.shape[1]) + 1, fan_out=int(w.shape[0]))


def _t(call: Call, a: Any) -> Tensor:
    w = call.float64(call.value(a))
    assert w is not None
    return w.t()


@reads("conv2d", "convolution", "_convolution", supports=("Conv2d",))
def read_conv(call: Call) -> Affine:
    """A 2-d convolution of the variable by constant weights."""
    call.source()
    op, args = call.op, call.args
    if not call.is_var(args[0]) or any(call.is_var(a) for a in args[1:]):
        raise Refused(op)
    w = call.float64(call.value(args[1]))
    assert w is not None
    b = call.float64(call.value(args[2])) if len(args) > 2 else None
    if op in ("convolution", "_convolution"):
        stride, padding, dilation, transposed, _, groups = (call.value(a) for a in args[3:9])
        if transposed:
            raise Refused("conv_transpose")
    else:
        rest = [call.value(a) for a in args[3:]]
        stride, padding, dilation, groups = (rest + [1, 0, 1, 1][len(rest):])[:4]
    if isinstance(padding, str):
        raise Refused(f"conv2d(padding={padding!r})")
    if w.ndim != 4:
        raise Refused(f"{op} of {w.ndim - 2} spatial dimensions (Conv2d only)")
    wa = w.abs()

    def conv(t: Tensor, weight: Tensor = w) -> Tensor:
        return F.conv2d(t, weight, None, stride, padding, dilation, groups)

    taps = int(w[0].numel())
    return _affine(call, f"aten.{op}", conv, lambda t: conv(t, wa),
                   None if b is None else b.view(1, -1, 1, 1), fan_in=taps + 1,
                   fan_out=(int(w.shape[0]) // int(groups)) * int(w[0, 0].numel()) + 1)


@reads(*REDUCE_OPS, supports=("AvgPool2d / adaptive average pooling / means",))
def read_reduce(call: Call) -> Affine:
    """Means, sums and average pooling (nonnegative weights): ``|A| = A``."""
    call.source()
    op, args, kwargs = call.op, call.args, call.kwargs
    name = f"aten.{op}"
    rest = [call.value(a) for a in args[1:]]
    in_shape = _per_sample(_meta(args[0]), op)
    out_shape = _per_sample(_meta(call.node), op)
    f: LinearFn
    if op == "avg_pool2d":
        def f(t: Tensor) -> Tensor:
            return F.avg_pool2d(t, *rest)

        kernel = rest[0] if isinstance(rest[0], (list, tuple)) else [rest[0]] * 2
        taps = int(math.prod(int(k) for k in kernel)) + 1
        return _affine(call, name, f, f, fan_in=taps, fan_out=taps)
    if op in ("adaptive_avg_pool2d", "_adaptive_avg_pool2d"):
        size = rest[0]

        def f(t: Tensor) -> Tensor:
            return F.adaptive_avg_pool2d(t, size)
    else:
        dims = rest[0] if rest else None
        keep = bool(rest[1]) if len(rest) > 1 else bool(kwargs.get("keepdim", False))
        if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
            raise Refused(f"{op} over every axis (the batch axis included)")
        axes = [int(d) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        if any(d % (len(in_shape) + 1) == 0 for d in axes):
            raise Refused(f"{op} over the batch axis")
        dt = kwargs.get("dtype")
        if dt is not None and dt != torch.float64 and not dt.is_floating_point:
            raise Refused(f"{op} to {dt}")
        fn = torch.mean if op == "mean" else torch.sum

        def f(t: Tensor) -> Tensor:
            return fn(t, dim=axes, keepdim=keep)
    taps = math.prod(in_shape) // max(math.prod(out_shape), 1) + 1
    return _affine(call, name, f, f, fan_in=taps + 1, fan_out=2)


@reads(*SHAPE_OPS, supports=("Flatten / reshape",))
def read_shape(call: Call) -> Affine:
    """Reshapes, copies, eval dropout, broadcasting and casts to the same dtype (the reader
    refuses any other dtype): exact, ``|A| = A``. A reshape must keep the batch axis and
    each sample's values (``view(-1)`` of a batch is refused)."""
    src = call.source()
    op, args, kwargs = call.op, call.args, call.kwargs
    if op == "dropout" and call.value(args[2] if len(args) > 2 else kwargs.get("train")):
        raise InputError("--sound needs dropout in eval mode")
    shape = _per_sample(_meta(call.node), op)
    in_meta = _meta(args[0])
    in_shape = _per_sample(in_meta, op)
    out_meta = call.node.meta["val"]
    if out_meta.shape[:1] != in_meta.shape[:1] or (
            op != "expand" and math.prod(shape) != math.prod(in_shape)):
        raise Refused(f"{op} across the batch axis")
    if op == "expand":
        out = broadcast(src, in_shape, shape)
        out.name = call.node.name
        return out
    f = _reshape(shape)
    return _affine(call, f"aten.{op}", f, f)


@reads("batch_norm", "_native_batch_norm_legit_no_training", supports=("BatchNorm (eval)",))
def read_batch_norm(call: Call) -> Affine:
    """Eval BatchNorm: ``t s + (bias - mean s)``, ``s = weight / sqrt(var + eps)``."""
    call.source()
    op, args = call.op, call.args
    if op == "batch_norm":
        weight, bias, mean, var, training, _, eps = (call.value(a) for a in args[1:8])
        if training:
            raise InputError("--sound needs BatchNorm in eval mode")
    else:
        weight, bias, mean, var, _, eps = (call.value(a) for a in args[1:7])
    mean_t, var_t = call.float64(mean), call.float64(var)
    if mean_t is None or var_t is None:
        raise InputError("--sound needs BatchNorm with running statistics (eval mode)")
    scale = 1.0 / torch.sqrt(var_t + eps)
    weight_t, bias_t = call.float64(weight), call.float64(bias)
    if weight_t is not None:
        scale = scale * weight_t
    shift = -mean_t * scale + (bias_t if bias_t is not None else 0.0)
    meta = _meta(args[0])
    ndim = len(meta.shape) if meta is not None else 4
    view = (1, -1) + (1,) * (ndim - 2)
    s, sa, sh = scale.view(view), scale.abs().view(view), shift.view(view)
    # torch computes scale and shift in the model's precision: rounding relative to
    # |s t| + |bias| + |mean s|, a few roundings each (fan_in 10 covers them)
    extra = ((bias_t.abs() if bias_t is not None else 0.0) + (mean_t * scale).abs()).view(view)
    return _affine(call, f"aten.{op}", lambda t: t * s, lambda t: t * sa, sh, fan_in=10,
                   fan_out=6, bias_abs=extra)


@reads("detach")
def read_detach(call: Call) -> Affine:
    """``aten.detach``: the value passes, no adjoint does (:class:`.affine.StopGradient`)."""
    return StopGradient(inputs=(call.source(),), name=call.node.name, op="aten.detach",
                        lin=lambda t: t.detach(), lin_abs=_identity)


@reads("permute", "transpose")
def read_permute(call: Call) -> Affine:
    """``permute`` / ``transpose`` of the per-sample axes (the batch axis stays first)."""
    call.source()
    op, args = call.op, call.args
    f: LinearFn
    if op == "permute":
        dims = [int(d) for d in call.value(args[1])]
        if dims[0] != 0:
            raise Refused("permute of the batch axis")

        def f(t: Tensor) -> Tensor:
            return t.permute(*dims)
    else:
        d0, d1 = int(call.value(args[1])), int(call.value(args[2]))
        if 0 in (d0, d1):
            raise Refused("transpose of the batch axis")

        def f(t: Tensor) -> Tensor:
            return t.transpose(d0, d1)
    return _affine(call, f"aten.{op}", f, f)


@reads("slice", "select")
def read_slice(call: Call) -> Affine:
    """``slice`` / ``select`` of a per-sample axis (a selection: ``|A| = A``, exact); the
    whole batch axis passes through."""
    call.source()
    op = call.op
    rest = [call.value(a) for a in call.args[1:]]
    dim = int(rest[0]) if rest else 0
    f: LinearFn
    if op == "slice":
        start, end, step = (rest[1:] + [None, None, 1][len(rest) - 1:])[:3]
        if dim == 0:
            if (start in (None, 0)) and (end is None or int(end) >= 2 ** 62) and step == 1:
                return _affine(call, "aten.slice", _identity, _identity)
            raise Refused("slice of the batch axis")

        def f(t: Tensor) -> Tensor:
            return torch.ops.aten.slice(t, dim, start, end, step)
    else:
        if dim == 0:
            raise Refused("select of the batch axis")
        index = int(rest[1])

        def f(t: Tensor) -> Tensor:
            return torch.select(t, dim, index)
    return _affine(call, f"aten.{op}", f, f)


@reads("div", inplace=True)
@reads("neg", "rsub")
def const_op(call: Call) -> Affine:
    """``x + c``, ``x - c``, ``c - x``, ``x * c``, ``x / c``, ``-x`` with ``c`` a constant."""
    call.source()
    op, args, kwargs = call.op, call.args, call.kwargs
    name = f"aten.{op}"
    if op == "neg":
        return _affine(call, name, lambda t: -t, _identity)
    if len(args) < 2:
        raise Refused(op)
    left = call.is_var(args[0])
    c = call.float64(call.value(args[1] if left else args[0]))
    assert c is not None
    alpha = float(call.value(kwargs.get("alpha", args[2] if len(args) > 2 else 1.0)))
    if op == "rsub":  # rsub(a, b, alpha) = b - alpha a
        if left:
            return _affine(call, name, lambda t: -alpha * t, lambda t: abs(alpha) * t, c,
                           fan_in=2, fan_out=1)
        return _affine(call, name, _identity, _identity, -alpha * c, fan_in=2)
    if op in ("add", "sub"):
        sign = 1.0 if op == "add" else -1.0
        if left:
            return _affine(call, name, _identity, _identity, sign * alpha * c, fan_in=2)
        if alpha != 1.0:
            raise Refused(f"{op}(constant, x, alpha={alpha:g})")
        return _affine(call, name, lambda t: sign * t, _identity, c, fan_in=1)
    if op == "mul":
        ca = c.abs()
        return _affine(call, name, lambda t: t * c, lambda t: t * ca, fan_in=1, fan_out=1)
    if left:  # div by a constant (the float64 copy multiplies by 1/c, rounded: one more)
        inv = 1.0 / c
        inva = inv.abs()
        return _affine(call, name, lambda t: t * inv, lambda t: t * inva, fan_in=2,
                       fan_out=2)
    raise InputError("--sound does not support dividing by an activation (aten.div of "
                     "a constant by x)")
