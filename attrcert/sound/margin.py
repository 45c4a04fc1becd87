"""A proved label certificate: a lower bound on the worst margin over the ball.

For the class ``y`` and every other class ``j``, ``L_j`` bounds from below
``min_{x' in ball} (f_y(x') - f_j(x'))`` as torch computes the logits (in the model's
precision, at the float point of ``x'``), from the enclosures of one pass of
:func:`.enclosures.enclose`; the margin ``min_j L_j > 0`` proves that the label stays ``y``
on the whole ball. Each difference is enclosed directly, not as two separate logits:

- interval: when the logits are an affine map ``W a + b`` of the node ``a`` before them,
  ``(W_y - W_j) [a] + (b_y - b_j)`` over ``a``'s ball enclosure (Rump's midpoint-radius
  rule on the row difference, which cancels what the two rows share); else
  ``lo_y - hi_j`` of the logits' enclosure;
- mean value: ``d_j(x') = d_j(x) + grad d_j(xi) . (x' - x)`` with ``grad d_j`` in
  ``[J_y] - [J_j]`` (the logits' Jacobian enclosure over the ball), so
  ``d_j(x') >= lo(d_j(x)) - radius ||row||_q``, ``q`` the dual norm.

The larger of the two lower bounds holds for the pass's function (the Softplus twin of
:mod:`.enclosures` where the graph has thresholds); torch's exact logits lie within ``dz``
of the twin's (:func:`.propagation.forward_step`), and torch's computed ones within the
forward rounding error ``e`` of :func:`.propagation.forward_errors`, so
``L_j = max(interval, mean value) - dz_y - dz_j - e_y - e_j``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .intervals import REL, SUM_REL, TINY, to_lohi
from .nodes import Graph
from .operators import CR, Affine
from .operators.affine import transpose


def _rows(graph: Graph) -> tuple[Tensor, Tensor, int] | None:
    """``W`` ``(k, n)`` and ``b`` ``(k,)`` of the logits ``W a + b`` and the index of ``a``,
    when the output node is an affine map (not a stop-gradient)."""
    a = graph.nodes[graph.output]
    if not isinstance(a, Affine) or a.stops_gradient or len(a.shape) != 1:
        return None
    k = a.shape[0]
    eye = torch.eye(k, dtype=torch.float64)
    w = transpose(a.lin, eye, a.in_shape).reshape(k, -1)  # exact: rows times 0/1
    b = torch.zeros(k, dtype=torch.float64) if a.bias is None else a.bias.reshape(-1)
    return w, b, a.inputs[0]


def _interval(graph: Graph, box: list[CR], y: int) -> Tensor:
    """``(P, k)`` lower bounds on ``f_y - f_j`` over the ball, interval form."""
    rows = _rows(graph)
    if rows is None:
        lo, hi = to_lohi(*box[graph.output])
        low = lo[:, y:y + 1] - hi
        return low - REL * low.abs() - TINY
    w, b, src = rows
    c, r = (t.reshape(t.shape[0], -1) for t in box[src])
    wd, bd = w[y:y + 1] - w, b[y] - b  # (k, n), (k,): rounded, covered by mag below
    wsum = w[y:y + 1].abs() + w.abs()
    centre = c @ wd.T + bd
    mag = (c.abs() + r) @ wsum.T + b[y].abs() + b.abs()
    rad = r @ wd.abs().T
    return centre - rad - SUM_REL * (mag + rad) - TINY


def _mean_value(point: CR, tan: CR, radius: Tensor, q: float, y: int) -> Tensor:
    """``(P, k)`` lower bounds on ``f_y - f_j`` over the ball, mean-value form: the
    difference at the centre minus ``radius ||[J_y] - [J_j]||_q``."""
    lo, hi = to_lohi(*point)
    at_x = lo[:, y:y + 1] - hi
    tc, tr = tan  # (P, d, k)
    dc = tc[..., y:y + 1] - tc
    dr = tr[..., y:y + 1] + tr + REL * (tc[..., y:y + 1].abs() + tc.abs())
    if q == 1.0:
        norm = dc.abs().sum(1) + dr.sum(1)
    else:
        norm = torch.sqrt((dc * dc).sum(1)) + torch.sqrt((dr * dr).sum(1))
    spread = radius.view(-1, 1) * norm * (1.0 + SUM_REL) + TINY
    return at_x - REL * at_x.abs() - spread * (1.0 + REL) - TINY


def margin_lower(graph: Graph, point: list[CR], ball: list[CR], radii: Tensor, dual: float,
                 y: int, *, logits_tangent: CR | None,
                 widen: list[Tensor | None]) -> Tensor:
    """``(P, k)``: ``L_j`` of the module docstring for each ball (``+inf`` at ``j = y``), from
    the pass's point and ball enclosures (every node), the balls' radii and dual norm, the
    logits' Jacobian enclosure (``None``: interval form only), and the bounds ``(P, k)`` on
    how far torch's logits lie from the pass's (the twin's gap, the rounding; ``None``: 0)."""
    low = _interval(graph, ball, y)
    if logits_tangent is not None:
        low = torch.maximum(low, _mean_value(point[graph.output], logits_tangent, radii, dual,
                                             y))
    for extra in widen:
        if extra is not None:
            e = extra.reshape(extra.shape[0], -1)
            low = low - (e[:, y:y + 1] + e) * (1.0 + REL) - TINY
    low[:, y] = math.inf
    return low
