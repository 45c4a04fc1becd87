"""Error propagation through the graph: the rounding term and the Softplus-twin gap.

Both bound ``|G_hat - G|``, the distance between two gradients of ``f_y`` computed by the same
graph, from the enclosures of every node's value ``z`` and adjoint ``u = d f_y / d z`` over a
ball (``boxes``, ``adjoints``: ``(lo, hi)`` per node, batched over pieces). A forward pass
bounds ``e >= |z_hat - z|`` per node, a backward pass ``f >= |u_hat - u|``: each operator
says how its inputs' bounds propagate through it and what it injects
(:meth:`.operators.Operator.forward_error`, :meth:`~.operators.Operator.backward_error`);
a node with ``k > 1`` users sums their contributions (``gamma_{k-1}`` of their magnitudes,
Higham, Lemma 3.1).

The forward pass runs node by node (:func:`forward_step`), so that :func:`.enclosures.enclose`
can decide the twin of each thresholded Softplus from the errors above it.

:func:`rounding_error` (torch's arithmetic in the model's precision, unit roundoff ``u``,
against the exact function at a point within ``e0`` of the computed one): ``gamma_n`` per dot
product of ``n`` terms, one rounding ``u |result|`` per sum and product, the activation
kernels' assumed accuracy (:class:`.activations.Activation`). The gap (torch's function
against the twin of :func:`.enclosures.enclose`, at the same point, :class:`.rounding.ErrorModel`
without rounding): ``e0 = 0`` and the jumps on the units ``straddle`` marks, where the twin
is the smooth closed form and torch may be the identity; the magnitudes are the twin's (the
bounds above hold with either function's).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .intervals import REL, TINY, magnitude
from .nodes import Graph
from .operators import Box
from .rounding import ErrorModel, Rounding


def forward_step(graph: Graph, i: int, boxes: list[Box], errs: list[Tensor],
                 model: ErrorModel) -> Tensor:
    """``e`` of node ``i`` (``> 0``) from its inputs' boxes and errors."""
    node = graph.nodes[i]
    e = node.forward_error([boxes[j] for j in node.inputs], [errs[j] for j in node.inputs],
                           model, model.straddle.get(i))
    return e * (1.0 + REL) + TINY


def backward_errors(graph: Graph, boxes: list[Box], adjoints: list[Box], errs: list[Tensor],
                    model: ErrorModel) -> list[Tensor]:
    """``f`` of every node (the seed ``e_y`` is exact), from the forward errors ``errs``."""
    contrib: list[list[tuple[Tensor, Tensor]]] = [[] for _ in graph.nodes]
    zero = torch.zeros_like(boxes[graph.output][0])
    contrib[graph.output].append((zero, zero))
    out: list[Tensor] = [torch.zeros_like(b[0]) for b in boxes]
    for i in range(len(graph.nodes) - 1, -1, -1):
        node = graph.nodes[i]
        parts = contrib[i]
        if not parts:
            continue
        f = _total(p[0] for p in parts)
        if len(parts) > 1:  # autograd sums the users' contributions: gamma_{k-1}
            f = f + model.gamma(len(parts) - 1) * _total(p[1] for p in parts)
        out[i] = f = f * (1.0 + REL) + TINY
        if i == 0:
            break
        umag = magnitude(adjoints[i])
        shares = node.backward_error(f, umag + f, umag, [boxes[j] for j in node.inputs],
                                     [errs[j] for j in node.inputs], model,
                                     model.straddle.get(i))
        for j, share in zip(node.inputs, shares, strict=True):
            if share is not None:
                contrib[j].append(share)
    return out


def _total(terms: Iterable[Tensor]) -> Tensor:
    """The sum of the (nonempty) ``terms``, in order."""
    it = iter(terms)
    out = next(it)
    for t in it:
        out = out + t
    return out


def forward_errors(graph: Graph, boxes: list[Box], rnd: Rounding, e0: Tensor) -> list[Tensor]:
    """Bounds ``e >= |z_hat - z|`` on every node's value: torch's arithmetic at a point within
    ``e0`` of ``x'``, against the exact ``z(x')``, for every ``x'`` whose node values lie in
    ``boxes`` (the forward half of :func:`rounding_error`)."""
    model = ErrorModel(rnd)
    errs = [e0]
    for i in range(1, len(graph.nodes)):
        errs.append(forward_step(graph, i, boxes, errs, model))
    return errs


def rounding_error(graph: Graph, boxes: list[Box], adjoints: list[Box], rnd: Rounding,
                   e0: Tensor, errs: list[Tensor] | None = None) -> Tensor:
    """``(P, d)`` bounds on ``|G_hat - G|``: torch's computed gradient at a point within
    ``e0`` of ``x'``, against the exact ``G(x')``, for every ``x'`` whose node values and
    adjoints lie in ``boxes`` and ``adjoints`` (see the module docstring); ``errs``: the
    forward errors if :func:`forward_errors` already gave them."""
    if errs is None:
        errs = forward_errors(graph, boxes, rnd, e0)
    f = backward_errors(graph, boxes, adjoints, errs, ErrorModel(rnd))[0]
    return f.reshape(f.shape[0], -1)
