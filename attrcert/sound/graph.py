"""Reading the model: its torch.export graph (TorchScript rebuilt first) as float64 layers."""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from .activations import activation
from .layers import Affine, Layer
from .support import refusal
from .torchscript import from_torchscript


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


def _graph_module(model: torch.nn.Module, example: Tensor) -> torch.fx.GraphModule:
    if isinstance(model, torch.jit.ScriptModule):
        model = from_torchscript(model)
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
                raise refusal("getitem")
            chain_node = node.name
            continue
        if len(node.users) > 1:
            raise InputError(f"--sound needs a chain of layers, but aten.{op} feeds "
                             f"{len(node.users)} operations (a branch or skip connection)")
        first = args[0]
        if op in ("tanh", "sigmoid", "silu", "gelu", "softplus"):
            if not uses_chain(first):
                raise refusal(op)
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
            raise refusal(op)
        w = f64(val(args[1]))
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
            raise refusal(op)
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
            raise refusal(f"{op} (no shape recorded)")
        f = _reshape(tuple(int(s) for s in meta.shape[1:]))
        return Affine(name, f, f, None)
    if op in ("add", "sub", "mul", "div"):
        if len(args) != 2 or (uses_chain(args[0]) and uses_chain(args[1])):
            raise refusal(op)
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
        raise refusal("div (constant / x)")
    raise refusal(op)


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
