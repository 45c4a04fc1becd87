"""Enclosures of ``grad f_y`` and ``Hess f_y`` over a ball (forward and backward interval
passes through the layers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError
from .activations import Activation
from .intervals import SUM_REL, TINY, intersect, mul, mul_cr, to_cr, to_lohi
from .layers import Layer, affine_cr, affine_t_cr, transpose
from .rounding import Rounding, rounding_error
from .structured import Structured, add_term


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
    above: list[Tensor] | None = None
    round_ball: Tensor | None = None
    round_point: Tensor | None = None


def _twin_range(act: Activation, k: int, lo: Tensor, hi: Tensor,
                above: Tensor | None) -> tuple[Tensor, Tensor]:
    """``sigma^(k)`` over ``[lo, hi]`` for the twin of a thresholded Softplus: the identity on
    the units ``above`` (whose whole ball interval lies above the threshold, where torch's
    function is the identity), its smooth twin elsewhere; torch's own function when
    ``above`` is None."""
    if above is None or act.threshold is None:
        return act.range(k, lo, hi)
    assert act.smooth_twin is not None
    slo, shi = act.smooth_twin.range(k, lo, hi)
    if k == 0:
        ilo, ihi = lo, hi
    else:
        ilo = ihi = torch.full_like(lo, 1.0 if k == 1 else 0.0)
    return torch.where(above, ilo, slo), torch.where(above, ihi, shi)


def enclose(layers: list[Layer], x0: Tensor, radius: float, q: float, target: int,
            *, hessian: bool, defer_first: bool = False,
            twin_above: list[Tensor] | None = None, rounding: Rounding | None = None,
            e0: tuple[Tensor, Tensor] | None = None) -> Enclosure:
    """Enclose ``grad f_y`` (and ``Hess f_y`` when ``hessian``) over the ball of ``radius``
    around ``x0`` ``(1, *in_shape)``, float64. ``q`` is the dual norm of the ball (2 for l2,
    1 for l-inf); ``|delta_i| <= radius`` for both. See the module docstring for the math.

    ``defer_first``: leave the first activation's Hessian term out of ``struct`` and return
    its parts in ``first`` (its ``[J_1] = A_0`` does not depend on ``x0``, so integrated
    gradients sums the weights over its ``m`` points and forms the ``d x d`` term once).

    ``twin_above``: enclose the twin ``f_s`` instead of torch's ``f``: every thresholded
    Softplus replaced, unit by unit, by the identity where ``twin_above`` (from the ``above``
    of the enclosure of ``f`` on the same ball) and by its smooth twin elsewhere; ``f_s`` is
    twice differentiable and equals ``f`` except on the units whose interval straddles the
    threshold. Without it, ``gap``/``gap0`` bound ``|G - G_s|`` (only those units add to it).

    ``rounding``, ``e0``: also bound torch's rounding, ``|G_hat - G|`` over the ball and at
    ``x0`` (:func:`rounding_error`, input errors ``e0 = (ball, point)``)."""
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
                     tuple[Tensor, Tensor] | None, Tensor | None]] = []
    track = twin_above is None and any(
        la.act is not None and la.act.threshold is not None for la in layers)
    dzs: list[tuple[Tensor, Tensor]] = []  # |z - z_s| bounds (ball, point) per activation
    dball, dpoint = torch.zeros_like(x0), torch.zeros_like(x0)
    ins_ball: list[tuple[Tensor, Tensor]] = []
    ins_point: list[tuple[Tensor, Tensor]] = []
    above_masks: list[Tensor] = []
    twins = iter(twin_above or [])
    for layer in layers:
        if layer.affine is not None:
            ins_ball.append(to_lohi(bc, br))
            ins_point.append(to_lohi(pc, pr))
            pc, pr = affine_cr(layer.affine, pc, pr)
            bc, br = affine_cr(layer.affine, bc, br)
            if tangents:
                tc, tr = affine_cr(layer.affine, tc, tr, bias=False)
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
        ins_ball.append(ball)
        ins_point.append(point)
        above = next(twins) if twin_above is not None and act.threshold is not None else None
        if twin_above is None and act.threshold is not None:
            above_masks.append(ball[0] > act.threshold)
        acts.append((act, ball, point, (tc, tr) if hessian else None, above))
        if track:
            dzs.append((dball, dpoint))
            straddle = _straddles(act, *ball)
            dball, dpoint = (straddle * act.gap + act.scale[1] * dball,
                             straddle * _reaches(act, point[1]) * act.gap
                             + act.scale[1] * dpoint)
        bc, br = to_cr(*_twin_range(act, 0, *ball, above))
        pc, pr = to_cr(*_twin_range(act, 0, *point, above))
        if tangents:
            slo, shi = _twin_range(act, 1, *ball, above)
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
    adj_ball: list[tuple[Tensor, Tensor]] = [to_lohi(uc, ur)] * len(layers)
    adj_point: list[tuple[Tensor, Tensor]] = [to_lohi(vc, vr)] * len(layers)
    for li in range(len(layers) - 1, -1, -1):
        layer = layers[li]
        adj_ball[li], adj_point[li] = to_lohi(uc, ur), to_lohi(vc, vr)
        if layer.affine is not None:
            a = layer.affine
            uc, ur = affine_t_cr(a, uc, ur)
            vc, vr = affine_t_cr(a, vc, vr)
            if track:
                du, du0 = (transpose(a.lin_abs, t, a.in_shape) * (1.0 + SUM_REL) + TINY
                           for t in (du, du0))
            continue
        index -= 1
        act, ball, point, jac, above = acts[index]
        if twin_above is None:
            mvt_ok = mvt_ok and not act.crosses_threshold(*ball)
        if track:  # |w - w_s| <= jump |u| + sup|s''| |dz| |u| + sup|s'| |du|
            straddle = _straddles(act, *ball)
            du, du0 = ((jumps * act.jump + act.scale[2] * dz) * (u_c.abs() + u_r)
                       + act.scale[1] * dd
                       for jumps, dz, dd, u_c, u_r in (
                           (straddle, dzs[index][0], du, uc, ur),
                           (straddle * _reaches(act, point[1]), dzs[index][1], du0, vc, vr)))
        if jac is not None:
            assert st is not None
            wc, wr = to_cr(*mul(*to_lohi(uc, ur), *_twin_range(act, 2, *ball, above)))
            wc, wr = wc.reshape(1, -1), wr.reshape(1, -1)
            tcm, trm = jac[0].reshape(d, -1), jac[1].reshape(d, -1)
            if index == 0 and defer_first:
                first = (tcm, trm, wc, wr)
            else:
                add_term(st, tcm, trm, wc, wr)
        uc, ur = mul_cr(*_twin_range(act, 1, *ball, above), uc, ur)
        vc, vr = mul_cr(*_twin_range(act, 1, *point, above), vc, vr)
    hess = None if st is None else (st.c, st.r + st.q)
    rnd_ball = rnd_point = None
    if rounding is not None:
        zeros = torch.zeros_like(x0)
        eb, ep = e0 if e0 is not None else (zeros, zeros)
        rnd_ball = rounding_error(layers, ins_ball, adj_ball, rounding, eb)
        rnd_point = rounding_error(layers, ins_point, adj_point, rounding, ep)
    return Enclosure(tuple(t.reshape(-1) for t in to_lohi(uc, ur)),  # type: ignore[arg-type]
                     tuple(t.reshape(-1) for t in to_lohi(vc, vr)),  # type: ignore[arg-type]
                     hess, mvt_ok, du.reshape(-1) if track else None,
                     du0.reshape(-1) if track else None, st, first, above_masks,
                     rnd_ball, rnd_point)


def _straddles(act: Activation, lo: Tensor, hi: Tensor) -> Tensor | float:
    """1 where ``[lo, hi]`` straddles the Softplus threshold (there torch's function and the
    twin of :func:`enclose` differ: by ``gap`` in value, ``jump`` in slope), else 0."""
    if act.threshold is None:
        return 0.0
    return ((lo <= act.threshold) & (hi >= act.threshold)).to(lo.dtype)


def _reaches(act: Activation, hi: Tensor) -> Tensor | float:
    """1 where an interval reaches the Softplus threshold (torch's branch may switch)."""
    if act.threshold is None:
        return 0.0
    return (hi >= act.threshold).to(hi.dtype)
