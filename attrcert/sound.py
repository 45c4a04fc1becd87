"""Sound mode: proved upper bounds on the attribution deviation, with no linearity assumption.

``T_e`` and ``T'_e`` (SPEC §2) assume that ``g`` is locally linear on the ball; an attack can
beat them once eps leaves that regime (SPEC §6). This module bounds
``sup_{||delta||_p <= eps} ||g(x + delta) - g(x)||_2`` for real, for networks that are a chain
of affine maps (Linear, Conv2d, AvgPool2d, Flatten/reshape, BatchNorm in eval mode, adding
or scaling by constants) and twice-differentiable elementwise activations (Tanh, Sigmoid,
Softplus, SiLU, GELU), in float64 with outward rounding (:mod:`attrcert.intervals`).

Write the network as ``z_1 = A_0 x + b_0``, ``a_k = sigma_k(z_k)``,
``z_{k+1} = A_k a_k + b_k``, ``f = A_K a_K + b_K``; ``u_k = d f_y / d a_k`` and
``J_k = d z_k / d x`` (``n_k x d``). Then (backpropagation and its derivative)::

    G = grad f_y = A_0^T D_1 A_1^T D_2 ... A_K^T e_y,      D_k = diag(sigma_k'(z_k))
    H = Hess f_y = sum_k J_k^T diag(u_k * sigma_k''(z_k)) J_k,
    J_{k+1} = A_k D_k J_k,  J_1 = A_0.

Two bounds, each proved; the record reports the smaller as ``T_e_sound``:

- ``interval``: enclose every ``z_k`` over the ball (the first layer exactly,
  ``z_1 = A_0 x + b_0 +- eps ||row(A_0)||_q``, ``q`` the dual norm; deeper layers by interval
  propagation intersected with the mean-value form ``z_k(x) +- eps ||row([J_k])||_q``), then
  ``sigma_k'`` over those intervals, then the product above backwards in interval arithmetic:
  ``g_lo <= g(x') <= g_hi`` for every ``x'`` in the ball, and with ``[gx_lo, gx_hi]`` the same
  enclosure at ``eps = 0``,
  ``||g(x') - g(x)||_2 <= || max(g_hi - gx_lo, gx_hi - g_lo) ||_2``.
- ``mean_value``: ``g(x') - g(x) = M delta`` with ``M = int_0^1 J_g(x + t delta) dt``, which lies
  in any enclosure of the attribution Jacobian ``J_g`` over the ball (built from the formula
  for ``H`` with ``[J_k]``, ``[u_k]`` and ``[sigma_k'']``). Two enclosures are tried:

  * entrywise, ``[Mc - R, Mc + R]``: for any matrix ``C`` (``Mc``, or a given ``J_g(x)``)
    with ``R' = max(|Mc - R - C|, |Mc + R - C|)``,
    ``||M delta||_2 <= ||C delta||_2 + ||R' |delta| ||_2``, so
    ``T <= eps (sigma_max(C) + sigma_max(R'))`` (l2) and
    ``T <= eps (min(sqrt(sum_ij |(C^T C)_ij|), sqrt(d) sigma_max(C)) + ||R' 1||_2)`` (l-inf;
    Theorem 2 and Corollary 1 applied to ``C``);
  * structured (:class:`Structured`, :func:`structured_bound`): the part of ``H`` due to the
    interval of ``u_k * sigma_k''`` is ``F^T E' F`` with ``|E'| <= 1`` diagonal, whose spectral
    norm is at most ``lambda_max(F^T F)``, far below that of its entrywise enclosure.

  ``J_g(x)`` lies in the enclosure and its width is ``O(eps)``, so both tend to ``T_e``
  (Theorem 1 / Theorem 2) as ``eps -> 0``. ``sigma_max`` and ``lambda_max`` are LAPACK's,
  widened by ``1e-10 ||.||_F`` to cover their backward error; ``sigma_max`` of a
  nonnegative matrix is bounded by Collatz-Wielandt. torch's Softplus switches to the
  identity above its threshold, where its derivative jumps by ``sigmoid(-threshold)``; the
  mean-value theorem is then applied to a twin (:func:`enclose`: the identity on the units
  whose interval over the ball lies above the threshold, where it equals torch's function,
  the smooth closed form elsewhere) and the proved gap ``sup ||g - g_s||`` over the ball
  and at ``x``, which only the units whose interval straddles the threshold add to, is
  added (:class:`Enclosure`).

Rounding. Both bounds are proved for the exact function; torch computes ``g`` in the
model's precision (``u = 2^-24`` for float32), at the float point ``x_hat'`` an attack
reaches. ``||g_hat(x_hat') - g_hat(x)|| <= ||g(x') - g(x)|| + ||g_hat(x_hat') - g(x')||
+ ||g_hat(x) - g(x)||`` with ``x'`` a ball point within ``u (|x| + 3.01 eps)`` of
``x_hat'``; the last two terms are bounded by a forward and backward error analysis
(:func:`rounding_error`: ``gamma_n`` per dot product, an assumed ulp accuracy per
activation kernel, propagated through the backward pass over the ball's intervals) and
added to both bounds.

Attributions (SPEC §1): saliency ``g = G``; input x gradient ``g = x * G``,
``J_g = diag(G) + diag(x) H`` with ``x'_i in [x_i - eps, x_i + eps]``; integrated gradients
``g = (x - b) * (1/m) sum_a G(z_a)``, ``z_a = b + (a/m)(x - b)``, whose ``a``-th point moves within
the ball of radius ``(a/m) eps``, ``J_g = diag(mean_a G(z_a)) + diag(x - b) sum_a (a/m^2) H(z_a)``.

Norms: l2 and l-inf; for ``1 <= p < 2`` the l2 ball of the same radius contains the lp ball,
for ``2 < p < inf`` the l2 ball of radius ``d^(1/2 - 1/p) eps`` does (Lemma 1), and their
bounds are used. The label constraint of Eq. 1 is ignored (the sup over the whole ball
bounds the constrained one). The model is read from its torch.export graph
(:func:`extract_chain`; TorchScript chains are rebuilt from their inlined graph first) and
checked against its own output; the mean-value bound forms ``d x d`` matrices, so it runs
for ``d <= MAX_D`` only.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import bounds
from .attributions import Attribution, InputXGradient, IntegratedGradients, Saliency
from .errors import InputError, OptionError
from .intervals import (
    REL,
    SUM_REL,
    TINY,
    Activation,
    activation,
    intersect,
    mul,
    mul_cr,
    to_cr,
    to_lohi,
)
from .perturbation import Perturbation, l2_radius_factor
from .results import Record, finite_or_none

MAX_D = 4096  # the mean-value bound forms d x d matrices; above this only ``interval`` runs
SUPPORTED = ("Linear", "Conv2d", "AvgPool2d", "Flatten", "BatchNorm (eval)", "Tanh",
             "Sigmoid", "Softplus", "SiLU", "GELU")
NOT_SMOOTH = {
    "relu": "ReLU", "relu_": "ReLU", "max_pool2d": "max-pooling",
    "max_pool2d_with_indices": "max-pooling", "leaky_relu": "LeakyReLU",
    "hardtanh": "Hardtanh", "elu": "ELU", "relu6": "ReLU6", "hardswish": "Hardswish",
    "hardsigmoid": "Hardsigmoid", "abs": "abs", "maximum": "maximum", "clamp": "clamp",
}


# --- the network as a chain -------------------------------------------------------------

@dataclass
class Affine:
    """``t -> A t + bias`` on batches ``(B, *in_shape)``; ``lin`` is ``A t``, ``lin_abs``
    is ``|A| t`` (the same operation with its weights replaced by their absolute values)."""

    name: str
    lin: Callable[[Tensor], Tensor]
    lin_abs: Callable[[Tensor], Tensor]
    bias: Tensor | None
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    fan_in: int = 0
    fan_out: int = 0
    bias_abs: Tensor | None = None


@dataclass
class Layer:
    """One step of the chain: an affine map or an elementwise activation."""

    affine: Affine | None = None
    act: Activation | None = None


def _fetch(gm: torch.nn.Module, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _op_name(target: object) -> str:
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def _reshape(shape: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    def f(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], *shape)
    return f


def _refuse(op: str) -> InputError:
    if op in NOT_SMOOTH:
        return InputError(
            f"--sound cannot bound a model with {NOT_SMOOTH[op]} (aten.{op}): it is not twice "
            "differentiable, so the attribution has no bounded Jacobian; use a model built "
            f"from {', '.join(SUPPORTED)}")
    return InputError(f"--sound does not support the operation aten.{op} in this model: "
                      f"supported are {', '.join(SUPPORTED)} in a chain")


class _AtenCall(torch.nn.Module):
    """One ATen call ``op(x, *args)`` read from a TorchScript graph (tensors as buffers)."""

    def __init__(self, op: str, args: list[object]) -> None:
        super().__init__()
        self.op = op
        self.kinds: list[object] = []
        for i, a in enumerate(args):
            if isinstance(a, Tensor):
                self.register_buffer(f"t{i}", a.detach().clone())
                self.kinds.append(f"t{i}")
            else:
                self.kinds.append(("const", a))

    def forward(self, x: Tensor) -> Tensor:
        args = [getattr(self, k) if isinstance(k, str) else k[1] for k in self.kinds]
        return getattr(torch.ops.aten, self.op)(x, *args)


def _from_torchscript(model: torch.jit.ScriptModule) -> torch.nn.Module:
    """A TorchScript model that is a chain of ATen calls, rebuilt as an ``nn.Sequential``
    of :class:`_AtenCall` (so that torch.export can read it). Weights are read through the
    graph's ``prim::GetAttr``; constants through ``prim::Constant`` / ``ListConstruct``."""
    graph = model.inlined_graph
    values: dict[str, object] = {}
    inputs = list(graph.inputs())
    values[inputs[0].debugName()] = model
    chain = inputs[1].debugName() if len(inputs) > 1 else None
    calls: list[torch.nn.Module] = []
    for node in graph.nodes():
        kind = node.kind()
        outs = [o.debugName() for o in node.outputs()]
        ins = [i.debugName() for i in node.inputs()]
        if kind == "prim::GetAttr":
            values[outs[0]] = getattr(values[ins[0]], node.s("name"))
        elif kind == "prim::Constant":
            values[outs[0]] = node.output().toIValue()
        elif kind == "prim::ListConstruct":
            if chain in ins:
                raise InputError("--sound cannot read this TorchScript model's graph: use "
                                 "the torch.export (.pt2) archive or the weights with --arch")
            values[outs[0]] = [values[i] for i in ins]
        elif kind.startswith("aten::"):
            op = kind.split("::")[1]
            if not ins or ins[0] != chain or chain in ins[1:]:
                raise _refuse(op) if op in NOT_SMOOTH else InputError(
                    f"--sound cannot read this TorchScript model's graph at aten.{op}: use "
                    "the torch.export (.pt2) archive or the weights with --arch")
            if op in NOT_SMOOTH:
                raise _refuse(op)
            calls.append(_AtenCall(op, [values[i] for i in ins[1:]]))
            chain = outs[0]
        elif kind == "prim::TupleConstruct" or kind == "prim::Return":
            continue
        else:
            raise InputError(f"--sound cannot read the TorchScript operation {kind}: use "
                             "the torch.export (.pt2) archive or the weights with --arch")
    return torch.nn.Sequential(*calls).eval()


def _graph_module(model: torch.nn.Module, example: Tensor) -> torch.fx.GraphModule:
    if isinstance(model, torch.jit.ScriptModule):
        model = _from_torchscript(model)
    if isinstance(model, torch.fx.GraphModule) and any(
            n.op == "call_function" for n in model.graph.nodes):
        return model
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model, (example,)).module()
    except Exception as exc:  # export failures are long; keep the first line
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise InputError(f"--sound needs a model that torch.export can trace: {first}") \
            from None


def extract_chain(model: torch.nn.Module, example: Tensor) -> list[Layer]:
    """The model as a chain of :class:`Layer` in float64, read from its torch.export graph.

    Raises :class:`InputError` naming the first operation that is not supported (ReLU and
    max-pooling: not twice differentiable), or when the graph branches.
    """
    gm = _graph_module(model, example)
    consts: dict[str, object] = {}
    chain_node: str | None = None
    layers: list[Layer] = []
    dt = torch.float64

    def val(a: object) -> object:
        if isinstance(a, torch.fx.Node):
            return consts[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(val(b) for b in a)
        return a

    def f64(t: object) -> Tensor | None:
        return None if t is None else torch.as_tensor(t).detach().to(dt)

    def uses_chain(a: object) -> bool:
        if isinstance(a, torch.fx.Node):
            return a.name == chain_node
        if isinstance(a, (list, tuple)):
            return any(uses_chain(b) for b in a)
        return False

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if chain_node is not None:
                raise InputError("--sound needs a model with one input tensor")
            chain_node = node.name
            continue
        if node.op == "get_attr":
            consts[node.name] = _fetch(gm, node.target)
            continue
        if node.op == "call_module":  # torch.export's input guards
            continue
        if node.op == "output":
            out = node.args[0]
            out = out[0] if isinstance(out, (list, tuple)) and len(out) == 1 else out
            if not (isinstance(out, torch.fx.Node) and out.name == chain_node):
                raise InputError("--sound needs a model whose output is its last layer")
            break
        args, kwargs = node.args, node.kwargs
        if not uses_chain(list(args) + list(kwargs.values())):
            consts[node.name] = node.target(*val(args), **val(kwargs))  # constant folding
            continue
        op = _op_name(node.target)
        if node.target is operator.getitem:
            if args[1] != 0:
                raise _refuse("getitem")
            chain_node = node.name
            continue
        if len(node.users) > 1:
            raise InputError(f"--sound needs a chain of layers, but aten.{op} feeds "
                             f"{len(node.users)} operations (a branch or skip connection)")
        first = args[0]
        if op in ("tanh", "sigmoid", "silu", "gelu", "softplus"):
            if not uses_chain(first):
                raise _refuse(op)
            if op == "softplus":
                beta = float(val(args[1]) if len(args) > 1 else kwargs.get("beta", 1.0))
                thr = float(val(args[2]) if len(args) > 2 else kwargs.get("threshold", 20.0))
                layers.append(Layer(act=activation("softplus", beta, thr)))
            elif op == "gelu":
                approx = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
                if approx != "none":
                    raise InputError("--sound supports exact GELU only, not "
                                     f"GELU(approximate={approx!r})")
                layers.append(Layer(act=activation("gelu")))
            else:
                layers.append(Layer(act=activation(op)))
            chain_node = node.name
            continue
        layers.append(Layer(affine=_affine(op, node, args, kwargs, val, f64, uses_chain)))
        chain_node = node.name
    _infer_shapes(layers, example)
    return layers


def _affine(op: str, node: torch.fx.Node, args: tuple, kwargs: dict,
            val: Callable[[object], object], f64: Callable[[object], Tensor | None],
            uses_chain: Callable[[object], bool]) -> Affine:
    """The affine map of one graph node whose first tensor argument is the chain."""
    name = f"aten.{op}"
    if op in ("conv2d", "convolution", "_convolution"):
        if not uses_chain(args[0]) or any(uses_chain(a) for a in args[1:]):
            raise _refuse(op)
        w = f64(val(args[1]))
        b = f64(val(args[2])) if len(args) > 2 else None
        if op in ("convolution", "_convolution"):
            stride, padding, dilation, transposed, _, groups = (val(a) for a in args[3:9])
            if transposed:
                raise _refuse("conv_transpose")
        else:
            rest = [val(a) for a in args[3:]]
            stride, padding, dilation, groups = (rest + [1, 0, 1, 1][len(rest):])[:4]
        if isinstance(padding, str):
            raise _refuse(f"conv2d(padding={padding!r})")
        wa = w.abs()

        def conv(t: Tensor, weight: Tensor = w) -> Tensor:
            return F.conv2d(t, weight, None, stride, padding, dilation, groups)

        taps = int(w[0].numel())
        return Affine(name, conv, lambda t: conv(t, wa),
                      None if b is None else b.view(1, -1, 1, 1),
                      fan_in=taps + 1,
                      fan_out=(int(w.shape[0]) // int(groups)) * int(w[0, 0].numel()) + 1)
    if op in ("linear", "addmm", "mm"):
        if op == "linear":
            w, b, xarg = f64(val(args[1])), (f64(val(args[2])) if len(args) > 2 else None), \
                args[0]
        elif op == "addmm":
            b, xarg, w = f64(val(args[0])), args[1], f64(val(args[2])).t()
        else:
            b, xarg, w = None, args[0], f64(val(args[1])).t()
        if not uses_chain(xarg) or (op == "linear" and any(uses_chain(a) for a in args[1:])):
            raise _refuse(op)
        wa = w.abs()
        return Affine(name, lambda t: F.linear(t, w), lambda t: F.linear(t, wa),
                      None if b is None else b.view(1, -1),
                      fan_in=int(w.shape[1]) + 1, fan_out=int(w.shape[0]))
    if op == "avg_pool2d":
        rest = [val(a) for a in args[1:]]

        def pool(t: Tensor) -> Tensor:
            return F.avg_pool2d(t, *rest)

        kernel = rest[0] if isinstance(rest[0], (list, tuple)) else [rest[0]] * 2
        taps = int(math.prod(int(k) for k in kernel)) + 1
        return Affine(name, pool, pool, None, fan_in=taps, fan_out=taps)
    if op in ("batch_norm", "_native_batch_norm_legit_no_training"):
        if op == "batch_norm":
            weight, bias, mean, var, training, _, eps = (val(a) for a in args[1:8])
            if training:
                raise InputError("--sound needs BatchNorm in eval mode")
        else:
            weight, bias, mean, var, _, eps = (val(a) for a in args[1:7])
        mean_t, var_t = f64(mean), f64(var)
        scale = 1.0 / torch.sqrt(var_t + eps)
        if weight is not None:
            scale = scale * f64(weight)
        shift = -mean_t * scale + (f64(bias) if bias is not None else 0.0)
        view = (1, -1) + (1,) * (len(node.meta["val"].shape) - 2 if "val" in node.meta
                                 else 2)
        s, sa, sh = scale.view(view), scale.abs().view(view), shift.view(view)
        # torch computes scale and shift in the model's precision: rounding relative to
        # |s t| + |bias| + |mean s|, a few roundings each (fan_in 10 covers them)
        extra = ((f64(bias).abs() if bias is not None else 0.0)
                 + (mean_t * scale).abs()).view(view)
        return Affine(name, lambda t: t * s, lambda t: t * sa, sh, fan_in=10, fan_out=6,
                      bias_abs=extra)
    if op in ("flatten", "view", "reshape", "_unsafe_view", "contiguous", "clone", "alias",
              "dropout", "detach", "squeeze", "unsqueeze"):
        if op == "dropout" and val(args[2] if len(args) > 2 else kwargs.get("train")):
            raise InputError("--sound needs dropout in eval mode")
        meta = node.meta.get("val")
        if not isinstance(meta, Tensor):
            raise _refuse(f"{op} (no shape recorded)")
        f = _reshape(tuple(int(s) for s in meta.shape[1:]))
        return Affine(name, f, f, None)
    if op in ("add", "sub", "mul", "div"):
        if len(args) != 2 or (uses_chain(args[0]) and uses_chain(args[1])):
            raise _refuse(op)
        left = uses_chain(args[0])
        c = f64(val(args[1] if left else args[0]))
        if op == "add":
            return Affine(name, lambda t: t, lambda t: t, c, fan_in=1)
        if op == "sub":
            if left:
                return Affine(name, lambda t: t, lambda t: t, -c, fan_in=1)
            return Affine(name, lambda t: -t, lambda t: t, c, fan_in=1)
        if op == "mul":
            ca = c.abs()
            return Affine(name, lambda t: t * c, lambda t: t * ca, None, fan_in=1, fan_out=1)
        if left:  # div by a constant (the chain multiplies by 1/c, rounded: one more)
            inv = 1.0 / c
            inva = inv.abs()
            return Affine(name, lambda t: t * inv, lambda t: t * inva, None, fan_in=2,
                          fan_out=2)
        raise _refuse("div (constant / x)")
    raise _refuse(op)


def _infer_shapes(layers: list[Layer], example: Tensor) -> None:
    """Record every affine map's input and output feature shapes (a forward pass)."""
    t = example[:1].detach().to(torch.float64)
    for layer in layers:
        if layer.affine is None:
            continue
        a = layer.affine
        a.in_shape = tuple(t.shape[1:])
        t = a.lin(t) + (a.bias if a.bias is not None else 0.0)
        a.out_shape = tuple(t.shape[1:])


def forward(layers: list[Layer], x: Tensor) -> Tensor:
    """The chain's output (float64) for ``x`` ``(B, *in_shape)``: a plain torch function,
    differentiable, used to check the extraction against the model."""
    t = x
    for layer in layers:
        if layer.affine is not None:
            a = layer.affine
            t = a.lin(t) + (a.bias if a.bias is not None else 0.0)
        else:
            assert layer.act is not None
            t = layer.act.value(0, t)
    return t


# --- enclosures ------------------------------------------------------------------------------

def _affine_cr(a: Affine, c: Tensor, r: Tensor, *, bias: bool = True) -> tuple[Tensor, Tensor]:
    """``A (c +- r) + b`` enclosed: ``A c + b +- (|A| r + SUM_REL (|A| (|c| + r) + |b|))``."""
    out = a.lin(c)
    mag = a.lin_abs(c.abs() + r)
    if bias and a.bias is not None:
        out = out + a.bias
        mag = mag + a.bias.abs()
    return out, a.lin_abs(r) + SUM_REL * mag + TINY


def _transpose(fn: Callable[[Tensor], Tensor], v: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """``A^T v`` for the linear map ``fn`` (one vector-Jacobian product), batched over rows."""
    z = torch.zeros((v.shape[0], *in_shape), dtype=v.dtype, device=v.device,
                    requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(fn(z), z, v)
    return grad


def _affine_t_cr(a: Affine, c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """``A^T (c +- r)`` enclosed (the transposes of ``lin`` and ``lin_abs``)."""
    out = _transpose(a.lin, c, a.in_shape)
    mag = _transpose(a.lin_abs, c.abs() + r, a.in_shape)
    return out, _transpose(a.lin_abs, r, a.in_shape) + SUM_REL * mag + TINY


def _rownorm(tc: Tensor, q: float) -> Tensor:
    """``||column||_q`` of a tangent batch ``(d, *shape)`` over its ``d`` axis, rounded up."""
    norm = tc.abs().sum(0) if q == 1.0 else torch.sqrt((tc * tc).sum(0))
    return norm * (1.0 + SUM_REL) + TINY


@dataclass
class Enclosure:
    """Proved enclosures at one centre ``x0`` for a ball of radius ``radius``.

    ``grad``/``grad0``: ``(lo, hi)`` of ``G = grad f_y`` over the ball and at ``x0`` (``(d,)``);
    ``hess``: ``(centre, radius)`` ``(d, d)`` of ``Hess f_y`` over the ball, or ``None``;
    ``mvt_ok``: the mean-value theorem applies to this chain (no Softplus threshold inside
    an interval); ``gap``/``gap0``: ``(d,)`` bounds on ``|G(x') - G_s(x')|`` over the ball and at
    ``x0``, ``G_s`` the gradient of the chain with every Softplus replaced by its smooth twin
    (no threshold; ``None`` when the chain has no threshold).
    """

    grad: tuple[Tensor, Tensor]
    grad0: tuple[Tensor, Tensor]
    hess: tuple[Tensor, Tensor] | None
    mvt_ok: bool
    gap: Tensor | None = None
    gap0: Tensor | None = None
    struct: Structured | None = None
    first: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
    above: list[Tensor] | None = None
    round_ball: Tensor | None = None
    round_point: Tensor | None = None


@dataclass
class Structured:
    """``Hess f_y(z) = C + sum_k J_k^T diag(e_k) J_k + E`` over the ball, with
    ``|e_k| <= w_k`` (the radius of ``[u_k * sigma_k'']``), ``|E| <= R`` entrywise and
    ``P = sum_k J_k^T diag(w_k) J_k`` (``J_k`` the centre of ``[J_k]``; ``E`` also holds the
    cross terms with its radius). Writing ``F`` for the stacked ``diag(sqrt(w_k)) J_k``,
    ``P = F^T F`` and ``sum_k J_k^T diag(e_k) J_k = F^T E' F`` with ``|E'| <= 1`` diagonal, so
    its spectral norm is at most ``lambda_max(P)`` (far below that of the entrywise
    ``|J|^T diag(w) |J|``). ``p_err``/``p_err_sum`` bound the rounding of ``P`` in Frobenius
    norm and in ``sum |P_ij|``. ``q = sum_k |J_k|^T diag(w_k) |J_k|`` is the entrywise radius
    of that part (``[C - R - q, C + R + q]`` is the plain interval enclosure).

    For the l2 ball the cross terms with ``[J_k]``'s radius ``T_k`` also have a spectral-norm
    bound: with ``J = Jc + D``, ``|D| <= T_k``, ``|W| <= Wa = diag(|w_c| + w_r)``,
    ``||D^T W Jc + Jc^T W D + D^T W D|| <= 2 a b + a^2``, ``a = sigma_max(Wa^(1/2) T_k)``,
    ``b = sigma_max(Wa^(1/2) Jc)``; ``cross`` sums it over ``k``, and ``r_round`` is the part
    of ``r`` that is rounding only (``r`` = ``r_round`` + the entrywise cross terms)."""

    c: Tensor
    r: Tensor
    p: Tensor
    q: Tensor
    p_err: float
    p_err_sum: float
    r_round: Tensor | None = None
    cross: float = 0.0


@dataclass
class Rounding:
    """The floating-point arithmetic torch runs the model in, for the rounding term.

    ``u`` is the unit roundoff of the model's precision (``2^-24`` float32, ``2^-53``
    float64, ``2^-8`` bfloat16, ``2^-11`` float16); ``dot`` an extra relative error per
    product term of dot products (``2^-10`` where CUDA may use TF32, else 0). A dot product
    or convolution with ``n`` terms (bias included), summed in any order and blocking, with
    or without FMA, errs by at most ``gamma_n sum |terms|``, ``gamma_n = n u / (1 - n u)``
    (Higham, Accuracy and Stability of Numerical Algorithms, Lemma 3.1 and Eq. 3.5).
    Not covered: Winograd or FFT convolution algorithms (cuDNN may pick them on GPUs).
    """

    u: float
    dot: float = 0.0

    def gamma(self, n: int) -> float:
        """``gamma_n`` (``inf`` when ``n u >= 1``), plus ``dot`` for sums of products."""
        nu = n * self.u
        if nu >= 1.0:
            return math.inf
        return nu / (1.0 - nu) * (1.0 + 1e-12) + (self.dot if n > 2 else 0.0)


UNIT_ROUNDOFF = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24,
                 torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def model_rounding(model: torch.nn.Module, example: Tensor) -> Rounding:
    """:class:`Rounding` of the lowest precision among the model's tensors and ``example``."""
    tensors = [t for t in (example, *model.parameters(), *model.buffers())
               if t.is_floating_point()]
    u = max(UNIT_ROUNDOFF.get(t.dtype, 2.0 ** -8) for t in tensors)
    cuda = any(t.is_cuda for t in tensors)
    tf32 = cuda and (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
    return Rounding(max(u, 2.0 ** -53), 2.0 ** -10 if tf32 and u <= 2.0 ** -24 else 0.0)


def _near_threshold(act: Activation, lo: Tensor, hi: Tensor, err: Tensor,
                    u: float) -> Tensor | float:
    """1 where ``[lo - err, hi + err]`` (widened by the rounding of ``beta z``) reaches torch's
    Softplus threshold, so that the computed and the exact value may be on its two sides."""
    if act.threshold is None:
        return 0.0
    pad = err + 2.0 * u * torch.maximum(lo.abs(), hi.abs()) + TINY
    return ((lo - pad <= act.threshold) & (hi + pad >= act.threshold)).to(lo.dtype)


def rounding_error(layers: list[Layer], inputs: list[tuple[Tensor, Tensor]],
                   adjoints: list[tuple[Tensor, Tensor]], rnd: Rounding,
                   e0: Tensor) -> Tensor:
    """A bound on ``|G_hat - G|`` ``(d,)``: torch's computed gradient ``G_hat`` of ``f_y`` at a
    point ``x_hat`` with ``|x_hat - x'| <= e0``, against the exact ``G(x')``, for every ``x'``
    whose layer inputs lie in ``inputs`` and output adjoints in ``adjoints`` (``(lo, hi)`` per
    layer, from :func:`enclose`). Forward (``e`` bounds ``|z_hat - z|``): an affine layer with
    fan-in ``n`` gives ``|A| e + gamma_n (|A| (|z| + e) + |b|)``; an activation
    ``L1 e + ulps u (|sigma| + |z|)`` (``L1 = sup |sigma'|``), plus the Softplus value jump
    where the threshold is near. Backward (``f`` bounds ``|u_hat - u|``): ``A^T`` with fan-out
    ``n'`` gives ``|A|^T f + gamma_n' |A|^T (|u| + f)``; an activation, with
    ``|s_hat - s| <= ds = L2 e + ulps u (1 + kappa |z|)`` (``L2 = sup |sigma''|``, plus the
    slope jump near the threshold), ``f (|s| + ds) + |u| ds + 4 u (|u| + f)(|s| + ds)``."""
    u = rnd.u
    e = e0
    errs = []
    for layer, (lo, hi) in zip(layers, inputs, strict=True):
        errs.append(e)
        mag = torch.maximum(lo.abs(), hi.abs()) + e
        if layer.affine is not None:
            a = layer.affine
            e = a.lin_abs(e)
            if a.fan_in:
                babs = a.bias_abs if a.bias_abs is not None else (
                    a.bias.abs() if a.bias is not None else 0.0)
                e = e + rnd.gamma(a.fan_in) * (a.lin_abs(mag) + babs)
            e = e * (1.0 + SUM_REL) + TINY
            continue
        act = layer.act
        assert act is not None
        vlo, vhi = act.range(0, lo, hi)
        amag = torch.maximum(vlo.abs(), vhi.abs()) + act.scale[1] * e
        e = (act.scale[1] * e + act.ulps * u * (amag + mag)
             + _near_threshold(act, lo, hi, e, u) * act.gap) * (1.0 + REL) + TINY
    f = torch.zeros_like(adjoints[-1][0])
    for i in range(len(layers) - 1, -1, -1):
        layer, (ulo, uhi) = layers[i], adjoints[i]
        umag = torch.maximum(ulo.abs(), uhi.abs())
        if layer.affine is not None:
            a = layer.affine
            ft = _transpose(a.lin_abs, f, a.in_shape)
            if a.fan_out:
                ft = ft + rnd.gamma(a.fan_out) * _transpose(a.lin_abs, umag + f, a.in_shape)
            f = ft * (1.0 + SUM_REL) + TINY
            continue
        act = layer.act
        assert act is not None
        (lo, hi), e = inputs[i], errs[i]
        slo, shi = act.range(1, lo, hi)
        smag = torch.maximum(slo.abs(), shi.abs())
        zmag = torch.maximum(lo.abs(), hi.abs()) + e
        ds = act.scale[2] * e + act.ulps * u * (1.0 + act.kappa * zmag) \
            + _near_threshold(act, lo, hi, e, u) * act.jump
        f = (f * (smag + ds) + umag * ds + 4.0 * u * (umag + f) * (smag + ds)) \
            * (1.0 + REL) + TINY
    return f.reshape(-1)


def _twin_range(act: Activation, k: int, lo: Tensor, hi: Tensor,
                above: Tensor | None) -> tuple[Tensor, Tensor]:
    """``sigma^(k)`` over ``[lo, hi]`` for the twin of a thresholded Softplus: the identity on
    the units ``above`` (whose whole ball interval lies above the threshold, where torch's
    function is the identity), its smooth twin elsewhere; torch's own function when
    ``above`` is None."""
    if above is None or act.threshold is None:
        return act.range(k, lo, hi)
    assert act.smooth_twin is not None
    slo, shi = act.smooth_twin.range(k, lo, hi)
    if k == 0:
        ilo, ihi = lo, hi
    else:
        ilo = ihi = torch.full_like(lo, 1.0 if k == 1 else 0.0)
    return torch.where(above, ilo, slo), torch.where(above, ihi, shi)


def enclose(layers: list[Layer], x0: Tensor, radius: float, q: float, target: int,
            *, hessian: bool, defer_first: bool = False,
            twin_above: list[Tensor] | None = None, rounding: Rounding | None = None,
            e0: tuple[Tensor, Tensor] | None = None) -> Enclosure:
    """Enclose ``grad f_y`` (and ``Hess f_y`` when ``hessian``) over the ball of ``radius``
    around ``x0`` ``(1, *in_shape)``, float64. ``q`` is the dual norm of the ball (2 for l2,
    1 for l-inf); ``|delta_i| <= radius`` for both. See the module docstring for the math.

    ``defer_first``: leave the first activation's Hessian term out of ``struct`` and return
    its parts in ``first`` (its ``[J_1] = A_0`` does not depend on ``x0``, so integrated
    gradients sums the weights over its ``m`` points and forms the ``d x d`` term once).

    ``twin_above``: enclose the twin ``f_s`` instead of torch's ``f``: every thresholded
    Softplus replaced, unit by unit, by the identity where ``twin_above`` (from the ``above``
    of the enclosure of ``f`` on the same ball) and by its smooth twin elsewhere; ``f_s`` is
    twice differentiable and equals ``f`` except on the units whose interval straddles the
    threshold. Without it, ``gap``/``gap0`` bound ``|G - G_s|`` (only those units add to it).

    ``rounding``, ``e0``: also bound torch's rounding, ``|G_hat - G|`` over the ball and at
    ``x0`` (:func:`rounding_error`, input errors ``e0 = (ball, point)``)."""
    dt = torch.float64
    x0 = x0.to(dt)
    d = x0[0].numel()
    in_shape = tuple(x0.shape[1:])
    pc, pr = x0, torch.zeros_like(x0)  # the point x0 (rounding only)
    bc, br = x0, torch.full_like(x0, radius)  # the box containing the ball
    tangents = hessian or radius > 0
    if tangents:
        tc = torch.eye(d, dtype=dt, device=x0.device).view(d, *in_shape)
        tr = torch.zeros_like(tc)
    acts: list[tuple[Activation, tuple[Tensor, Tensor], tuple[Tensor, Tensor],
                     tuple[Tensor, Tensor] | None, Tensor | None]] = []
    track = twin_above is None and any(
        la.act is not None and la.act.threshold is not None for la in layers)
    dzs: list[tuple[Tensor, Tensor]] = []  # |z - z_s| bounds (ball, point) per activation
    dball, dpoint = torch.zeros_like(x0), torch.zeros_like(x0)
    ins_ball: list[tuple[Tensor, Tensor]] = []
    ins_point: list[tuple[Tensor, Tensor]] = []
    above_masks: list[Tensor] = []
    twins = iter(twin_above or [])
    for layer in layers:
        if layer.affine is not None:
            ins_ball.append(to_lohi(bc, br))
            ins_point.append(to_lohi(pc, pr))
            pc, pr = _affine_cr(layer.affine, pc, pr)
            bc, br = _affine_cr(layer.affine, bc, br)
            if tangents:
                tc, tr = _affine_cr(layer.affine, tc, tr, bias=False)
            if track:
                dball, dpoint = (layer.affine.lin_abs(t) * (1.0 + SUM_REL) + TINY
                                 for t in (dball, dpoint))
            continue
        act = layer.act
        assert act is not None
        point = to_lohi(pc, pr)
        ball = to_lohi(bc, br)
        if tangents and radius > 0:
            spread = radius * (_rownorm(tc, q) + _rownorm(tr, q)).unsqueeze(0)
            ball = intersect(ball, to_lohi(pc, pr + spread * (1.0 + SUM_REL)))
        ins_ball.append(ball)
        ins_point.append(point)
        above = next(twins) if twin_above is not None and act.threshold is not None else None
        if twin_above is None and act.threshold is not None:
            above_masks.append(ball[0] > act.threshold)
        acts.append((act, ball, point, (tc, tr) if hessian else None, above))
        if track:
            dzs.append((dball, dpoint))
            straddle = _straddles(act, *ball)
            dball, dpoint = (straddle * act.gap + act.scale[1] * dball,
                             straddle * _reaches(act, point[1]) * act.gap
                             + act.scale[1] * dpoint)
        bc, br = to_cr(*_twin_range(act, 0, *ball, above))
        pc, pr = to_cr(*_twin_range(act, 0, *point, above))
        if tangents:
            slo, shi = _twin_range(act, 1, *ball, above)
            tc, tr = mul_cr(slo, shi, tc, tr)
    k = pc.shape[1:].numel()
    if pc.ndim != 2:
        raise InputError(f"--sound needs logits of shape (N, k), the chain gives "
                         f"{tuple(pc.shape)}")
    e = torch.zeros((1, k), dtype=dt, device=x0.device)
    e[0, target] = 1.0
    uc, ur = e, torch.zeros_like(e)
    vc, vr = e, torch.zeros_like(e)  # the point version
    st = None
    if hessian:
        zero = torch.zeros((d, d), dtype=dt, device=x0.device)
        st = Structured(zero, zero.clone(), zero.clone(), zero.clone(), 0.0, 0.0,
                        zero.clone())
    index = len(acts)
    mvt_ok = True
    first = None
    du, du0 = torch.zeros_like(e), torch.zeros_like(e)
    adj_ball: list[tuple[Tensor, Tensor]] = [to_lohi(uc, ur)] * len(layers)
    adj_point: list[tuple[Tensor, Tensor]] = [to_lohi(vc, vr)] * len(layers)
    for li in range(len(layers) - 1, -1, -1):
        layer = layers[li]
        adj_ball[li], adj_point[li] = to_lohi(uc, ur), to_lohi(vc, vr)
        if layer.affine is not None:
            a = layer.affine
            uc, ur = _affine_t_cr(a, uc, ur)
            vc, vr = _affine_t_cr(a, vc, vr)
            if track:
                du, du0 = (_transpose(a.lin_abs, t, a.in_shape) * (1.0 + SUM_REL) + TINY
                           for t in (du, du0))
            continue
        index -= 1
        act, ball, point, jac, above = acts[index]
        if twin_above is None:
            mvt_ok = mvt_ok and not act.crosses_threshold(*ball)
        if track:  # |w - w_s| <= jump |u| + sup|s''| |dz| |u| + sup|s'| |du|
            straddle = _straddles(act, *ball)
            du, du0 = ((jumps * act.jump + act.scale[2] * dz) * (u_c.abs() + u_r)
                       + act.scale[1] * dd
                       for jumps, dz, dd, u_c, u_r in (
                           (straddle, dzs[index][0], du, uc, ur),
                           (straddle * _reaches(act, point[1]), dzs[index][1], du0, vc, vr)))
        if jac is not None:
            assert st is not None
            wc, wr = to_cr(*mul(*to_lohi(uc, ur), *_twin_range(act, 2, *ball, above)))
            wc, wr = wc.reshape(1, -1), wr.reshape(1, -1)
            tcm, trm = jac[0].reshape(d, -1), jac[1].reshape(d, -1)
            if index == 0 and defer_first:
                first = (tcm, trm, wc, wr)
            else:
                add_term(st, tcm, trm, wc, wr)
        uc, ur = mul_cr(*_twin_range(act, 1, *ball, above), uc, ur)
        vc, vr = mul_cr(*_twin_range(act, 1, *point, above), vc, vr)
    hess = None if st is None else (st.c, st.r + st.q)
    rnd_ball = rnd_point = None
    if rounding is not None:
        zeros = torch.zeros_like(x0)
        eb, ep = e0 if e0 is not None else (zeros, zeros)
        rnd_ball = rounding_error(layers, ins_ball, adj_ball, rounding, eb)
        rnd_point = rounding_error(layers, ins_point, adj_point, rounding, ep)
    return Enclosure(tuple(t.reshape(-1) for t in to_lohi(uc, ur)),  # type: ignore[arg-type]
                     tuple(t.reshape(-1) for t in to_lohi(vc, vr)),  # type: ignore[arg-type]
                     hess, mvt_ok, du.reshape(-1) if track else None,
                     du0.reshape(-1) if track else None, st, first, above_masks,
                     rnd_ball, rnd_point)


def add_term(st: Structured, tcm: Tensor, trm: Tensor, wc: Tensor, wr: Tensor) -> None:
    """Add ``[J]^T diag([w]) [J]`` to ``st`` (``[J] = tcm +- trm`` as ``(d, n)``, ``[w] = wc +- wr``
    as ``(1, n)``): centre ``J diag(wc) J^T``, ``P += J diag(wr) J^T``, ``q += |J| diag(wr) |J|^T``,
    and into ``r`` the cross terms with ``trm`` and the rounding of the centre's sums."""
    wabs = wc.abs() + wr
    tabs = tcm.abs()
    st.c += (tcm * wc) @ tcm.T
    st.p += (tcm * wr) @ tcm.T
    # nonnegative products rounded up by SUM_REL
    rounding = (SUM_REL * (1.0 + SUM_REL)) * ((tabs * wabs) @ tabs.T) + TINY
    st.r += ((trm * wabs) @ (tabs + trm).T + (tabs * wabs) @ trm.T) * (1.0 + SUM_REL) + rounding
    assert st.r_round is not None
    st.r_round += rounding
    st.q += ((tabs * wr) @ tabs.T) * (1.0 + SUM_REL)
    sq = torch.sqrt(wabs)
    b2 = (tcm * wabs) @ tcm.T
    b2_err = SUM_REL * float((wabs * (tcm * tcm).sum(0)).sum()) * (1.0 + SUM_REL)
    b = math.sqrt(_lmax_psd(b2.cpu().numpy(), b2_err))
    a = _smax_nonneg_factor((trm * sq).cpu().numpy())
    st.cross += (2.0 * a * b + a * a) * (1.0 + 1e-12)
    st.p_err += SUM_REL * float((wr * (tcm * tcm).sum(0)).sum()) * (1.0 + SUM_REL)
    st.p_err_sum += SUM_REL * float((wr * tabs.sum(0) ** 2).sum()) * (1.0 + SUM_REL)


def _straddles(act: Activation, lo: Tensor, hi: Tensor) -> Tensor | float:
    """1 where ``[lo, hi]`` straddles the Softplus threshold (there torch's function and the
    twin of :func:`enclose` differ: by ``gap`` in value, ``jump`` in slope), else 0."""
    if act.threshold is None:
        return 0.0
    return ((lo <= act.threshold) & (hi >= act.threshold)).to(lo.dtype)


def _reaches(act: Activation, hi: Tensor) -> Tensor | float:
    """1 where an interval reaches the Softplus threshold (torch's branch may switch)."""
    if act.threshold is None:
        return 0.0
    return (hi >= act.threshold).to(hi.dtype)


# --- from enclosures to bounds ------------------------------------------------------------

def _smax(m: np.ndarray) -> float:
    """``sigma_max(m)`` from LAPACK, widened by ``1e-10 ||m||_F`` (its backward error)."""
    if m.size == 0:
        return 0.0
    top = float(np.linalg.svd(m, compute_uv=False)[0])
    return top + 1e-10 * float(np.linalg.norm(m)) + TINY


def _smax_nonneg(r: np.ndarray, iterations: int = 60) -> float:
    """``sigma_max(r)`` for an entrywise nonnegative ``r``, by the Collatz-Wielandt bound:
    ``sigma_max(r)^2 = rho(r^T r) <= max_i (r^T r v)_i / v_i`` for every positive ``v``; ``v``
    from power iteration (so the bound is tight), the products rounded up."""
    if r.size == 0:
        return 0.0
    v = np.ones(r.shape[1])
    for _ in range(iterations):
        w = r.T @ (r @ v)
        top = float(w.max())
        if top <= 0.0:
            return TINY
        v = w / top + 1e-12  # stays positive
    w = r.T @ (r @ v)
    ratio = float(np.max(w / v)) * (1.0 + 1e-10) + TINY
    return math.sqrt(ratio) * (1.0 + 1e-12)


def _smax_nonneg_factor(r: np.ndarray, iterations: int = 60) -> float:
    """:func:`_smax_nonneg` for a tall or wide nonnegative ``r`` (matrix-vector products only)."""
    return _smax_nonneg(r, iterations)


def interval_bound(g: tuple[Tensor, Tensor], g0: tuple[Tensor, Tensor]) -> float:
    """``|| max(g_hi - g0_lo, g0_hi - g_lo) ||_2`` (``g`` over the ball, ``g0`` at ``x``):
    bounds ``||g(x') - g(x)||_2`` for every ``x'`` in the ball."""
    dev = torch.maximum(g[1] - g0[0], g0[1] - g[0]).clamp(min=0.0)
    return float(torch.linalg.vector_norm(dev)) * (1.0 + SUM_REL) + TINY


def mean_value_bound(jac: tuple[Tensor, Tensor], center: Tensor, eps: float,
                     linf: bool) -> float:
    """``sup ||M delta||_2`` over the ball for every ``M`` in ``[Mc - R, Mc + R]``, split as
    ``C + (M - C)``: ``eps (sigma_max(C) + sigma_max(R'))`` (l2) or
    ``eps (min(sqrt(sum |C^T C|), sqrt(d) sigma_max(C)) + ||R' 1||_2)`` (l-inf)."""
    lo, hi = to_lohi(*jac)
    rp = torch.maximum((lo - center).abs(), (hi - center).abs())
    rp = (rp * (1.0 + 1e-12) + TINY).cpu().numpy()
    c = center.cpu().numpy()
    if not linf:
        value = _smax(c) + _smax_nonneg(rp)
    else:
        absc = np.abs(c)
        gram = float(np.abs(c.T @ c).sum() + 1e-10 * np.sum(absc.T @ absc))
        d = c.shape[1]
        value = min(math.sqrt(gram), math.sqrt(d) * _smax(c)) * (1.0 + 1e-12) \
            + float(np.linalg.norm(rp.sum(1))) * (1.0 + 1e-10)
    return eps * value * (1.0 + 1e-12)


def _lmax_psd(p: np.ndarray, err: float) -> float:
    """``lambda_max`` of the symmetric PSD matrix whose computed value is ``p``, with
    ``||p - P||_F <= err``: LAPACK's, widened by its backward error and by ``err``."""
    if p.size == 0:
        return 0.0
    top = float(scipy_eigvalsh(p)[-1])
    return max(top, 0.0) + 1e-10 * float(np.linalg.norm(p)) + err + TINY


def scipy_eigvalsh(p: np.ndarray) -> np.ndarray:
    """Eigenvalues of the symmetrised ``p`` (ascending)."""
    return np.linalg.eigvalsh(0.5 * (p + p.T))


def _theorem2(c: np.ndarray, d: int) -> float:
    """``max_{||delta||_inf <= 1} ||C delta||_2 <= min(sqrt(sum |C^T C|), sqrt(d) sigma_max(C))``
    (Theorem 2 and Corollary 1), with the rounding of ``C^T C`` covered."""
    absc = np.abs(c)
    gram = float(np.abs(c.T @ c).sum() + 1e-10 * np.sum(absc.T @ absc))
    return min(math.sqrt(gram), math.sqrt(d) * _smax(c)) * (1.0 + 1e-12)


def structured_bound(st: Structured, grad: tuple[Tensor, Tensor], u0: Tensor | None,
                     eps: float, linf: bool) -> float:
    """The mean-value bound with the structured enclosure of ``H`` (:class:`Structured`).

    Saliency (``u0`` None): ``J_g = H = C + F^T E' F + E``, so
    ``||J_g delta|| <= ||C delta|| + ||F||_2 ||F delta|| + ||R |delta| ||``: for l2
    ``eps (sigma_max(C) + lambda_max(P) + sigma_max(R))``, for l-inf
    ``eps (Thm2(C) + sqrt(lambda_max(P) sum |P|) + ||R 1||_2)``.
    Input x gradient / IG (``u = u0 + delta'``, ``|delta'_i| <= eps``): ``J_g = diag(G) +
    diag(u) H = C' + diag(u0) F^T E' F + E''`` with ``C' = diag(G_c) + diag(u0) C`` and
    ``|E''| <= diag(G_r) + |u0| R + eps (|C| + R + q)`` entrywise; the middle term has
    norm at most ``sqrt(lambda_max(U P U)) ||F delta||``, ``U = diag(u0)``.
    """
    d = st.c.shape[0]
    p = st.p.cpu().numpy()
    lam = _lmax_psd(p, st.p_err)
    f_delta = math.sqrt(lam) if not linf else math.sqrt(
        float(np.abs(p).sum()) * (1.0 + 1e-10) + st.p_err_sum)
    if u0 is None:
        c, r, left = st.c, st.r, math.sqrt(lam)
    else:
        gc, gr = to_cr(*grad)
        u = u0.reshape(-1, 1)
        c = u * st.c
        idx = torch.arange(d)
        c[idx, idx] += gc
        r = (u.abs() * st.r + eps * (st.c.abs() + st.r + st.q)) * (1.0 + 1e-12) \
            + 1e-12 * (u.abs() * st.c.abs())
        r[idx, idx] += gr + 1e-12 * (c[idx, idx].abs() + gc.abs())
        un = u.cpu().numpy()
        upu = un * p * un.T
        left = math.sqrt(_lmax_psd(upu, float(np.max(un ** 2)) * st.p_err * (1.0 + 1e-10)
                                   + 1e-12 * float(np.linalg.norm(upu))))
    cn, rn = c.cpu().numpy(), (r * (1.0 + 1e-12) + TINY).cpu().numpy()
    if linf:
        value = _theorem2(cn, d) + left * f_delta + float(np.linalg.norm(rn.sum(1))) \
            * (1.0 + 1e-10)
        return eps * value * (1.0 + 1e-12)
    sc = _smax(cn)
    value = sc + left * f_delta + _smax_nonneg(rn)
    if st.r_round is not None:  # the cross terms by their spectral bound (l2 only)
        if u0 is None:
            alt_r, scale = st.r_round, 1.0
        else:
            u = u0.reshape(-1, 1)
            alt_r = r - u.abs() * st.r + u.abs() * st.r_round  # E'' with R -> R_round
            alt_r = alt_r.clamp(min=0.0) * (1.0 + 1e-12) \
                + 1e-12 * (u.abs() * (st.r + st.c.abs())) + TINY
            scale = float(u0.abs().max())
        alt = sc + left * f_delta + scale * st.cross \
            + _smax_nonneg((alt_r * (1.0 + 1e-12) + TINY).cpu().numpy())
        value = min(value, alt)
    return eps * value * (1.0 + 1e-12)


@dataclass
class SoundResult:
    """``T_e_sound`` and the bounds it is the minimum of (``None``: not available)."""

    interval: float
    mean_value: float | None

    @property
    def value(self) -> float:
        return self.interval if self.mean_value is None else min(self.interval,
                                                                  self.mean_value)

    @property
    def method(self) -> str:
        return "interval" if self.mean_value is None or self.interval <= self.mean_value \
            else "mean_value"


def _diag_plus(jac: tuple[Tensor, Tensor], diag: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``[J] + diag([v])`` (centre/radius)."""
    jc, jr = jac[0].clone(), jac[1].clone()
    dc, dr = to_cr(*diag)
    idx = torch.arange(jc.shape[0])
    jc[idx, idx] += dc
    jr[idx, idx] += dr + 1e-12 * (jc[idx, idx].abs() + dc.abs())
    return jc, jr


class _Sums:
    """Running sums of centre/radius vectors and of their magnitudes (integrated
    gradients' ``m`` points): a float64 sum of ``m`` terms errs by at most ``SUM_REL`` times
    the sum of their magnitudes."""

    def __init__(self) -> None:
        self.parts: dict[str, list[Tensor]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.parts

    def add(self, key: str, cr: tuple[Tensor, Tensor]) -> None:
        c, r = cr
        acc = self.parts.setdefault(key, [torch.zeros_like(c)] * 3)
        self.parts[key] = [acc[0] + c, acc[1] + r, acc[2] + c.abs() + r]

    def total(self, key: str, scale: float) -> tuple[Tensor, Tensor]:
        c, r, mag = self.parts[key]
        return c * scale, (r + SUM_REL * mag) * scale * (1.0 + 1e-12) + TINY


def _add_struct(acc: Structured | None, st: Structured, w: float) -> Structured:
    """``acc + w st`` (a new :class:`Structured` when ``acc`` is None)."""
    assert st.r_round is not None
    if acc is None:
        return Structured(st.c * w, st.r * w, st.p * w, st.q * w, st.p_err * w,
                          st.p_err_sum * w, st.r_round * w, st.cross * w)
    assert acc.r_round is not None
    acc.c += st.c * w
    acc.r += st.r * w
    acc.p += st.p * w
    acc.q += st.q * w
    acc.p_err += st.p_err * w
    acc.p_err_sum += st.p_err_sum * w
    acc.r_round += st.r_round * w
    acc.cross += st.cross * w
    return acc


def _round_struct(st: Structured) -> None:
    """Widen a sum of weighted :class:`Structured` by its own rounding (``SUM_REL`` of the
    magnitudes)."""
    assert st.r_round is not None
    st.r_round += SUM_REL * (st.c.abs() + st.r_round + st.q)
    st.cross *= 1.0 + 1e-10
    st.r += SUM_REL * (st.c.abs() + st.r + st.q)
    st.q *= 1.0 + SUM_REL
    st.p_err += SUM_REL * float(torch.linalg.matrix_norm(st.p) + st.p_err)
    st.p_err_sum += SUM_REL * float(st.p.abs().sum() + st.p_err_sum)


class SoundBounder:
    """Proved bounds for one model, attribution and ball (see the module docstring).

    The model is read once (:func:`extract_chain`) and checked against its own forward pass
    on ``example``; ``bound(x, target, jac_center)`` then bounds one sample.
    """

    def __init__(self, model: torch.nn.Module, example: Tensor, attribution: Attribution,
                 perturbation: Perturbation) -> None:
        if not isinstance(attribution, (Saliency, InputXGradient, IntegratedGradients)):
            raise OptionError(f"--sound supports saliency, input_x_gradient and "
                              f"integrated_gradients, not {attribution!r}")
        if not isinstance(model, torch.nn.Module):
            raise InputError("--sound needs a torch.nn.Module")
        self.layers = extract_chain(model, example[:1])
        self.rounding = model_rounding(model, example)
        self.has_threshold = any(la.act is not None and la.act.threshold is not None
                                 for la in self.layers)
        self.attribution = attribution
        # the ball used: l-inf for p = inf; for 2 < p < inf the l2 ball of radius
        # d^(1/2 - 1/p) eps (Lemma 1, as Corollary 1), for 1 <= p <= 2 that of radius eps
        self.linf = math.isinf(perturbation.norm)
        self.q = 1.0 if self.linf else 2.0
        d = example[0].numel()
        self.eps = perturbation.eps * (1.0 if self.linf
                                       else l2_radius_factor(d, perturbation.norm))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = forward(self.layers, example[:1].detach().to(torch.float64))
            theirs = model(example[:1]).detach().to(torch.float64)
        scale = float(theirs.abs().max()) + 1.0
        tol = 1e-9 if theirs.dtype == torch.float64 and example.dtype == torch.float64 \
            else 1e-4
        if ours.shape != theirs.shape or float((ours - theirs).abs().max()) > tol * scale:
            raise InputError("--sound could not read this model's graph faithfully (its "
                             "chain of layers does not reproduce the model's output)")

    @property
    def norm_used(self) -> str:
        return "inf" if self.linf else "2"

    def _pair(self, z: Tensor, radius: float, target: int, hessian: bool, defer: bool,
              e0: tuple[Tensor, Tensor]) -> tuple[Enclosure, Enclosure]:
        """The enclosure of torch's ``f`` (with its rounding) and the one the mean-value
        bound uses: ``f`` itself, or its twin where a Softplus threshold is in the chain."""
        enc = enclose(self.layers, z, radius, self.q, target,
                      hessian=hessian and not self.has_threshold, defer_first=defer,
                      rounding=self.rounding, e0=e0)
        if not (hessian and self.has_threshold):
            return enc, enc
        twin = enclose(self.layers, z, radius, self.q, target, hessian=True,
                       defer_first=defer, twin_above=enc.above)
        return enc, twin

    def _gather(self, x: Tensor, target: int, hessian: bool
                ) -> tuple[Enclosure, Enclosure, Tensor | None, Tensor]:
        """Enclosures of the gradient factor ``G`` of the attribution (IG: ``mean_a G(z_a)``,
        ``H``: ``sum_a (a/m^2) Hess f_y(z_a)``) for torch's function and for the twin, ``u0``
        (``x``, ``x - b``, or None) and ``r``, the bound on ``|x_hat' - x'|`` (the attack's
        float point against the ball point it stands for: ``u (|x| + 3.01 eps)``)."""
        eps, att, u = self.eps, self.attribution, self.rounding.u
        r = (u * (x.abs() + 3.01 * eps)) * (1.0 + REL)
        zero = torch.zeros_like(x)
        if not isinstance(att, IntegratedGradients):
            enc, twin = self._pair(x, eps, target, hessian, False, (r, zero))
            return enc, twin, (x.reshape(-1) if isinstance(att, InputXGradient) else None), r
        base = att.baseline_for(x).to(torch.float64)
        m = att.steps
        acc_t, acc_s = _Sums(), _Sums()
        ok = True
        st_sum: Structured | None = None
        wsum: list[Tensor] | None = None
        first_tangent: tuple[Tensor, Tensor] | None = None
        span = (x - base).abs()
        for a in range(1, m + 1):
            alpha = a / m
            # the float path point b + alpha (x_hat - b), each operation rounded
            e_ball = alpha * r + 5.0 * u * (base.abs() + alpha * (span + eps + r))
            e_point = 5.0 * u * (base.abs() + alpha * span)
            enc, tw = self._pair(base + alpha * (x - base), alpha * eps, target, hessian,
                                 True, (e_ball, e_point))
            if tw.first is not None:  # sum_a (a/m^2) w_a, and sum |terms| for its rounding
                tcm, trm, wc, wr = tw.first
                wsum = [wc * (alpha / m), wr * (alpha / m), (wc.abs() + wr) * (alpha / m)] \
                    if wsum is None else [wsum[0] + wc * (alpha / m), wsum[1] + wr * (alpha / m),
                                          wsum[2] + (wc.abs() + wr) * (alpha / m)]
                first_tangent = (tcm, trm)
            ok = ok and tw.mvt_ok
            if tw.struct is not None:  # weight a/m^2; sums of m terms: rounding SUM_REL
                st_sum = _add_struct(st_sum, tw.struct, alpha / m)
            acc_t.add("g", to_cr(*enc.grad))
            acc_t.add("g0", to_cr(*enc.grad0))
            acc_s.add("g", to_cr(*tw.grad))
            acc_s.add("g0", to_cr(*tw.grad0))
            for key, val in (("gap", enc.gap), ("gap0", enc.gap0), ("rb", enc.round_ball),
                             ("rp", enc.round_point)):
                if val is not None:
                    acc_t.add(key, (torch.zeros_like(val), val))
            assert enc.round_ball is not None and enc.round_point is not None
            for key, g, rnd in (("mb", enc.grad, enc.round_ball),
                                ("mp", enc.grad0, enc.round_point)):
                acc_t.add(key, (torch.zeros_like(rnd),
                                torch.maximum(g[0].abs(), g[1].abs()) + rnd))
        if st_sum is not None and wsum is not None and first_tangent is not None:
            add_term(st_sum, *first_tangent, wsum[0],
                     wsum[1] * (1.0 + SUM_REL) + SUM_REL * wsum[2] + TINY)
        hess = None
        if st_sum is not None:  # the accumulated sums' rounding: <= SUM_REL of the magnitude
            _round_struct(st_sum)
            hess = (st_sum.c, st_sum.r + st_sum.q)
        # torch's mean of m gradients: w_hat = fl(1/m), m products and a sum of m terms,
        # gamma_{m+2} times sum |G_hat_a| / m, plus the mean of the gradients' own errors
        gam = self.rounding.gamma(m + 2)
        rb = acc_t.total("rb", 1.0 / m)[1] + gam * acc_t.total("mb", 1.0 / m)[1]
        rp = acc_t.total("rp", 1.0 / m)[1] + gam * acc_t.total("mp", 1.0 / m)[1]
        enc = Enclosure(to_lohi(*acc_t.total("g", 1.0 / m)),
                        to_lohi(*acc_t.total("g0", 1.0 / m)), None, ok,
                        acc_t.total("gap", 1.0 / m)[1] if "gap" in acc_t else None,
                        acc_t.total("gap0", 1.0 / m)[1] if "gap0" in acc_t else None,
                        round_ball=rb * (1.0 + REL), round_point=rp * (1.0 + REL))
        twin = Enclosure(to_lohi(*acc_s.total("g", 1.0 / m)),
                         to_lohi(*acc_s.total("g0", 1.0 / m)), hess, ok, struct=st_sum)
        return enc, twin, (x - base).reshape(-1), r

    def rounding_term(self, enc: Enclosure, u0: Tensor | None, r: Tensor) -> float:
        """``sup ||g_hat(x_hat') - g(x')||_2 + ||g_hat(x) - g(x)||_2``: torch's rounding of the
        attribution over the ball and at ``x`` (:func:`rounding_error` bounds that of the
        gradient factor, ``enc.round_ball``/``round_point``; IG: of the mean over its points).
        Saliency: those. ``g = u * G`` (input x gradient ``u = x``, IG ``u = x - b``): torch
        computes ``fl(fl(x_hat' - b) * G_hat)``, which errs from ``u' G`` by at most
        ``|r| (|G| + F) + (|u| + eps) F + 2.01 u_r (|u| + eps + |r|)(|G| + F)`` over the ball
        (``F`` the factor's bound, ``u_r`` the unit roundoff) and ``|u| F + 2.01 u_r |u| (|G| +
        F)`` at ``x``."""
        assert enc.round_ball is not None and enc.round_point is not None
        fb, fp = enc.round_ball, enc.round_point
        if u0 is None:
            eb, ep = fb, fp
        else:
            ur, eps, rr = self.rounding.u, self.eps, r.reshape(-1)
            gb = torch.maximum(enc.grad[0].abs(), enc.grad[1].abs()) + fb
            gp = torch.maximum(enc.grad0[0].abs(), enc.grad0[1].abs()) + fp
            span = u0.abs()
            eb = rr * gb + (span + eps) * fb + 2.01 * ur * (span + eps + rr) * gb
            ep = span * fp + 2.01 * ur * span * gp
        total = float(torch.linalg.vector_norm(eb) + torch.linalg.vector_norm(ep))
        return total * (1.0 + SUM_REL) + TINY

    def bound(self, x: Tensor, target: int, jac_center: Tensor | None = None) -> SoundResult:
        """Bounds on ``sup ||g_hat(x_hat') - g_hat(x)||_2`` for one sample ``x``
        ``(1, C, H, W)``, ``g_hat`` the attribution as torch computes it in the model's
        precision and ``x_hat'`` any float point for a point of the ball.

        Both bounds are proved for the exact function ``g`` (torch's, Softplus thresholds
        included) and then the rounding term (:meth:`rounding_term`) is added.
        ``interval`` encloses ``g`` itself. The mean-value bound is applied to the twin
        ``g_s`` of :func:`enclose` when the chain has a Softplus threshold (the identity on
        the units whose interval lies above it, the smooth twin elsewhere), plus
        ``sup ||g - g_s||`` over the ball and at ``x`` (``Enclosure.gap``), which only the
        units whose interval straddles the threshold add to.
        ``jac_center``: another centre ``C`` to try, e.g. ``J_g(x)`` (any matrix is valid);
        the enclosure's own centre ``Mc`` is always tried, and since ``J_g(x)`` lies in
        ``[Mc - R, Mc + R]`` with ``R = O(eps)`` that bound already tends to ``T_e``.
        """
        x = x.detach().to(torch.float64)
        eps = self.eps
        hessian = x[0].numel() <= MAX_D
        enc, smooth, u0, r = self._gather(x, target, hessian)
        if u0 is None:  # saliency: g = G, J_g = H
            g, g0 = enc.grad, enc.grad0
            jac = smooth.hess
            scale, scale0 = 1.0, 1.0
        else:  # g = u * G with u = x - b (IG) or x, du/dx = I: J_g = diag(G) + diag(u) H
            ub = (u0 - eps, u0 + eps)
            g = mul(*ub, *enc.grad)
            g0 = mul(u0, u0, *enc.grad0)
            jac = None
            if smooth.hess is not None:
                jac = _diag_plus(mul_cr(ub[0].view(-1, 1), ub[1].view(-1, 1), *smooth.hess),
                                 smooth.grad)
            scale, scale0 = u0.abs() + eps, u0.abs()
        interval = interval_bound(g, g0)
        mean_value = None
        if jac is not None and smooth.mvt_ok:
            centers = [jac[0]] + ([] if jac_center is None
                                  else [jac_center.to(torch.float64).cpu()])
            mean_value = min(mean_value_bound(jac, c, eps, self.linf) for c in centers)
            if smooth.struct is not None:
                mean_value = min(mean_value, structured_bound(
                    smooth.struct, smooth.grad, u0, eps, self.linf))
            if smooth is not enc and enc.gap is not None and enc.gap0 is not None:
                mean_value += float(torch.linalg.vector_norm(scale * enc.gap)
                                    + torch.linalg.vector_norm(scale0 * enc.gap0)) \
                    * (1.0 + 1e-10)
        extra = self.rounding_term(enc, u0, r)
        grow = 1.0 + (x.numel() + 3) * 2.0 ** -52  # the float64 norm of the attack's deviation
        return SoundResult((interval + extra) * grow,
                           None if mean_value is None else (mean_value + extra) * grow)

    def jacobian(self, x: Tensor, target: int) -> Tensor:
        """``J_g(x)`` ``(d, d)`` by autograd through the float64 chain (the centre ``C``)."""
        from .jacobian import attribution_jacobian

        def chain(t: Tensor) -> Tensor:
            return forward(self.layers, t)

        y = torch.tensor([target], device=x.device)
        return attribution_jacobian(self.attribution, chain, x, y)[0].detach()

    def update(self, x: Tensor, targets: Tensor, attr_norms: list[float],
               records: list[Record], jac_centers: list[Tensor | None] | None = None) -> None:
        """Add ``T_e_sound``, ``T_e_sound_method``, ``T_c_sound``, ``T_c_sound_deg`` to each
        record of a batch (Corollary 2 applied to ``T_e_sound``)."""
        for i, rec in enumerate(records):
            res = self.bound(x[i:i + 1], int(targets[i]),
                             None if jac_centers is None else jac_centers[i])
            cos = bounds.cosine_bound(res.value, attr_norms[i])
            rec.update({
                "T_e_sound": finite_or_none(res.value),
                "T_e_sound_method": res.method,
                "T_e_sound_interval": finite_or_none(res.interval),
                "T_e_sound_mean_value": finite_or_none(res.mean_value),
                "T_c_sound": finite_or_none(cos.distance),
                "T_c_sound_deg": finite_or_none(cos.degrees),
            })

    @staticmethod
    def check_attack(records: list[Record]) -> None:
        """After an attack (``verify``): ``violation_sound`` is whether it beat ``T_e_sound``,
        which a proved bound must never allow (it would be a bug: a warning says so)."""
        for rec in records:
            hat, proved = rec.get("T_e_hat"), rec.get("T_e_sound")
            beaten = hat is not None and proved is not None and hat > proved
            rec["violation_sound"] = beaten
            if beaten:
                rec["warnings"].append("an attack exceeded the proved bound T_e_sound: this "
                                       "is a bug in attrcert, please report it")
