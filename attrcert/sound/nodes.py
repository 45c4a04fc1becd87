"""The float64 copy of the network as a directed acyclic graph of nodes.

Every node holds one value ``z_v(x)`` of per-sample shape ``shape`` (batches ``(B, *shape)``):

- ``input``: ``x`` itself;
- ``affine``: ``A z_u + b`` of one input (Linear, Conv2d, pooling, means, reshapes, eval
  BatchNorm, constant shifts and scales, broadcasting, and stop-gradients: ``Affine.stop``);
- ``act``: ``sigma(z_u)`` elementwise (Tanh, Sigmoid, Softplus, SiLU, GELU);
- ``add``: ``z_u + sign z_w`` (residual connections);
- ``mul``: ``z_u * z_w`` elementwise (gates such as squeeze-excitation), both of the node's
  shape (broadcasting is an ``affine`` expand before it);
- ``cat``: the inputs concatenated along the per-sample axis ``dim``.

Nodes are in topological order (inputs before users); ``output`` is the logits node. The
midpoint-radius rule for affine maps, ``A [c +- r]`` in ``[A c +- |A| r]`` (Rump), is
:func:`affine_cr`; ``pattern`` is the structural sparsity of ``d z_v / d x``: outside it the
Jacobian entry is exactly zero (``z_v`` does not depend on that input), so the enclosures
store exact zeros there and pad only inside it (:func:`patterns`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .activations import Activation
from .intervals import SUM_REL, TINY

INPUT, AFFINE, ACT, ADD, MUL, CAT = "input", "affine", "act", "add", "mul", "cat"


@dataclass
class Affine:
    """``t -> A t + bias`` on batches ``(B, *in_shape)``; ``lin`` is ``A t``, ``lin_abs``
    is ``|A| t`` (the same operation with its weights replaced by their absolute values).

    Rounding (:mod:`.rounding`): torch's result has at most ``fan_in`` terms per output
    (0: exact, e.g. a reshape), its transpose ``fan_out`` per input; ``bias_abs`` replaces
    ``|bias|`` in the magnitude the rounding is relative to (eval BatchNorm).

    ``stop``: a stop-gradient (``aten.detach``): the identity on values and on their
    derivatives ``d z / d x``, but autograd's backward pass (and so the attribution) passes
    no adjoint through it, so every backward pass skips it; ``lin`` detaches, so that
    :func:`forward` differentiates as torch does."""

    name: str
    lin: Callable[[Tensor], Tensor]
    lin_abs: Callable[[Tensor], Tensor]
    bias: Tensor | None
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    fan_in: int = 0
    fan_out: int = 0
    bias_abs: Tensor | None = None
    stop: bool = False


@dataclass
class Node:
    """One value of the network (see the module docstring for the kinds)."""

    kind: str
    inputs: tuple[int, ...] = ()
    affine: Affine | None = None
    act: Activation | None = None
    sign: float = 1.0
    dim: int = 0
    shape: tuple[int, ...] = ()
    name: str = ""


@dataclass
class Graph:
    """The nodes in topological order and the index of the output (logits) node."""

    nodes: list[Node]
    output: int = -1
    users: list[list[int]] = field(default_factory=list)

    def finish(self, example: Tensor) -> None:
        """Record every node's shape and every affine map's shapes (a forward pass on
        ``example``), and the users of each node."""
        values = evaluate(self, example[:1].detach().to(torch.float64))
        self.users = [[] for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            node.shape = tuple(values[i].shape[1:])
            for j in node.inputs:
                self.users[j].append(i)
            if node.affine is not None:
                node.affine.in_shape = self.nodes[node.inputs[0]].shape
                node.affine.out_shape = node.shape


def step(node: Node, args: list[Tensor]) -> Tensor:
    """The node's value from its inputs' values (batches), float64, differentiable."""
    if node.kind == AFFINE:
        assert node.affine is not None
        a = node.affine
        out = a.lin(args[0])
        return out if a.bias is None else out + a.bias
    if node.kind == ACT:
        assert node.act is not None
        return node.act.value(0, args[0])
    if node.kind == ADD:
        return args[0] + node.sign * args[1]
    if node.kind == MUL:
        return args[0] * args[1]
    if node.kind == CAT:
        return torch.cat(args, dim=node.dim + 1)
    raise AssertionError(node.kind)


def evaluate(graph: Graph, x: Tensor) -> list[Tensor]:
    """Every node's value for the batch ``x``."""
    values: list[Tensor] = []
    for node in graph.nodes:
        values.append(x if node.kind == INPUT else step(node, [values[i] for i in node.inputs]))
    return values


def forward(graph: Graph, x: Tensor) -> Tensor:
    """The network's output (float64) for ``x`` ``(B, *in_shape)``: a plain torch function,
    differentiable, used to check the reading against the model and by the tests."""
    return evaluate(graph, x)[graph.output]


def patterns(graph: Graph, d: int) -> list[Tensor]:
    """For every node, the boolean ``(d, *shape)`` structural pattern of ``d z_v / d x``:
    ``|A|`` applied to the indicator of its input's pattern for affine maps (sums of 0/1
    values, exact), unions for add, mul and the activations' own pattern, concatenation for
    cat."""
    eye = torch.eye(d, dtype=torch.float64).view(d, *graph.nodes[0].shape)
    out: list[Tensor] = []
    for node in graph.nodes:
        if node.kind == INPUT:
            out.append(eye > 0)
            continue
        ins = [out[i] for i in node.inputs]
        if node.kind == AFFINE:
            assert node.affine is not None
            out.append(node.affine.lin_abs(ins[0].to(torch.float64)) > 0)
        elif node.kind == ACT:
            out.append(ins[0])
        elif node.kind in (ADD, MUL):
            out.append(ins[0] | ins[1])
        else:
            out.append(torch.cat(ins, dim=node.dim + 1))
    return out


def affine_cr(a: Affine, c: Tensor, r: Tensor, *, bias: bool = True,
              pad: Tensor | float = TINY, crude: bool = False) -> tuple[Tensor, Tensor]:
    """``A (c +- r) + b`` enclosed: ``A c + b +- (|A| r + SUM_REL (|A| (|c| + r) + |b|) +
    pad)``. Tangents pass ``pad = TINY`` times their structural pattern (outside it every term
    is an exact zero, and so is the result) and ``crude``: the rounding's magnitude
    ``|A| (|c| + r)`` bounded by ``|A| 1`` times ``max (|c| + r)`` of each row of the batch,
    which saves one pass of ``|A|`` and changes the bound by ``1e-10`` relative at most."""
    out = a.lin(c)
    if crude:
        top = (c.abs() + r).reshape(c.shape[0], -1).amax(1)
        rows = a.lin_abs(torch.ones_like(c[:1]))
        mag = rows * top.view(-1, *([1] * (rows.ndim - 1)))
    else:
        mag = a.lin_abs(c.abs() + r)
    if bias and a.bias is not None:
        out = out + a.bias
        mag = mag + a.bias.abs()
    return out, a.lin_abs(r) + SUM_REL * mag + pad


def transpose(fn: Callable[[Tensor], Tensor], v: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """``A^T v`` for the linear map ``fn`` (one vector-Jacobian product), batched over rows."""
    z = torch.zeros((v.shape[0], *in_shape), dtype=v.dtype, device=v.device,
                    requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(fn(z), z, v)
    return grad


def has_stop(graph: Graph) -> bool:
    """Whether the graph holds a stop-gradient (:attr:`Affine.stop`): the attribution's
    Jacobian is then no Hessian of ``f_y`` (module :mod:`attrcert.sound`)."""
    return any(n.affine is not None and n.affine.stop for n in graph.nodes)


def affine_t_cr(a: Affine, c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """``A^T (c +- r)`` enclosed (the transposes of ``lin`` and ``lin_abs``)."""
    out = transpose(a.lin, c, a.in_shape)
    mag = transpose(a.lin_abs, c.abs() + r, a.in_shape)
    return out, transpose(a.lin_abs, r, a.in_shape) + SUM_REL * mag + TINY
