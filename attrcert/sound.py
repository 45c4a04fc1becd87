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
  mean-value theorem is then applied to the smooth twin (:func:`smooth_chain`) and the
  proved gap ``sup ||g - g_s||`` over the ball and at ``x`` is added (:class:`Enclosure`).

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

        return Affine(name, conv, lambda t: conv(t, wa),
                      None if b is None else b.view(1, -1, 1, 1))
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
                      None if b is None else b.view(1, -1))
    if op == "avg_pool2d":
        rest = [val(a) for a in args[1:]]

        def pool(t: Tensor) -> Tensor:
            return F.avg_pool2d(t, *rest)

        return Affine(name, pool, pool, None)
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
        return Affine(name, lambda t: t * s, lambda t: t * sa, sh)
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
            return Affine(name, lambda t: t, lambda t: t, c)
        if op == "sub":
            if left:
                return Affine(name, lambda t: t, lambda t: t, -c)
            return Affine(name, lambda t: -t, lambda t: t, c)
        if op == "mul":
            ca = c.abs()
            return Affine(name, lambda t: t * c, lambda t: t * ca, None)
        if left:  # div by a constant
            inv = 1.0 / c
            inva = inv.abs()
            return Affine(name, lambda t: t * inv, lambda t: t * inva, None)
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


def enclose(layers: list[Layer], x0: Tensor, radius: float, q: float, target: int,
            *, hessian: bool, defer_first: bool = False) -> Enclosure:
    """Enclose ``grad f_y`` (and ``Hess f_y`` when ``hessian``) over the ball of ``radius``
    around ``x0`` ``(1, *in_shape)``, float64. ``q`` is the dual norm of the ball (2 for l2,
    1 for l-inf); ``|delta_i| <= radius`` for both. See the module docstring for the math.

    ``defer_first``: leave the first activation's Hessian term out of ``struct`` and return
    its parts in ``first`` (its ``[J_1] = A_0`` does not depend on ``x0``, so integrated
    gradients sums the weights over its ``m`` points and forms the ``d x d`` term once)."""
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
                     tuple[Tensor, Tensor] | None]] = []
    track = any(la.act is not None and la.act.threshold is not None for la in layers)
    dzs: list[tuple[Tensor, Tensor]] = []  # |z - z_s| bounds (ball, point) per activation
    dball, dpoint = torch.zeros_like(x0), torch.zeros_like(x0)
    for layer in layers:
        if layer.affine is not None:
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
        acts.append((act, ball, point, (tc, tr) if hessian else None))
        if track:
            dzs.append((dball, dpoint))
            dball, dpoint = (_value_gap(act, iv[1]) + act.scale[1] * dz
                             for iv, dz in ((ball, dball), (point, dpoint)))
        bc, br = to_cr(*act.range(0, *ball))
        pc, pr = to_cr(*act.range(0, *point))
        if tangents:
            slo, shi = act.range(1, *ball)
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
    for layer in reversed(layers):
        if layer.affine is not None:
            a = layer.affine
            uc, ur = _affine_t_cr(a, uc, ur)
            vc, vr = _affine_t_cr(a, vc, vr)
            if track:
                du, du0 = (_transpose(a.lin_abs, t, a.in_shape) * (1.0 + SUM_REL) + TINY
                           for t in (du, du0))
            continue
        index -= 1
        act, ball, point, jac = acts[index]
        mvt_ok = mvt_ok and not act.crosses_threshold(*ball)
        if track:  # |w - w_s| <= jump |u| + sup|s''| |dz| |u| + sup|s'| |du|
            du, du0 = ((_slope_gap(act, iv[1]) + act.scale[2] * dz) * (u_c.abs() + u_r)
                       + act.scale[1] * dd
                       for iv, dz, dd, u_c, u_r in ((ball, dzs[index][0], du, uc, ur),
                                                    (point, dzs[index][1], du0, vc, vr)))
        if jac is not None:
            assert st is not None
            wc, wr = to_cr(*mul(*to_lohi(uc, ur), *act.range(2, *ball)))
            wc, wr = wc.reshape(1, -1), wr.reshape(1, -1)
            tcm, trm = jac[0].reshape(d, -1), jac[1].reshape(d, -1)
            if index == 0 and defer_first:
                first = (tcm, trm, wc, wr)
            else:
                add_term(st, tcm, trm, wc, wr)
        uc, ur = mul_cr(*act.range(1, *ball), uc, ur)
        vc, vr = mul_cr(*act.range(1, *point), vc, vr)
    hess = None if st is None else (st.c, st.r + st.q)
    return Enclosure(tuple(t.reshape(-1) for t in to_lohi(uc, ur)),  # type: ignore[arg-type]
                     tuple(t.reshape(-1) for t in to_lohi(vc, vr)),  # type: ignore[arg-type]
                     hess, mvt_ok, du.reshape(-1) if track else None,
                     du0.reshape(-1) if track else None, st, first)


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


def _value_gap(act: Activation, hi: Tensor) -> Tensor | float:
    """``|sigma(z) - sigma_s(z)|`` where the interval reaches above the threshold, else 0."""
    if act.threshold is None:
        return 0.0
    return (hi >= act.threshold).to(hi.dtype) * act.gap


def _slope_gap(act: Activation, hi: Tensor) -> Tensor | float:
    """``|sigma'(z) - sigma_s'(z)|`` where the interval reaches above the threshold, else 0."""
    if act.threshold is None:
        return 0.0
    return (hi >= act.threshold).to(hi.dtype) * act.jump


def smooth_chain(layers: list[Layer]) -> list[Layer]:
    """The chain with every thresholded Softplus replaced by its smooth twin."""
    return [Layer(affine=la.affine) if la.affine is not None else
            Layer(act=la.act.smooth_twin or la.act) for la in layers  # type: ignore[union-attr]
            ]


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
        self.smooth = smooth_chain(self.layers)
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

    def _gather(self, layers: list[Layer], x: Tensor, target: int,
                hessian: bool) -> tuple[Enclosure, Tensor | None]:
        """Enclosures of the gradient factor ``G`` of the attribution (IG: ``mean_a G(z_a)``,
        ``H``: ``sum_a (a/m^2) Hess f_y(z_a)``), and ``u0`` (``x``, ``x - b``, or None)."""
        eps, att = self.eps, self.attribution
        if not isinstance(att, IntegratedGradients):
            enc = enclose(layers, x, eps, self.q, target, hessian=hessian)
            return enc, (x.reshape(-1) if isinstance(att, InputXGradient) else None)
        base = att.baseline_for(x).to(torch.float64)
        m = att.steps
        sums: dict[str, list[Tensor]] = {}
        ok = True
        st_sum: Structured | None = None
        wsum: list[Tensor] | None = None
        first_tangent: tuple[Tensor, Tensor] | None = None
        for a in range(1, m + 1):
            alpha = a / m
            enc = enclose(layers, base + alpha * (x - base), alpha * eps, self.q, target,
                          hessian=hessian, defer_first=True)
            if enc.first is not None:  # sum_a (a/m^2) w_a, and sum |terms| for its rounding
                tcm, trm, wc, wr = enc.first
                wsum = [wc * (alpha / m), wr * (alpha / m), (wc.abs() + wr) * (alpha / m)] \
                    if wsum is None else [wsum[0] + wc * (alpha / m), wsum[1] + wr * (alpha / m),
                                          wsum[2] + (wc.abs() + wr) * (alpha / m)]
                first_tangent = (tcm, trm)
            ok = ok and enc.mvt_ok
            parts = {"g": to_cr(*enc.grad), "g0": to_cr(*enc.grad0)}
            if enc.struct is not None:  # weight a/m^2; sums of m terms: rounding SUM_REL
                w, st = alpha / m, enc.struct
                assert st.r_round is not None
                if st_sum is None:
                    st_sum = Structured(st.c * w, st.r * w, st.p * w, st.q * w,
                                        st.p_err * w, st.p_err_sum * w, st.r_round * w,
                                        st.cross * w)
                else:
                    assert st_sum.r_round is not None
                    st_sum.c += st.c * w
                    st_sum.r += st.r * w
                    st_sum.p += st.p * w
                    st_sum.q += st.q * w
                    st_sum.p_err += st.p_err * w
                    st_sum.p_err_sum += st.p_err_sum * w
                    st_sum.r_round += st.r_round * w
                    st_sum.cross += st.cross * w
            if enc.gap is not None and enc.gap0 is not None:
                parts["gap"] = (torch.zeros_like(enc.gap), enc.gap)
                parts["gap0"] = (torch.zeros_like(enc.gap0), enc.gap0)
            for key, (c, r) in parts.items():
                acc = sums.setdefault(key, [torch.zeros_like(c)] * 3)
                sums[key] = [acc[0] + c, acc[1] + r, acc[2] + c.abs() + r]

        def total(key: str, scale: float) -> tuple[Tensor, Tensor]:
            c, r, mag = sums[key]  # a sum of m terms: rounding <= m u sum |terms|
            return c * scale, (r + SUM_REL * mag) * scale * (1.0 + 1e-12) + TINY

        if st_sum is not None and wsum is not None and first_tangent is not None:
            add_term(st_sum, *first_tangent, wsum[0],
                     wsum[1] * (1.0 + SUM_REL) + SUM_REL * wsum[2] + TINY)
        hess = None
        if st_sum is not None:  # the accumulated sums' rounding: <= SUM_REL of the magnitude
            assert st_sum.r_round is not None
            st_sum.r_round += SUM_REL * (st_sum.c.abs() + st_sum.r_round + st_sum.q)
            st_sum.cross *= 1.0 + 1e-10
            st_sum.r += SUM_REL * (st_sum.c.abs() + st_sum.r + st_sum.q)
            st_sum.q *= 1.0 + SUM_REL
            st_sum.p_err += SUM_REL * float(torch.linalg.matrix_norm(st_sum.p) + st_sum.p_err)
            st_sum.p_err_sum += SUM_REL * float(st_sum.p.abs().sum() + st_sum.p_err_sum)
            hess = (st_sum.c, st_sum.r + st_sum.q)
        enc = Enclosure(to_lohi(*total("g", 1.0 / m)), to_lohi(*total("g0", 1.0 / m)),
                        hess, ok,
                        total("gap", 1.0 / m)[1] if "gap" in sums else None,
                        total("gap0", 1.0 / m)[1] if "gap0" in sums else None, st_sum)
        return enc, (x - base).reshape(-1)

    def bound(self, x: Tensor, target: int, jac_center: Tensor | None = None) -> SoundResult:
        """Bounds on ``sup ||g(x + delta) - g(x)||_2`` for one sample ``x`` ``(1, C, H, W)``.

        ``interval`` encloses torch's own function (Softplus thresholds included). The
        mean-value bound is applied to the smooth twin ``g_s`` (:func:`smooth_chain`) when the
        chain has a Softplus threshold inside the ball, plus ``sup ||g - g_s||`` over the ball
        and at ``x`` (``Enclosure.gap``), which is ``O(exp(-threshold))``.
        ``jac_center``: another centre ``C`` to try, e.g. ``J_g(x)`` (any matrix is valid);
        the enclosure's own centre ``Mc`` is always tried, and since ``J_g(x)`` lies in
        ``[Mc - R, Mc + R]`` with ``R = O(eps)`` that bound already tends to ``T_e``.
        """
        x = x.detach().to(torch.float64)
        eps = self.eps
        hessian = x[0].numel() <= MAX_D
        enc, u0 = self._gather(self.layers, x, target, hessian and not self.has_threshold)
        smooth = enc
        if hessian and self.has_threshold:
            smooth, _ = self._gather(self.smooth, x, target, True)
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
        return SoundResult(interval, mean_value)

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
