"""Enclosures of ``G = grad f_y`` (and the Hessian terms) over balls: the passes through the graph.

For ``P`` balls at once (:class:`Balls`: centres ``(P, *in_shape)``, radii ``(P,)``, ``|delta_i|
<= radius`` and ``||delta||_p <= radius`` with ``q`` the dual norm), in float64 with outward
rounding (:mod:`.intervals`), every operator contributing its own step
(:class:`.operators.Operator`):

- forward: every node's value over the point (rounding only) and over the ball, and its
  Jacobian enclosure ``[J_v] = Jc +- Jr`` ``(P, d, *shape)``. The ball interval of a node
  that an operator uses by value (an activation's or a product's input) is intersected with
  the mean-value form ``z_v(x0) +- radius ||row([J_v])||_q``;
- backward: the adjoints ``u_v = d f_y / d z_v`` over the ball and at the point, and the
  operators' Hessian terms (:class:`HessianPass`, :mod:`.hessian`).

The Softplus twin (:class:`PassOptions` ``twin``): every thresholded Softplus replaced, unit
by unit, by the identity on the units the mask marks (whose ball interval lies above the
threshold, where torch's function is the identity) and by its smooth closed form elsewhere;
``f_s`` is twice differentiable, so the mean-value theorem applies to it. Without a given
twin the pass decides it (``above`` in the result) and, with ``gap``, bounds ``|G - G_s|``
over the ball and at the centre (:mod:`.propagation`); ``rounding`` adds torch's rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ..errors import InputError
from .hessian import HessianSum
from .intervals import SUM_REL, TINY, intersect, to_cr, to_lohi
from .margin import margin_lower
from .nodes import Graph
from .operators import CR, Operator
from .operators.base import interval_sum
from .propagation import backward_errors, forward_errors, forward_step, rounding_error
from .rounding import ErrorModel, Rounding
from .telescope import Telescope, row_bounds
from .terms import HessianPass, slopes_above, tangents_above


@dataclass(frozen=True)
class Balls:
    """``P`` balls: ``centres`` ``(P, *in_shape)``, ``radii`` ``(P,)``, in the norm whose dual
    is ``dual`` (``1``: l-inf balls, ``2``: l2 balls)."""

    centres: Tensor
    radii: Tensor
    dual: float

    def rows(self, sl: slice) -> Balls:
        return Balls(self.centres[sl], self.radii[sl], self.dual)


@dataclass(frozen=True)
class HessianWeights:
    """Accumulate ``sum_p weights_p Hess f_y(ball p)`` into ``total`` (and its ``A`` with
    ``input_weights``, the input factor's movement: :mod:`.hessian`)."""

    total: HessianSum
    weights: Tensor
    input_weights: Tensor | None = None

    def rows(self, sl: slice) -> HessianWeights:
        return HessianWeights(self.total, self.weights[sl], None if self.input_weights is None
                              else self.input_weights[sl])


@dataclass(frozen=True)
class TorchRounding:
    """Add torch's rounding in ``arithmetic``, the computed input within ``ball_error``
    (``point_error``) of the exact one over the ball (at its centre)."""

    arithmetic: Rounding
    ball_error: Tensor | None = None
    point_error: Tensor | None = None

    def rows(self, sl: slice) -> TorchRounding:
        return TorchRounding(self.arithmetic,
                             None if self.ball_error is None else self.ball_error[sl],
                             None if self.point_error is None else self.point_error[sl])


@dataclass(frozen=True)
class PassOptions:
    """What a pass computes besides ``G``'s enclosures: ``hessian`` terms; the ``twin``'s
    masks (per thresholded node, ``(P, *shape)``; None: decide them); ``rounding``; the
    ``gap`` to the twin; ``fixed``: the tangents of the nodes affine in ``x`` (the same for
    every ball, :func:`fixed_tangents`); ``telescope``: the point quantities of the
    telescoped cross terms (:mod:`.telescope`); ``keep``: return the values and tangents
    (for :func:`.pointpass.telescope_at`)."""

    hessian: HessianWeights | None = None
    twin: dict[int, Tensor] | None = None
    rounding: TorchRounding | None = None
    gap: bool = False
    fixed: dict[int, CR] | None = None
    telescope: Telescope | None = None
    keep: bool = False

    def rows(self, sl: slice) -> PassOptions:
        """The options of the balls ``sl``."""
        return replace(
            self, hessian=None if self.hessian is None else self.hessian.rows(sl),
            twin=None if self.twin is None else {k: v[sl] for k, v in self.twin.items()},
            rounding=None if self.rounding is None else self.rounding.rows(sl))


@dataclass
class Enclosure:
    """Per ball: ``grad``/``grad0`` ``(lo, hi)`` ``(P, d)`` of ``G`` over the ball and at the
    centre; ``above``: per thresholded node, the mask of units above the threshold over the
    whole ball (when the pass decided the twin); ``gap``/``gap0``: bounds on ``|G - G_s|``;
    ``round_ball``/``round_point``: bounds on torch's rounding ``|G_hat - G|``; ``margin``
    ``(P, k)`` (with ``rounding``): lower bounds on torch's ``f_y - f_j`` over each ball
    (:mod:`.margin`); with ``keep``: every node's ``point`` and ``ball`` enclosures and the
    tangents still held at the end."""

    grad: tuple[Tensor, Tensor]
    grad0: tuple[Tensor, Tensor]
    above: dict[int, Tensor] = field(default_factory=dict)
    gap: Tensor | None = None
    gap0: Tensor | None = None
    round_ball: Tensor | None = None
    round_point: Tensor | None = None
    point: list[CR] | None = None
    ball: list[CR] | None = None
    tangents: dict[int, CR] | None = None
    margin: Tensor | None = None


def _rownorm(tc: Tensor, q: float) -> Tensor:
    """``||column||_q`` of tangents ``(P, d, *shape)`` over the ``d`` axis, rounded up."""
    norm = tc.abs().sum(1) if q == 1.0 else torch.sqrt((tc * tc).sum(1))
    return norm * (1.0 + SUM_REL) + TINY


def exact_nodes(graph: Graph) -> list[bool]:
    """Whether each node is affine in ``x`` (only affine operators above it): its ``[J]`` is
    exact and the same at every point."""
    out: list[bool] = []
    for node in graph.nodes:
        out.append(node.linear and all(out[j] for j in node.inputs))
    return out


def fixed_tangents(graph: Graph, x0: Tensor) -> dict[int, CR]:
    """The tangents ``(1, d, *shape)`` of the nodes affine in ``x`` (:func:`exact_nodes`):
    the same for every centre and radius, so computed once per model."""
    exact = exact_nodes(graph)
    tan: list[CR | None] = []
    out: dict[int, CR] = {}
    source = _identity(x0[:1].to(torch.float64), 1)
    for i, node in enumerate(graph.nodes):
        if not exact[i]:
            tan.append(None)
            continue
        pad = TINY * graph.patterns[i].to(torch.float64).unsqueeze(0)
        t = _tangent(node, i, tan, [], pad, source, None)
        tan.append(t)
        out[i] = (t[0].contiguous(), t[1].contiguous())
    return out


def _identity(x0: Tensor, n_p: int) -> CR:
    """``d x / d x`` ``(P, d, *in_shape)``, exact."""
    d = x0[0].numel()
    eye = torch.eye(d, dtype=x0.dtype, device=x0.device).view(1, d, *x0.shape[1:])
    return eye.expand(n_p, d, *x0.shape[1:]), torch.zeros_like(eye).expand(
        n_p, d, *x0.shape[1:])


def _tangent(node: Operator, i: int, tan: list[CR | None], ball: list[CR],
             pad: Tensor | float, source: CR, fixed: dict[int, CR] | None,
             twin: Tensor | None = None) -> CR:
    """``[J]`` of node ``i`` ``(P, d, *shape)`` (``source``: the input's), or the fixed one."""
    if fixed is not None and i in fixed:
        tc, tr = fixed[i]
        n_p = source[0].shape[0]
        return tc.expand(n_p, *tc.shape[1:]), tr.expand(n_p, *tr.shape[1:])
    if not node.inputs:
        return node.tangent([source], [], pad, twin)
    ins: list[CR] = []
    for j in node.inputs:
        t = tan[j]
        assert t is not None, "a tangent was freed before its last user"
        ins.append(t)
    return node.tangent(ins, [ball[j] for j in node.inputs] if ball else [], pad, twin)


def enclose(graph: Graph, balls: Balls, target: int,
            options: PassOptions = PassOptions()) -> Enclosure:
    """The passes of the module docstring for the class ``target`` over ``balls``.

    Without a twin (``options.twin`` None) the pass decides it from the bound ``dz`` on
    ``|z - z_s|`` of each activation's input, computed node by node
    (:func:`.propagation.forward_step`): a unit is the identity if ``lo - dz`` is above the
    threshold, and ``gap``/``gap0`` then bound ``|G - G_s|``; torch's values lie within ``dz``
    of the twin's and its adjoints within the backward bounds, which is what ``rounding``
    uses. With a twin given, ``gap`` still asks for those bounds (the units not marked
    identity whose interval reaches the threshold)."""
    dt = torch.float64
    x0, radius, q = balls.centres.to(dt), balls.radii, balls.dual
    n_p = x0.shape[0]
    nodes = graph.nodes
    exact = exact_nodes(graph)
    by_value = [any(nodes[u].uses_input_values for u in graph.users[i])
                for i in range(len(nodes))]
    positive = bool((radius > 0).any())
    tangents = options.hessian is not None or positive or options.keep
    thr = graph.has_threshold
    decide = options.twin is None and thr
    track = thr and (decide or options.gap)
    masks: dict[int, Tensor] = {} if options.twin is None else options.twin
    gaps, gaps0 = ErrorModel(), ErrorModel()
    dz: list[Tensor] = []  # |z - z_s| of every node, over the ball and at the centre
    dz0: list[Tensor] = []
    ball_boxes: list[tuple[Tensor, Tensor]] = []
    point_boxes: list[tuple[Tensor, Tensor]] = []
    cache: dict = {}  # the telescope's second factors, for this batch of balls
    point: list[CR] = []
    ball: list[CR] = []
    tan: list[CR | None] = []
    tel = options.telescope
    source = _identity(x0, n_p)
    for i, node in enumerate(nodes):
        pad = TINY * graph.patterns[i].to(dt).unsqueeze(0) if tangents else TINY
        ins = node.inputs
        if not ins:  # the input x
            point.append(node.enclose([(x0, torch.zeros_like(x0))], None))
            ball.append(node.enclose([(x0, radius.to(dt).view(n_p, *([1] * (x0.ndim - 1)))
                                       .expand_as(x0).clone())], None))
        else:
            if track and node.threshold is not None:  # torch's z is within dz of the twin's
                j = ins[0]
                mask, gaps.straddle[i], gaps0.straddle[i] = node.twin_units(
                    to_lohi(*ball[j]), to_lohi(*point[j]), (dz[j], dz0[j]),
                    None if decide else masks[i])
                masks[i] = mask
            point.append(node.enclose([point[j] for j in ins], masks.get(i)))
            ball.append(node.enclose([ball[j] for j in ins], masks.get(i)))
        if tangents:
            cur = _tangent(node, i, tan, ball, pad, source, options.fixed, masks.get(i))
            tan.append(cur)
            if by_value[i] and positive:
                tc, tr = cur
                spread = radius.to(dt).view(n_p, *([1] * (tc.ndim - 2))) \
                    * (_rownorm(tc, q) + _rownorm(tr, q))
                ball[i] = to_cr(*intersect(to_lohi(*ball[i]), to_lohi(
                    point[i][0], point[i][1] + spread * (1.0 + SUM_REL))))
                if tel is not None and i in tel.jx and q == 2.0:  # the telescoped rows
                    ups = tel.ups[i]
                    rows = row_bounds(tel, i, slopes_above(graph, ups, ball, point, masks),
                                      tangents_above(graph, ups, tan), cache)
                    spread = radius.to(dt).view(n_p, 1) * rows
                    ball[i] = to_cr(*intersect(to_lohi(*ball[i]), to_lohi(
                        point[i][0], point[i][1] + (spread * (1.0 + SUM_REL))
                        .view_as(point[i][0]))))
            for j in ins:  # free tangents nobody needs any more
                if ((options.hessian is None and not options.keep) or not by_value[j]) and all(
                        u <= i for u in graph.users[j]):
                    tan[j] = None
        else:
            tan.append(None)
        if track:
            ball_boxes.append(to_lohi(*ball[i]))
            point_boxes.append(to_lohi(*point[i]))
            if not ins:
                dz.append(torch.zeros_like(x0))
                dz0.append(torch.zeros_like(x0))
            else:
                dz.append(forward_step(graph, i, ball_boxes, dz, gaps))
                dz0.append(forward_step(graph, i, point_boxes, dz0, gaps0))
    out = graph.output
    if point[out][0].ndim != 2:
        raise InputError(f"--sound needs logits of shape (N, k), the model gives "
                         f"{tuple(point[out][0].shape)}")
    seed = torch.zeros((n_p, point[out][0].shape[1]), dtype=dt, device=x0.device)
    seed[:, target] = 1.0
    hw = options.hessian
    terms = None if hw is None else HessianPass(
        graph, hw.total, hw.weights, hw.input_weights, tangents=tan, exact=exact, ball=ball,
        point=point, twin=masks, telescope=tel, cache=cache)
    adj = backward(graph, ball, seed, twin=masks, hessian=terms)
    adj0 = backward(graph, point, seed, twin=masks)
    res = Enclosure(to_lohi(*(v.reshape(n_p, -1) for v in adj[0])),
                    to_lohi(*(v.reshape(n_p, -1) for v in adj0[0])), masks if decide else {})
    if options.keep:
        res.point, res.ball = point, ball
        res.tangents = {j: t for j, t in enumerate(tan) if t is not None}
    if not track and options.rounding is None:
        return res
    lohi = [to_lohi(*b) for b in ball]
    lohi0 = [to_lohi(*b) for b in point]
    alohi = [to_lohi(*a) for a in adj]
    alohi0 = [to_lohi(*a) for a in adj0]
    if track:  # torch's values and adjoints: the twin's, widened by the gap's bounds
        du = backward_errors(graph, lohi, alohi, dz, gaps)
        du0 = backward_errors(graph, lohi0, alohi0, dz0, gaps0)
        res.gap, res.gap0 = (v[0].reshape(n_p, -1) for v in (du, du0))
        lohi, lohi0, alohi, alohi0 = (
            [(b[0] - w, b[1] + w) for b, w in zip(bs, ws, strict=True)]
            for bs, ws in ((lohi, dz), (lohi0, dz0), (alohi, du), (alohi0, du0)))
    if options.rounding is not None:
        zero = torch.zeros_like(x0)
        rnd = options.rounding
        eb = rnd.ball_error if rnd.ball_error is not None else zero
        ep = rnd.point_error if rnd.point_error is not None else zero
        errs = forward_errors(graph, lohi, rnd.arithmetic, eb)
        res.round_ball = rounding_error(graph, lohi, alohi, rnd.arithmetic, eb, errs)
        res.round_point = rounding_error(graph, lohi0, alohi0, rnd.arithmetic, ep)
        res.margin = margin_lower(graph, point, ball, balls.radii, balls.dual, target,
                                  logits_tangent=tan[out] if tangents else None,
                                  widen=[dz[out] if track else None, errs[out]])
    return res


def backward(graph: Graph, values: list[CR], seed: Tensor, *,
             twin: dict[int, Tensor] | None = None, start: int | None = None,
             hessian: HessianPass | None = None) -> list[CR]:
    """The adjoints of every node over the enclosures ``values`` (each operator's
    :meth:`~.operators.Operator.adjoint`), seeded with ``seed`` at node ``start`` (the
    output by default); with ``hessian``, the operators' Hessian terms too."""
    nodes = graph.nodes
    adj: list[CR | None] = [None] * len(nodes)
    adj[graph.output if start is None else start] = (seed, torch.zeros_like(seed))

    for i in range(len(nodes) - 1, 0, -1):
        node, ui = nodes[i], adj[i]
        if ui is None:
            continue
        boxes = [values[j] for j in node.inputs]
        mask = twin.get(i) if twin is not None else None
        if hessian is not None:
            node.hessian(hessian, ui, boxes, mask)
        for j, share in zip(node.inputs, node.adjoint(ui, boxes, mask), strict=True):
            if share is not None:
                old = adj[j]
                adj[j] = share if old is None else interval_sum(old, share)
    return [a if a is not None else (torch.zeros_like(v[0]), torch.zeros_like(v[0]))
            for a, v in zip(adj, values, strict=True)]
