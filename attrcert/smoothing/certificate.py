"""The uniform-smoothing certificate (after Wang & Kong 2024, arXiv 2405.06361), from the
Monte Carlo estimate of ``h(x)``: pure math, no torch (docs/smoothing.md has the proofs).

For ``h(x) = E_{eta ~ U(B(0, r))} g(x + eta)``, ``||g|| <= M`` and ``||delta||_2 <= eps``:

1. ``||h(x + delta) - h(x)|| <= D = M V_U / V_S`` (:func:`~.geometry.volume_ratio`):
   surely, for every ``g``.
2. ``cos(h(x + delta), h(x)) >= sqrt(1 - D^2 / ||h(x)||^2)`` when ``D < ||h(x)||``: the
   smallest cosine between ``h(x)`` and a point within ``D`` of it (the tangent). The
   paper's ``||h|| / sqrt(||h||^2 + D^2)`` is the cosine for a deviation orthogonal to
   ``h(x)`` only; a ``g`` that reaches the tangent exists (tests/test_smoothing_math.py),
   so that expression is not a lower bound and attrcert does not use it.
3. ``||h(x)|| >= h_norm_lower`` with probability ``>= 1 - alpha`` over the ``n`` noise
   samples (:func:`~.concentration.norm_lower_bound`), and 2. is increasing in
   ``||h(x)||``: so ``cos_sim_lower`` holds with that probability, for the true ``h`` at
   every point of the ball (``h(x + delta)`` is never estimated).

The tolerance forms (the largest eps, the smallest ``r``) invert 2. with the same
``h_norm_lower``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import bounds
from .concentration import norm_lower_bound
from .geometry import offset_for_ratio, volume_ratio

__all__ = ["CosineCertificate", "Limits", "certify_cosine", "tolerance_limits"]


@dataclass(frozen=True)
class CosineCertificate:
    """The certificate at one ``eps`` for one image.

    Attributes:
        volume_ratio: ``V_U / V_S``.
        deviation_bound: ``D = M V_U / V_S``, a sure bound on ``||h(x + delta) - h(x)||``.
        h_norm: ``||h_hat(x)||``, the estimate's norm.
        estimate_error: ``||h_hat(x) - h(x)|| <= estimate_error`` (confidence ``1 - alpha``).
        h_norm_lower: ``||h(x)|| >= h_norm_lower`` (confidence ``1 - alpha``).
        cos_sim_lower: ``cos(h(x + delta), h(x)) >= cos_sim_lower`` for every
            ``||delta||_2 <= eps`` (confidence ``1 - alpha``); -1 when vacuous.
        angle_deg: ``arccos(cos_sim_lower)`` in degrees (180 when vacuous).
        vacuous: ``D >= h_norm_lower``: the ball of possible ``h(x + delta)`` holds 0.
        cos_to_estimate_lower: ``cos(h(x + delta), h_hat(x))`` is at least this (the angle to
            ``h`` plus ``arcsin(estimate_error / ||h_hat||)``); -1 when vacuous.
    """

    volume_ratio: float
    deviation_bound: float
    h_norm: float
    estimate_error: float
    h_norm_lower: float
    cos_sim_lower: float
    angle_deg: float
    vacuous: bool
    cos_to_estimate_lower: float


def _angle(deviation: float, norm: float) -> float | None:
    """``arcsin(deviation / norm)`` in radians, ``None`` unless ``deviation < norm``."""
    if norm <= 0.0 or deviation >= norm:
        return None
    return math.asin(deviation / norm)


def certify_cosine(h_norm: float, *, samples: int, bound: float, alpha: float, eps: float,
                   radius: float, d: int) -> CosineCertificate:
    """The certificate of an image whose estimate ``h_hat`` from ``samples`` noise draws has
    norm ``h_norm``; ``bound`` is ``M``, ``d`` the input dimension."""
    ratio = volume_ratio(eps, radius, d)
    deviation = bound * ratio
    mean = norm_lower_bound(h_norm, samples, bound, alpha)
    turn = _angle(deviation, mean.norm_lower)
    drift = _angle(mean.radius, h_norm)
    if turn is None:
        cos, degrees = -1.0, 180.0
    else:  # Corollary 2's angle arcsin(D / ||h||), its cosine without cancellation
        q = deviation / mean.norm_lower
        cos, degrees = math.sqrt((1.0 - q) * (1.0 + q)), math.degrees(turn)
    if turn is None or drift is None or turn + drift >= math.pi:
        to_estimate = -1.0
    else:
        to_estimate = math.cos(turn + drift)
    return CosineCertificate(volume_ratio=ratio, deviation_bound=deviation, h_norm=h_norm,
                             estimate_error=mean.radius, h_norm_lower=mean.norm_lower,
                             cos_sim_lower=cos, angle_deg=degrees, vacuous=turn is None,
                             cos_to_estimate_lower=to_estimate)


@dataclass(frozen=True)
class Limits:
    """The tolerance forms of the certificate for one image.

    Attributes:
        eps_max: the largest eps whose certificate meets the tolerance at this ``r``
            (confidence ``1 - alpha``, for every smaller eps at once); 0 when none does,
            ``None`` when every eps does (``eps_max_unbounded``).
        radius_min: the smallest ``r`` whose certificate at ``eps`` would meet the tolerance
            *if* the smoothed attribution at that ``r`` had the same ``h_norm_lower``: a
            planning figure, not a certificate (rerun with ``--radius radius_min``);
            ``None`` when no ``r`` does.
        radius_min_floor: the smallest ``r`` that could meet the tolerance at ``eps`` for any
            attribution (``||h|| = M``, the best case): below it nothing can be certified.
    """

    eps_max: float | None
    radius_min: float | None
    radius_min_floor: float | None


def _allowed_ratio(omega: float, metric: str, norm: float, bound: float) -> float:
    """The largest ``V_U / V_S`` whose deviation ``D = M V_U / V_S`` meets the tolerance:
    Corollary 2's relation between a deviation and an angle, as in ``max-eps``."""
    return bounds.euclidean_tolerance(omega, metric, norm) / bound


def _meets(deviation: float, omega: float, metric: str, norm: float) -> bool:
    """Whether a deviation bound ``D`` meets the tolerance, computed as
    :func:`certify_cosine` reports it."""
    if metric == "euclidean":
        return deviation <= omega
    turn = _angle(deviation, norm)
    if turn is None:
        return False
    if metric == "cosine":
        q = deviation / norm
        return 1.0 - math.sqrt((1.0 - q) * (1.0 + q)) <= omega
    return math.degrees(turn) <= omega


def tolerance_limits(h_norm_lower: float, *, bound: float, eps: float, radius: float, d: int,
                     omega: float, metric: str) -> Limits:
    """``eps_max`` and ``radius_min`` for a tolerance ``omega`` on ``metric``
    (``euclidean``: ``||h(x + delta) - h(x)|| <= omega``; ``cosine``: ``1 - cos <=
    omega``; ``angle``: degrees), from ``V_U / V_S`` depending on ``eps / (2 r)`` only."""
    allowed = _allowed_ratio(omega, metric, h_norm_lower, bound)
    offset = offset_for_ratio(allowed, d)
    if offset is None:
        eps_max, radius_min = None, 0.0
    elif offset <= 0.0:
        eps_max, radius_min = 0.0, None
    else:
        eps_max, radius_min = 2.0 * radius * offset, eps / (2.0 * offset)

        # the closed-form inversion can miss by a rounding (1 - cos at eps_max above omega
        # by 3e-14): move each out by relative steps until certify_cosine's own formulas meet
        def meets(e: float, r: float) -> bool:
            return _meets(volume_ratio(e, r, d) * bound, omega, metric, h_norm_lower)

        step = 1e-15
        while eps_max > 0.0 and not meets(eps_max, radius):
            eps_max, step = max(0.0, eps_max * (1.0 - step)), 2.0 * step
        step = 1e-15
        while not meets(eps, radius_min):
            radius_min, step = radius_min * (1.0 + step), 2.0 * step
    best = offset_for_ratio(_allowed_ratio(omega, metric, bound, bound), d)
    floor = 0.0 if best is None else (None if best <= 0.0 else eps / (2.0 * best))
    return Limits(eps_max=eps_max, radius_min=radius_min, radius_min_floor=floor)
