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

from .enclosures import CR, Balls, PassOptions, backward, enclose
from .intervals import SUM_REL, TINY, intersect, to_cr, to_lohi
from .nodes import Graph
from .telescope import Telescope


def cheap_masks(graph: Graph, balls: Balls, fixed: dict[int, CR]) -> dict[int, Tensor]:
    """Per thresholded activation, the units whose pre-activation is above the threshold
    everywhere on the ball ``(P, *shape)`` (see the module docstring): every operator's
    enclosure of torch's function (both branches of a threshold)."""
    box: list[CR] = []
    pt: list[CR] = []
    masks: dict[int, Tensor] = {}
    x0, radius = balls.centres, balls.radii
    n_p = x0.shape[0]
    for i, node in enumerate(graph.nodes):
        ins = node.inputs
        if not ins:
            box.append((x0, radius.view(n_p, *([1] * (x0.ndim - 1))).expand_as(x0).clone()))
            pt.append((x0, torch.zeros_like(x0)))
            continue
        thr = node.threshold
        if thr is not None:
            masks[i] = to_lohi(*box[ins[0]])[0] > thr
        box.append(node.enclose([box[j] for j in ins], None))
        pt.append(node.enclose([pt[j] for j in ins], None))
        if i in fixed:  # affine in x: the exact mean-value form z(x0) +- eps ||row(A)||_q
            tc, tr = fixed[i]
            norm = tc.abs().sum(1) if balls.dual == 1.0 else torch.sqrt((tc * tc).sum(1))
            spread = radius.view(n_p, *([1] * (norm.ndim - 1))) \
                * ((norm + tr.abs().sum(1)) * (1.0 + SUM_REL) + TINY)
            box[i] = to_cr(*intersect(to_lohi(*box[i]), to_lohi(pt[i][0], pt[i][1] + spread)))
    return masks


def telescope_at(graph: Graph, centre: Tensor, dual: float, target: int,
                 ups: dict[int, list[int]], options: PassOptions) -> Telescope:
    """``J_k(x)`` and ``L_{k<-l}(x)`` (:class:`.telescope.Telescope`) at the centre ``x``
    ``(1, *in_shape)``, enclosed (a point pass with tangents, with the twin and fixed
    tangents of ``options``, then one backward pass seeded with the identity at each ``k``)."""
    zero = torch.zeros(1, dtype=torch.float64)
    enc = enclose(graph, Balls(centre, zero, dual), target,
                  PassOptions(twin=options.twin, fixed=options.fixed, keep=True))
    assert enc.point is not None and enc.tangents is not None
    fixed = options.fixed or {}
    d = centre[0].numel()
    jx: dict[int, CR] = {}
    lmat: dict[tuple[int, int], CR] = {}
    for k, acts in ups.items():
        tc, tr = enc.tangents[k]
        jx[k] = (tc[0].reshape(d, -1), tr[0].reshape(d, -1))
        shape = graph.nodes[k].shape
        n = int(torch.Size(shape).numel())
        eye = torch.eye(n, dtype=torch.float64, device=centre.device).view(n, *shape)
        adj = backward(graph, enc.point, eye, twin=options.twin, start=k)
        for a in acts:
            lc, lr = adj[a]
            lmat[(k, a)] = (lc.reshape(n, -1), lr.reshape(n, -1))
    every = {a for above in ups.values() for a in above}
    return Telescope(jx, lmat, ups, {a: fixed[graph.nodes[a].inputs[0]] for a in every
                                     if graph.nodes[a].inputs[0] in fixed})
