"""Enclosures of ``G = grad f_y`` (and the Hessian terms) over balls: the passes through the graph.

For ``P`` pieces at once (centres ``x0`` ``(P, *in_shape)``, radii ``(P,)``, ``|delta_i| <=
radius`` and ``||delta||_p <= radius`` with ``q`` the dual norm), in float64 with outward
rounding (:mod:`.intervals`):

- forward: every node's value over the point (rounding only) and over the ball (interval
  arithmetic: Rump's rule for affine maps, corner products for ``mul``, the proved ranges of
  :mod:`.activations`), and its Jacobian enclosure ``[J_v] = Jc +- Jr`` ``(P, d, *shape)``
  (``A [J]``, ``[J_a] + s [J_b]``, ``diag([b]) [J_a] + diag([a]) [J_b]``,
  ``diag([sigma'(z)]) [J]``). The ball interval of a node that feeds an activation or a
  product is intersected with the mean-value form ``z_v(x0) +- radius ||row([J_v])||_q``;
- backward: the adjoints ``u_v = d f_y / d z_v`` over the ball and at the point
  (``A^T u``, ``u`` to both addends, ``u * [b]`` and ``u * [a]`` for a product,
  ``[sigma'] u``), and the Hessian terms (:mod:`.hessian`): ``[J_z]^T diag([u sigma''])
  [J_z]`` per activation, ``[J_a]^T diag([u]) [J_b]`` and its transpose per product.

``twin``: enclose the twin ``f_s`` instead of torch's ``f``: every thresholded Softplus
replaced, unit by unit, by the identity where ``twin[node]`` (the units whose ball interval
lies above the threshold, where torch's function is the identity) and by its smooth closed
form elsewhere; ``f_s`` is twice differentiable, so the mean-value theorem applies to it.
Without it the pass returns those masks (``above``) and, with ``gap``, ``|G - G_s|`` over
the ball and at the centre (:func:`.propagation.gap_error`); ``rounding`` adds torch's
rounding (:func:`.propagation.rounding_error`, input errors ``e0 = (ball, point)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import InputError
from .activations import slope_deviation
from .activations import twin_range as _twin_range
from .hessian import HessianSum
from .intervals import REL, SUM_REL, TINY, intersect, mul, mul_cr, to_cr, to_lohi
from .margin import margin_lower
from .nodes import ACT, ADD, AFFINE, CAT, INPUT, MUL, Graph, Node, affine_cr, affine_t_cr
from .propagation import (
    ErrorModel,
    backward_errors,
    forward_errors,
    forward_step,
    rounding_error,
)
from .rounding import Rounding
from .telescope import Telescope, cross, row_bounds

CR = tuple[Tensor, Tensor]


@dataclass
class Enclosure:
    """Per piece: ``grad``/``grad0`` ``(lo, hi)`` ``(P, d)`` of ``G`` over the ball and at the
    centre; ``mvt_ok``: no Softplus threshold inside a ball interval (or the twin was
    enclosed); ``above``: per thresholded activation node, the mask of units above the
    threshold over the whole ball; ``gap``/``gap0``: bounds on ``|G - G_s|``; ``round_ball``/
    ``round_point``: bounds on torch's rounding ``|G_hat - G|``; ``margin`` ``(P, k)`` (with
    ``rounding``): lower bounds on torch's ``f_y - f_j`` over each ball (:mod:`.margin`)."""

    grad: tuple[Tensor, Tensor]
    grad0: tuple[Tensor, Tensor]
    mvt_ok: bool = True
    above: dict[int, Tensor] = field(default_factory=dict)
    gap: Tensor | None = None
    gap0: Tensor | None = None
    round_ball: Tensor | None = None
    round_point: Tensor | None = None
    boxes: list[tuple[Tensor, Tensor]] | None = None
    ball: list[tuple[Tensor, Tensor]] | None = None
    tangents: dict[int, tuple[Tensor, Tensor]] | None = None
    margin: Tensor | None = None


def _tmul(s: tuple[Tensor, Tensor], tan: CR, pad: Tensor) -> CR:
    """``diag([s]) [J]`` for tangents ``(P, d, *shape)`` (midpoint-radius, Rump)."""
    sc, sr = to_cr(*s)
    sc, sr = sc.unsqueeze(1), sr.unsqueeze(1)
    tc, tr = tan
    m = sc.abs() * tr + sr * (tc.abs() + tr)
    c = sc * tc
    return c, m + REL * (c.abs() + m) + pad


def _sum(a: CR, b: CR, s: float = 1.0, pad: Tensor | float = TINY) -> CR:
    """``[a] + s [b]``, rounded."""
    c = a[0] + s * b[0]
    r = a[1] + abs(s) * b[1]
    return c, r + REL * (a[0].abs() + abs(s) * b[0].abs() + r) + pad


def _rownorm(tc: Tensor, q: float) -> Tensor:
    """``||column||_q`` of tangents ``(P, d, *shape)`` over the ``d`` axis, rounded up."""
    norm = tc.abs().sum(1) if q == 1.0 else torch.sqrt((tc * tc).sum(1))
    return norm * (1.0 + SUM_REL) + TINY


def exact_nodes(graph: Graph) -> list[bool]:
    """Whether each node is affine in ``x`` (only affine maps, sums and concatenations
    above it): its ``[J]`` is exact and the same at every point."""
    out: list[bool] = []
    for node in graph.nodes:
        out.append(node.kind == INPUT or (node.kind in (AFFINE, ADD, CAT)
                                          and all(out[j] for j in node.inputs)))
    return out


def fixed_tangents(graph: Graph, pats: list[Tensor], x0: Tensor) -> dict[int, CR]:
    """The tangents ``(1, d, *shape)`` of the nodes affine in ``x`` (:func:`exact_nodes`):
    the same for every centre and radius, so computed once per model."""
    exact = exact_nodes(graph)
    d = x0[0].numel()
    tan: list[CR | None] = []
    out: dict[int, CR] = {}
    for i, node in enumerate(graph.nodes):
        if not exact[i]:
            tan.append(None)
            continue
        pad = TINY * pats[i].to(torch.float64).unsqueeze(0)
        t = _tangent(node, i, tan, [], pad, 1, d, x0[:1].to(torch.float64), None, None)
        tan.append(t)
        out[i] = (t[0].contiguous(), t[1].contiguous())
    return out


def enclose(graph: Graph, pats: list[Tensor], x0: Tensor, radius: Tensor, q: float,
            target: int, *, hessian: HessianSum | None = None, h: Tensor | None = None,
            t: Tensor | None = None, twin: dict[int, Tensor] | None = None,
            rounding: Rounding | None = None, e0: tuple[Tensor, Tensor] | None = None,
            fixed: dict[int, CR] | None = None, gap: bool = False,
            tel: Telescope | None = None, keep: bool = False) -> Enclosure:
    """The passes of the module docstring for the pieces ``x0`` ``(P, *in_shape)``, ``radius``
    ``(P,)``; ``hessian`` accumulates ``sum_p h_p Hess f_s`` (``t``: the weights of its ``A``).

    ``twin`` None: decide the twin here (``above`` in the result), from the bound ``dz`` on
    ``|z - z_s|`` of each activation's input, computed node by node
    (:func:`.propagation.forward_step`): a unit is the identity if ``lo - dz`` is above the
    threshold, and ``gap``/``gap0`` then bound ``|G - G_s|``; torch's values lie within ``dz``
    of the twin's and its adjoints within the backward bounds, which is what ``rounding``
    uses. With ``twin`` given, ``gap`` still asks for those bounds (the units not marked
    identity whose interval reaches the threshold). ``fixed``: the tangents of nodes affine
    in ``x`` (the same for every piece); ``tel``: the point quantities of the telescoped
    cross terms (:mod:`.telescope`); ``keep``: return the point boxes and the tangents of
    the activations' inputs (for :func:`.pointpass.telescope_at`)."""
    dt = torch.float64
    x0 = x0.to(dt)
    n_p, d = x0.shape[0], x0[0].numel()
    nodes = graph.nodes
    exact = exact_nodes(graph)
    need = [any(nodes[u].kind in (ACT, MUL) for u in graph.users[i])
            for i in range(len(nodes))]
    positive = bool((radius > 0).any())
    tangents = hessian is not None or positive or keep
    thr = any(n.act is not None and n.act.threshold is not None for n in nodes)
    decide = twin is None and thr
    track = thr and (decide or gap)
    masks: dict[int, Tensor] = {} if twin is None else twin
    gaps, gaps0 = ErrorModel(), ErrorModel()
    dz: list[Tensor] = []
    dz0: list[Tensor] = []
    blo: list[tuple[Tensor, Tensor]] = []
    tcache: dict = {}  # the telescope's second factors, for this batch of pieces
    pts: list[tuple[Tensor, Tensor]] = []
    pt: list[CR] = []
    box: list[CR] = []
    tan: list[CR | None] = []
    for i, node in enumerate(nodes):
        pad = TINY * pats[i].to(dt).unsqueeze(0) if tangents else TINY
        ins = node.inputs
        if node.kind == INPUT:
            pt.append((x0, torch.zeros_like(x0)))
            box.append((x0, radius.to(dt).view(n_p, *([1] * (x0.ndim - 1)))
                        .expand_as(x0).clone()))
        elif node.kind == AFFINE:
            assert node.affine is not None
            pt.append(affine_cr(node.affine, *pt[ins[0]]))
            box.append(affine_cr(node.affine, *box[ins[0]]))
        elif node.kind == ADD:
            pt.append(_sum(pt[ins[0]], pt[ins[1]], node.sign))
            box.append(_sum(box[ins[0]], box[ins[1]], node.sign))
        elif node.kind == MUL:
            pt.append(to_cr(*mul(*to_lohi(*pt[ins[0]]), *to_lohi(*pt[ins[1]]))))
            box.append(to_cr(*mul(*to_lohi(*box[ins[0]]), *to_lohi(*box[ins[1]]))))
        elif node.kind == CAT:
            pt.append(tuple(torch.cat([pt[j][k] for j in ins], node.dim + 1)
                            for k in (0, 1)))  # type: ignore[arg-type]
            box.append(tuple(torch.cat([box[j][k] for j in ins], node.dim + 1)
                             for k in (0, 1)))  # type: ignore[arg-type]
        else:
            act = node.act
            assert act is not None
            lo, hi = to_lohi(*box[ins[0]])
            plo, phi = to_lohi(*pt[ins[0]])
            if track and act.threshold is not None:  # torch's z is within dz of the twin's
                wide = dz[ins[0]]
                if decide:
                    masks[i] = lo - wide > act.threshold
                gaps.straddle[i] = (~masks[i] & (hi + wide >= act.threshold)).to(dt)
                gaps0.straddle[i] = (~masks[i] & (phi + dz0[ins[0]] >= act.threshold)).to(dt)
            mask = masks.get(i)
            pt.append(to_cr(*_twin_range(act, 0, plo, phi, mask)))
            box.append(to_cr(*_twin_range(act, 0, lo, hi, mask)))
        if tangents:
            tan.append(_tangent(node, i, tan, box, pad, n_p, d, x0, fixed, masks.get(i)))
            if need[i] and positive:
                tc, tr = tan[i]  # type: ignore[misc]
                spread = radius.to(dt).view(n_p, *([1] * (tc.ndim - 2))) \
                    * (_rownorm(tc, q) + _rownorm(tr, q))
                box[i] = to_cr(*intersect(to_lohi(*box[i]), to_lohi(
                    pt[i][0], pt[i][1] + spread * (1.0 + SUM_REL))))
                if tel is not None and i in tel.jx and q == 2.0:  # the telescoped rows
                    ups = tel.ups[i]
                    rows = row_bounds(tel, i, {a: slope_deviation(
                        nodes[a].act, box[nodes[a].inputs[0]], pt[nodes[a].inputs[0]],  # type: ignore[arg-type]
                        masks.get(a)) for a in ups},
                        {a: tan[nodes[a].inputs[0]] for a in ups}, tcache)  # type: ignore[misc]
                    spread = radius.to(dt).view(n_p, 1) * rows
                    box[i] = to_cr(*intersect(to_lohi(*box[i]), to_lohi(
                        pt[i][0], pt[i][1] + (spread * (1.0 + SUM_REL)).view_as(pt[i][0]))))
            for j in ins:  # free tangents nobody needs any more
                if ((hessian is None and not keep) or not need[j]) and all(
                        u <= i for u in graph.users[j]):
                    tan[j] = None
        else:
            tan.append(None)
        if track:
            blo.append(to_lohi(*box[i]))
            pts.append(to_lohi(*pt[i]))
            if node.kind == INPUT:
                dz.append(torch.zeros_like(x0))
                dz0.append(torch.zeros_like(x0))
            else:
                dz.append(forward_step(graph, i, blo, dz, gaps))
                dz0.append(forward_step(graph, i, pts, dz0, gaps0))
    out = graph.output
    if pt[out][0].ndim != 2:
        raise InputError(f"--sound needs logits of shape (N, k), the model gives "
                         f"{tuple(pt[out][0].shape)}")
    e = torch.zeros((n_p, pt[out][0].shape[1]), dtype=dt, device=x0.device)
    e[:, target] = 1.0
    adj = backward(graph, box, tan, e, exact, hessian, h, t, masks, tel=tel, pvals=pt,
                   cache=tcache)
    adj0 = backward(graph, pt, tan, e, exact, None, None, None, masks)
    res = Enclosure(to_lohi(*(v.reshape(n_p, -1) for v in adj[0])),
                    to_lohi(*(v.reshape(n_p, -1) for v in adj0[0])), True,
                    masks if decide else {})
    if keep:
        res.boxes, res.ball = pt, box
        res.tangents = {j: tan[j] for j in range(len(nodes)) if tan[j] is not None}  # type: ignore[misc]
    if not track and rounding is None:
        return res
    lohi = [to_lohi(*b) for b in box]
    lohi0 = [to_lohi(*b) for b in pt]
    alohi = [to_lohi(*a) for a in adj]
    alohi0 = [to_lohi(*a) for a in adj0]
    if track:  # torch's values and adjoints: the twin's, widened by the gap's bounds
        du = backward_errors(graph, lohi, alohi, dz, gaps)
        du0 = backward_errors(graph, lohi0, alohi0, dz0, gaps0)
        res.gap, res.gap0 = (v[0].reshape(n_p, -1) for v in (du, du0))
        lohi, lohi0, alohi, alohi0 = (
            [(b[0] - w, b[1] + w) for b, w in zip(bs, ws, strict=True)]
            for bs, ws in ((lohi, dz), (lohi0, dz0), (alohi, du), (alohi0, du0)))
    if rounding is not None:
        zero = torch.zeros_like(x0)
        eb, ep = e0 if e0 is not None else (zero, zero)
        errs = forward_errors(graph, lohi, rounding, eb)
        res.round_ball = rounding_error(graph, lohi, alohi, rounding, eb, errs)
        res.round_point = rounding_error(graph, lohi0, alohi0, rounding, ep)
        res.margin = margin_lower(graph, pt, box, tan[out] if tangents else None,
                                  dz[out] if track else None, errs[out], radius, q, target)
    return res


def _tangent(node: Node, i: int, tan: list[CR | None], box: list[CR], pad: Tensor | float,
             n_p: int, d: int, x0: Tensor, fixed: dict[int, CR] | None,
             mask: Tensor | None) -> CR:
    """``[J]`` of node ``i`` ``(P, d, *shape)`` (module docstring), or the fixed one."""
    if fixed is not None and i in fixed:
        tc, tr = fixed[i]
        return tc.expand(n_p, *tc.shape[1:]), tr.expand(n_p, *tr.shape[1:])
    ins = node.inputs
    if node.kind == INPUT:
        eye = torch.eye(d, dtype=x0.dtype, device=x0.device).view(1, d, *x0.shape[1:])
        return eye.expand(n_p, d, *x0.shape[1:]), torch.zeros_like(eye).expand(
            n_p, d, *x0.shape[1:])
    if node.kind == AFFINE:
        assert node.affine is not None
        tc, tr = tan[ins[0]]  # type: ignore[misc]
        flat = (tc.shape[0] * d, *tc.shape[2:])
        oc, orr = affine_cr(node.affine, tc.reshape(flat), tr.reshape(flat), bias=False,
                            pad=0.0, crude=True)
        return oc.view(tc.shape[0], d, *oc.shape[1:]), orr.view(
            tc.shape[0], d, *oc.shape[1:]) + pad
    if node.kind == ADD:
        return _sum(tan[ins[0]], tan[ins[1]], node.sign, pad)  # type: ignore[arg-type]
    if node.kind == MUL:
        ja = _tmul(to_lohi(*box[ins[1]]), tan[ins[0]], pad)  # type: ignore[arg-type]
        jb = _tmul(to_lohi(*box[ins[0]]), tan[ins[1]], pad)  # type: ignore[arg-type]
        return _sum(ja, jb, 1.0, pad)
    if node.kind == CAT:
        return tuple(torch.cat([tan[j][k] for j in ins], node.dim + 2)  # type: ignore[index, return-value]
                     for k in (0, 1))
    assert node.act is not None
    return _tmul(_twin_range(node.act, 1, *to_lohi(*box[ins[0]]), mask),
                 tan[ins[0]], pad)  # type: ignore[arg-type]


def backward(graph: Graph, vals: list[CR], tan: list[CR | None], seed: Tensor,
             exact: list[bool], hessian: HessianSum | None, h: Tensor | None,
             t: Tensor | None, twin: dict[int, Tensor] | None, *, start: int | None = None,
             tel: Telescope | None = None, pvals: list[CR] | None = None,
             cache: dict | None = None) -> list[CR]:
    """The adjoints of every node over the enclosures ``vals`` (and the Hessian terms),
    seeded with ``seed`` at node ``start`` (the output by default)."""
    nodes = graph.nodes
    adj: list[CR | None] = [None] * len(nodes)
    adj[graph.output if start is None else start] = (seed, torch.zeros_like(seed))
    cache = {} if cache is None else cache  # the telescope's second factors

    def put(j: int, v: CR) -> None:
        old = adj[j]
        adj[j] = v if old is None else _sum(old, v)

    for i in range(len(nodes) - 1, 0, -1):
        node, ui = nodes[i], adj[i]
        if ui is None:
            continue
        ins = node.inputs
        if node.kind == AFFINE:
            assert node.affine is not None
            if not node.affine.stop:  # a stop-gradient passes no adjoint
                put(ins[0], affine_t_cr(node.affine, *ui))
        elif node.kind == ADD:
            put(ins[0], ui)
            put(ins[1], (node.sign * ui[0], abs(node.sign) * ui[1]
                         + REL * (node.sign * ui[0]).abs()))
        elif node.kind == MUL:
            (a_lo, a_hi), (b_lo, b_hi) = (to_lohi(*vals[j]) for j in ins)
            if hessian is not None:
                assert h is not None
                wc, wr = (v.reshape(v.shape[0], -1) for v in ui)
                ta, tb = tan[ins[0]], tan[ins[1]]
                assert ta is not None and tb is not None
                hessian.add_pair(_flat(ta), _flat(tb), (wc, wr), h, t)
            put(ins[0], mul_cr(b_lo, b_hi, *ui))
            put(ins[1], mul_cr(a_lo, a_hi, *ui))
        elif node.kind == CAT:
            sizes = [nodes[j].shape[node.dim] for j in ins]
            for j, c, r in zip(ins, ui[0].split(sizes, node.dim + 1),
                               ui[1].split(sizes, node.dim + 1), strict=True):
                put(j, (c, r))
        else:
            act = node.act
            assert act is not None
            lo, hi = to_lohi(*vals[ins[0]])
            mask = twin.get(i) if twin is not None else None
            if hessian is not None:
                assert h is not None
                wc, wr = to_cr(*mul(*to_lohi(*ui), *_twin_range(act, 2, lo, hi, mask)))
                tj = tan[ins[0]]
                assert tj is not None
                wc, wr = wc.reshape(wc.shape[0], -1), wr.reshape(wr.shape[0], -1)
                centre = spec = None
                if tel is not None and ins[0] in tel.jx and not exact[ins[0]]:
                    assert pvals is not None
                    centre = tel.jx[ins[0]]
                    spec = cross(tel, ins[0], wc.abs() + wr,
                                 {a: slope_deviation(nodes[a].act, vals[nodes[a].inputs[0]],  # type: ignore[arg-type]
                                                pvals[nodes[a].inputs[0]], twin.get(a)
                                                if twin is not None else None)
                                  for a in tel.ups[ins[0]]},
                                 {a: tan[nodes[a].inputs[0]] for a in tel.ups[ins[0]]},  # type: ignore[misc]
                                 cache)
                hessian.add(ins[0], _flat(tj), (wc, wr), h, t, exact[ins[0]], centre=centre,
                            cross=spec)
            put(ins[0], mul_cr(*_twin_range(act, 1, lo, hi, mask), *ui))
    return [a if a is not None else (torch.zeros_like(v[0]), torch.zeros_like(v[0]))
            for a, v in zip(adj, vals, strict=True)]


def _flat(t: CR) -> CR:
    return t[0].reshape(t[0].shape[0], t[0].shape[1], -1), \
        t[1].reshape(t[1].shape[0], t[1].shape[1], -1)
