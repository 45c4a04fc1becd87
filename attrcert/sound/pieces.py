"""The pieces of the mean-value bound: the attribution's points, times nested radii.

``g(x + delta) - g(x) = M delta`` with ``M = int_0^1 J_g(x + t delta) dt`` (the mean-value
theorem in integral form). Split ``[0, 1]`` into ``K`` intervals ``(t_{i-1}, t_i]``,
``t_i = i / K``: on the ``i``-th, ``x + t delta`` lies in the ball of radius ``t_i eps``, so
``M`` lies in ``sum_i (1/K) [J_g over the ball of radius t_i eps]``, whose excess over
``J_g(x)`` is about ``(K + 1) / (2 K)`` of that of the enclosure over the whole ball.

Saliency and input x gradient have one centre, ``x``; integrated gradients one per Riemann
point, ``z_a = b + alpha_a (x - b)``, moving within ``alpha_a`` times the ball, with weight
``1/m`` in ``mean_a G(z_a)`` and ``alpha_a / m`` in ``sum_a (alpha_a / m) Hess f_y(z_a)``
(Eq. 45, docs/sound.md). A piece is a centre at one ``t_i``: its ball has radius
``t_i alpha_a eps`` and its weights are those times ``1/K``. All pieces go through
:func:`.enclosures.enclose` in batches (``chunk`` at a time), which share everything that
does not depend on the point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..attributions import Attribution, InputXGradient, IntegratedGradients
from .enclosures import Balls, Enclosure, PassOptions, enclose
from .intervals import REL, SUM_REL, TINY, to_cr
from .nodes import Graph


@dataclass
class Centres:
    """The attribution's points for one sample: ``z`` ``(M, *in_shape)``, the radius of the
    ball each moves in ``(M,)``, the weights of ``G`` (``gw``) and of ``Hess`` (``hw``), and
    the bounds on the distance between torch's float point and the exact one (``e_ball``
    over the ball, ``e_point`` at ``x``)."""

    z: Tensor
    radius: Tensor
    gw: Tensor
    hw: Tensor
    e_ball: Tensor
    e_point: Tensor


def centres(att: Attribution, x: Tensor, eps: float, u: float
            ) -> tuple[Centres, Tensor | None, Tensor]:
    """The :class:`Centres` of ``x`` ``(1, *in_shape)``, ``u0`` (``x``, ``x - b``, or None for
    saliency) and ``r``, the bound on ``|x_hat' - x'|`` (the attack's float point against the
    ball point it stands for: ``u (|x| + 3.01 eps)``, ``u`` the unit roundoff)."""
    r = (u * (x.abs() + 3.01 * eps)) * (1.0 + REL)
    one = torch.ones(1, dtype=torch.float64)
    if not isinstance(att, IntegratedGradients):
        u0 = x.reshape(-1) if isinstance(att, InputXGradient) else None
        return Centres(x, one * eps, one, one.clone(), r, torch.zeros_like(x)), u0, r
    base = att.baseline_for(x).to(torch.float64)
    m = att.steps
    alpha = torch.arange(1, m + 1, dtype=torch.float64) / m
    shape = (m, *([1] * (x.ndim - 1)))
    a = alpha.view(shape)
    span = (x - base).abs()
    z = base + a * (x - base)
    z[-1] = x[0]  # alpha = 1: the exact path point is x (the margin's ball is centred there)
    # the float path point b + alpha (x_hat - b): each of its operations rounded
    e_ball = a * r + 5.0 * u * (base.abs() + a * (span + eps + r))
    e_point = 5.0 * u * (base.abs() + a * span)
    return Centres(z, alpha * eps, torch.full((m,), 1.0 / m, dtype=torch.float64),
                   alpha / m, e_ball, e_point), (x - base).reshape(-1), r


def weighted(lo: Tensor, hi: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """``sum_p w_p [lo_p, hi_p]`` ``(P, d)`` as centre and radius, with the sum's rounding
    (``SUM_REL`` of the magnitude)."""
    c, r = to_cr(lo, hi)
    w = w.view(-1, 1)
    mag = (w.abs() * (c.abs() + r)).sum(0)
    return (w * c).sum(0), (w.abs() * r).sum(0) * (1.0 + REL) + SUM_REL * mag + TINY


#: Bytes the pieces enclosed at once may hold when no smaller memory budget is given
CHUNK_BYTES = 1.5e9


def chunk_size(graph: Graph, d: int, budget: float = CHUNK_BYTES) -> int:
    """How many pieces to enclose at once: their tangents ``(d, *shape)`` (centre and radius,
    a few nodes alive) within ``budget`` bytes."""
    biggest = max(max(1, int(torch.Size(n.shape).numel())) for n in graph.nodes)
    return max(1, int(budget // (16.0 * 8.0 * d * biggest)))


def run(graph: Graph, balls: Balls, target: int, options: PassOptions,
        chunk: int) -> Enclosure:
    """:func:`.enclosures.enclose` over the pieces ``balls`` ``chunk`` at a time, the
    per-piece results concatenated."""
    parts: list[Enclosure] = []
    for s in range(0, balls.centres.shape[0], chunk):
        sl = slice(s, s + chunk)
        parts.append(enclose(graph, balls.rows(sl), target, options.rows(sl)))
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> Tensor | None:
        vals = [getattr(p, name) for p in parts]
        return None if vals[0] is None else torch.cat(vals)

    return Enclosure(
        (torch.cat([p.grad[0] for p in parts]), torch.cat([p.grad[1] for p in parts])),
        (torch.cat([p.grad0[0] for p in parts]), torch.cat([p.grad0[1] for p in parts])),
        {k: torch.cat([p.above[k] for p in parts]) for k in parts[0].above},
        cat("gap"), cat("gap0"), cat("round_ball"), cat("round_point"), margin=cat("margin"))
