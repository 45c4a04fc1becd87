"""The quantities at the centre that the telescoped cross terms need (:mod:`.telescope`),
and the Softplus twin's masks decided before any pass that uses them.

The twin (:mod:`.enclosures`) must be one function for the point pass and for every piece
of the ball, so when the point pass comes first its masks come from a cheap interval pass
over the whole ball: a unit is the identity where the interval of torch's pre-activation
lies above the threshold (plain interval arithmetic, the layers affine in ``x`` exactly:
``z(x) +- eps ||row(A)||_q``). That interval contains torch's every value on the ball, so the
twin equals torch's function on those units; the gap covers the others.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .enclosures import CR, backward, enclose, exact_nodes
from .intervals import SUM_REL, TINY, intersect, mul, to_cr, to_lohi
from .nodes import ACT, ADD, AFFINE, CAT, INPUT, MUL, Graph, affine_cr
from .telescope import Telescope


def _values(node_kind: str, node: object, ins: list[CR]) -> CR:
    """One node's value enclosure from its inputs' (torch's function: both branches of a
    Softplus threshold)."""
    if node_kind == AFFINE:
        return affine_cr(node.affine, *ins[0])  # type: ignore[attr-defined]
    if node_kind == ADD:
        c = ins[0][0] + node.sign * ins[1][0]  # type: ignore[attr-defined]
        r = ins[0][1] + abs(node.sign) * ins[1][1]  # type: ignore[attr-defined]
        return c, r * (1.0 + SUM_REL) + SUM_REL * c.abs() + TINY
    if node_kind == MUL:
        return to_cr(*mul(*to_lohi(*ins[0]), *to_lohi(*ins[1])))
    if node_kind == CAT:
        return tuple(torch.cat([v[k] for v in ins], node.dim + 1)  # type: ignore[attr-defined, return-value]
                     for k in (0, 1))
    return to_cr(*node.act.range(0, *to_lohi(*ins[0])))  # type: ignore[attr-defined]


def cheap_masks(graph: Graph, x0: Tensor, radius: Tensor, q: float,
                fixed: dict[int, CR]) -> dict[int, Tensor]:
    """Per thresholded activation, the units whose pre-activation is above the threshold
    everywhere on the ball ``(P, *shape)`` (see the module docstring)."""
    box: list[CR] = []
    pt: list[CR] = []
    masks: dict[int, Tensor] = {}
    n_p = x0.shape[0]
    for i, node in enumerate(graph.nodes):
        ins = node.inputs
        if node.kind == INPUT:
            box.append((x0, radius.view(n_p, *([1] * (x0.ndim - 1))).expand_as(x0).clone()))
            pt.append((x0, torch.zeros_like(x0)))
            continue
        if node.kind == ACT:
            act = node.act
            assert act is not None
            if act.threshold is not None:
                masks[i] = to_lohi(*box[ins[0]])[0] > act.threshold
        box.append(_values(node.kind, node, [box[j] for j in ins]))
        pt.append(_values(node.kind, node, [pt[j] for j in ins]))
        if i in fixed:  # affine in x: the exact mean-value form z(x0) +- eps ||row(A)||_q
            tc, tr = fixed[i]
            norm = tc.abs().sum(1) if q == 1.0 else torch.sqrt((tc * tc).sum(1))
            spread = radius.view(n_p, *([1] * (norm.ndim - 1))) \
                * ((norm + tr.abs().sum(1)) * (1.0 + SUM_REL) + TINY)
            box[i] = to_cr(*intersect(to_lohi(*box[i]), to_lohi(pt[i][0], pt[i][1] + spread)))
    return masks


def telescope_at(graph: Graph, pats: list[Tensor], x: Tensor, q: float, target: int,
                 fixed: dict[int, CR], masks: dict[int, Tensor] | None,
                 ups: dict[int, list[int]]) -> Telescope:
    """``J_k(x)`` and ``L_{k<-l}(x)`` (:class:`.telescope.Telescope`) at the centre ``x``
    ``(1, *in_shape)``, enclosed (a point pass with tangents, then one backward pass seeded
    with the identity at each ``k``)."""
    zero = torch.zeros(1, dtype=torch.float64)
    enc = enclose(graph, pats, x, zero, q, target, twin=masks, fixed=fixed, keep=True)
    assert enc.boxes is not None and enc.tangents is not None
    d = x[0].numel()
    jx: dict[int, CR] = {}
    lmat: dict[tuple[int, int], CR] = {}
    exact = exact_nodes(graph)
    for k, acts in ups.items():
        tc, tr = enc.tangents[k]
        jx[k] = (tc[0].reshape(d, -1), tr[0].reshape(d, -1))
        shape = graph.nodes[k].shape
        n = int(torch.Size(shape).numel())
        eye = torch.eye(n, dtype=torch.float64, device=x.device).view(n, *shape)
        adj = backward(graph, enc.boxes, [None] * len(graph.nodes), eye, exact, None, None,
                       None, masks, start=k)
        for a in acts:
            assert graph.nodes[a].kind == ACT
            lc, lr = adj[a]
            lmat[(k, a)] = (lc.reshape(n, -1), lr.reshape(n, -1))
    acts = {a for above in ups.values() for a in above}
    return Telescope(jx, lmat, ups, {a: fixed[graph.nodes[a].inputs[0]] for a in acts
                                     if graph.nodes[a].inputs[0] in fixed})
