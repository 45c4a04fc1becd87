"""Rewriting a model's graph: beta-smoothing (``--beta-smooth``, :func:`beta_smooth`) and
twice-differentiable Hardsigmoid (:func:`differentiable_hard`).

Each model kind attrcert loads becomes a ``torch.fx`` graph, rewritten node by node
(:mod:`.smooth_match` finds ReLU and its relatives, :mod:`.smooth_ops` holds what replaces
them) on a copy, so that the original model keeps computing the prediction:

- a torch.export module (``ep.module()``): its ATen graph, copied;
- TorchScript: rebuilt as an ATen graph by :func:`attrcert.sound.torchscript.from_torchscript`
  (traced TorchScript: straight-line code);
- any other ``nn.Module`` (``--arch``): ``torch.fx.symbolic_trace``, which sees
  ``nn.ReLU`` modules, ``F.relu`` calls and ``x.relu()`` methods alike; a model that it
  cannot trace is exported with ``torch.export`` instead (dynamic batch), given an example;
- the normalisation folded in front (:class:`~attrcert.loading.Normalized`) stays in front.

In-place operations (``relu_``, ``inplace=True``) become their functional forms, and the
nodes after them that read the overwritten tensor read the result instead. With an
example input, each rewrite is checked: the same rewrite with torch's own operations in
place of the replacements must reproduce the model's output, and (``beta_smooth``) the
smoothed model must hold no operation that is not twice differentiable: what cannot be
smoothed (abs, sign, floor, ELU, max over an axis, max-pooling whose indices are used ...)
is refused by name.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..smoothness import REWRITTEN_ATTR, find_nonsmooth
from . import smooth_ops as ops
from .batching import StaticBatch
from .normalization import Normalized
from .smooth_match import KINDS, Found, ModuleAttr, match

__all__ = ["SMOOTHABLE", "beta_smooth", "differentiable_hard"]

#: What ``--beta-smooth`` replaces, for messages and docs.
SMOOTHABLE = ("ReLU", "LeakyReLU", "PReLU", "ReLU6", "Hardtanh", "clamp", "maximum",
              "minimum", "Hardsigmoid", "Hardswish", "max-pooling (2-D)",
              "adaptive max-pooling (2-D)")
Rule = Callable[[Found], tuple[Callable[..., Tensor], tuple[Any, ...]] | None]


def _smooth_rule(beta: float) -> Rule:
    """Each ReLU-like operation -> its beta-smoothed replacement (:mod:`.smooth_ops`)."""
    def rule(f: Found) -> tuple[Callable[..., Tensor], tuple[Any, ...]]:
        p, x = f.params, f.inputs[0]
        if f.kind == "relu":
            return ops.smooth_relu, (x, beta)
        if f.kind == "leaky":
            return ops.smooth_leaky_relu, (x, float(p["slope"]), beta)
        if f.kind == "prelu":
            return ops.smooth_prelu, (x, p["weight"], beta)
        if f.kind == "clamp":
            return ops.smooth_clamp, (x, p["lo"], p["hi"], beta)
        if f.kind in ("hardsigmoid", "hardswish"):
            return (ops.smooth_hardsigmoid if f.kind == "hardsigmoid"
                    else ops.smooth_hardswish), (x, beta)
        if f.kind in ("maximum", "minimum"):
            return (ops.smooth_maximum if f.kind == "maximum" else ops.smooth_minimum), \
                (f.inputs[0], f.inputs[1], beta)
        if f.kind == "max_pool2d":
            return ops.smooth_max_pool2d, (x, beta, p["kernel_size"], p["stride"],
                                           p["padding"], p["dilation"], p["ceil_mode"])
        return ops.smooth_adaptive_max_pool2d, (x, beta, p["output_size"])
    return rule


def _exact_clamp(x: Tensor, lo: Any, hi: Any) -> Tensor:
    return torch.clamp(x, lo, hi)


def _exact_max_pool2d(x: Tensor, k: Any, s: Any, p: Any, d: Any, ceil: Any) -> Tensor:
    return F.max_pool2d(x, k, s if s not in ([], ()) else None, p, d, bool(ceil))


def _exact_prelu(x: Tensor, weight: Tensor) -> Tensor:
    return F.prelu(x, weight)


def _exact_rule(f: Found) -> tuple[Callable[..., Tensor], tuple[Any, ...]]:
    """torch's own operation, called with the arguments as read: the check that reading
    and rewriting the graph changed nothing but the operations."""
    p, x = f.params, f.inputs[0]
    exact: dict[str, tuple[Callable[..., Tensor], tuple[Any, ...]]] = {
        "relu": (F.relu, (x,)),
        "leaky": (F.leaky_relu, (x, p.get("slope"))),
        "prelu": (_exact_prelu, (x, p.get("weight"))),
        "clamp": (_exact_clamp, (x, p.get("lo"), p.get("hi"))),
        "hardsigmoid": (F.hardsigmoid, (x,)),
        "hardswish": (F.hardswish, (x,)),
        "maximum": (torch.maximum, tuple(f.inputs)),
        "minimum": (torch.minimum, tuple(f.inputs)),
        "max_pool2d": (_exact_max_pool2d, (x, *(p.get(k) for k in (
            "kernel_size", "stride", "padding", "dilation", "ceil_mode")))),
        "adaptive_max_pool2d": (F.adaptive_max_pool2d, (x, p.get("output_size"))),
    }
    return exact[f.kind]


def _hard_rule(f: Found) -> tuple[Callable[..., Tensor], tuple[Any, ...]] | None:
    """Hardsigmoid -> its twice-differentiable form; the rest stays."""
    if f.kind == "hardsigmoid":
        return ops.hardsigmoid_twice, (f.inputs[0],)
    return None


def _to_graph(model: nn.Module, example: Tensor | None, purpose: str) -> torch.fx.GraphModule:
    """A copy of ``model`` as an fx graph (module docstring)."""
    if isinstance(model, torch.jit.ScriptModule):
        from ..sound.torchscript import from_torchscript

        gm = from_torchscript(model, purpose=purpose)
        for name, buf in list(gm.named_buffers()):  # so that .to(dtype) and prepare see them
            if buf.is_floating_point():
                delattr(gm, name)
                gm.register_parameter(name, nn.Parameter(buf, requires_grad=False))
        return gm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(model, torch.fx.GraphModule):
            return copy.deepcopy(model)
        try:
            return torch.fx.symbolic_trace(copy.deepcopy(model).eval())
        except Exception as exc:
            traced = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if example is not None:
            try:
                two = example[:1].expand(2, *example.shape[1:])  # batch 1 would specialize
                dynamic = ({0: torch.export.Dim.AUTO},)
                return torch.export.export(copy.deepcopy(model).eval(), (two,),
                                           dynamic_shapes=dynamic).module()
            except Exception:
                pass
    raise InputError(f"{purpose} cannot read this model as a graph (torch.fx.symbolic_trace: "
                     f"{traced}): export it with torch.export and pass the .pt2 archive")


def _operand(graph: torch.fx.Graph, value: Any) -> Any:
    """A parameter named by a ``call_module``'s path (PReLU's weight) as a graph node."""
    if isinstance(value, ModuleAttr):
        return graph.get_attr(str(value))
    return value


def _rewrite(gm: torch.fx.GraphModule, rule: Rule, purpose: str) -> list[str]:
    """Replace every node that ``rule`` has a replacement for; returns their names."""
    graph = gm.graph
    order = {node: i for i, node in enumerate(graph.nodes)}
    done: list[str] = []
    for node in list(graph.nodes):
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        found = match(node, gm)
        if found is None:
            continue
        with graph.inserting_before(node):
            made = rule(Found(found.kind, found.inputs,
                              {k: _operand(graph, v) for k, v in found.params.items()},
                              found.inplace, found.pair, found.what))
            if made is None:
                continue
            fn, args = made
            new = graph.call_function(fn, args)
        if found.pair:
            for user in list(node.users):
                item = user.args[1] if user.op == "call_function" and getattr(
                    user.target, "__name__", "") == "getitem" else None
                if item == 0 or (item == 1 and not user.users):  # values, unused indices
                    user.replace_all_uses_with(new)
                    graph.erase_node(user)
                else:
                    raise InputError(f"{purpose} cannot smooth {found.what}: the model "
                                     "uses the indices of its maxima")
        else:
            node.replace_all_uses_with(new)
        if found.inplace and isinstance(found.inputs[0], torch.fx.Node):
            for user in list(found.inputs[0].users):  # later readers of the overwritten x
                if user is not new and order.get(user, -1) > order[node]:
                    user.replace_input_with(found.inputs[0], new)
        graph.erase_node(node)
        done.append(f"{KINDS[found.kind]} ({found.what})")
    if done:
        for node in graph.nodes:  # shapes recorded by torch.export no longer hold
            if node.op != "placeholder":
                node.meta.pop("val", None)
                node.meta.pop("tensor_meta", None)
        graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return sorted(set(done))


def _rewritten(model: nn.Module, rule: Rule, example: Tensor | None,
               purpose: str) -> tuple[nn.Module, list[str]]:
    """``model`` with ``rule`` applied to its graph (behind its normalisation, if any)."""
    if isinstance(model, Normalized):
        inner, done = _rewritten(model.model, rule, example, purpose)
        mean, std = model.get_buffer("mean"), model.get_buffer("std")
        outer = Normalized(inner, mean.clone(), std.clone())
        return outer.train(model.training), done
    if isinstance(model, StaticBatch):  # the exported graph itself, on its own batch size
        inner_example = None if example is None else example[:1].expand(
            model.batch, *example.shape[1:])
        inner, done = _rewritten(model.model, rule, inner_example, purpose)
        return StaticBatch(inner, model.batch, model.row_shape, model.reason), done
    gm = _to_graph(model, example, purpose)
    done = _rewrite(gm, rule, purpose)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            gm.eval()
        except NotImplementedError:
            pass
    return gm, done


def _check(model: nn.Module, example: Tensor, rule: Rule, purpose: str) -> None:
    """The rewrite with torch's own operations in place of the replacements must give the
    model's output on ``example``: reading the graph lost nothing."""
    exact, _ = _rewritten(model, rule, example, purpose)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want, got = model(example), exact(example)
    scale = float(want.abs().max()) + 1.0
    if got.shape != want.shape or float((got - want).abs().max()) > 1e-5 * scale:
        raise InputError(f"{purpose} could not rewrite this model's graph faithfully (its "
                         "rewritten graph does not reproduce the model's output): export "
                         "it with torch.export and pass the .pt2 archive")


def beta_smooth(model: nn.Module, beta: float, example: Tensor | None = None) -> nn.Module:
    """A copy of ``model`` whose ReLUs are ``softplus_beta`` (Dombrowski et al. 2019), its
    relatives smoothed through their ReLU identities (:mod:`.smooth_ops`: LeakyReLU,
    PReLU, ReLU6, Hardtanh, clamp, maximum, minimum, Hardsigmoid, Hardswish; max-pooling
    by each window's ``LSE_beta``). ``model`` is left as it was (and returned as it is when
    ``example`` shows nothing to smooth).

    With ``example`` (one batch of inputs), the rewrite is checked (module docstring) and
    an operation that is still not twice differentiable is refused by name.

    Raises:
        InputError: ``beta`` is not a positive finite number, the model cannot be read as
            a graph, or it holds an operation that cannot be smoothed.
    """
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise InputError(f"--beta-smooth {beta!r}: give a positive number, e.g. 10")
    purpose = "--beta-smooth"
    if example is not None and not find_nonsmooth(model, example):
        return model  # nothing to smooth
    smoothed, _ = _rewritten(model, _smooth_rule(float(beta)), example, purpose)
    if example is None:
        return smoothed
    _check(model, example, _exact_rule, purpose)
    left = find_nonsmooth(smoothed, example)
    if left:
        raise InputError(f"--beta-smooth cannot smooth {', '.join(left)}: it smooths "
                         f"{', '.join(SMOOTHABLE)}; replace the others by smooth operations")
    return smoothed


def differentiable_hard(model: nn.Module, example: Tensor) -> nn.Module:
    """A copy of ``model`` whose Hardsigmoids are rewritten into a form that autograd
    differentiates twice (:func:`~.smooth_ops.hardsigmoid_twice`: the same values and
    first derivatives; ``aten.hardsigmoid_backward`` has no derivative): their second
    derivative is 0 almost everywhere, which is what the attribution's Jacobian then uses.
    The copy still reports them as not twice differentiable
    (:func:`attrcert.smoothness.find_nonsmooth` reads their names from it).

    Raises:
        InputError: the model cannot be read as a graph, or the rewrite changed its output.
    """
    purpose = "attrcert (rewriting Hardsigmoid)"
    before = [name for name in find_nonsmooth(model, example)
              if name.startswith("Hardsigmoid")]
    out, done = _rewritten(model, _hard_rule, example, purpose)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want, got = model(example), out(example)
    if got.shape != want.shape or not torch.equal(got, want):
        scale = float(want.abs().max()) + 1.0
        if got.shape != want.shape or float((got - want).abs().max()) > 1e-5 * scale:
            raise InputError(f"{purpose}: the rewritten graph does not reproduce the "
                             "model's output")
    if done:
        setattr(out, REWRITTEN_ATTR, tuple(before))
    return out
