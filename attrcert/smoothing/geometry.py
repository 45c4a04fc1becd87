"""How much two l2 balls of radius ``r`` whose centres are ``eps`` apart fail to overlap, in
``d`` dimensions: the geometry behind the uniform-smoothing certificate (docs/smoothing.md).

For ``h(x) = E_{eta ~ U(B(0, r))} g(x + eta)`` the balls ``B(x, r)`` and ``B(x + delta, r)``
share their intersection, so ``h(x + delta) - h(x)`` integrates ``g`` over the two lunes
only. Each lune is the ball less two caps of height ``r - eps / 2``; a cap of height ``c``
holds the fraction ``I_{(2 r c - c^2) / r^2}((d + 1) / 2, 1 / 2) / 2`` of the ball, so the
intersection holds ``I_{1 - t^2}((d + 1) / 2, 1 / 2)`` with ``t = eps / (2 r)``, and one lune

    lune(t) = 1 - I_{1 - t^2}((d + 1) / 2, 1 / 2) = I_{t^2}(1 / 2, (d + 1) / 2)

(``I_x(a, b) = 1 - I_{1 - x}(b, a)``). The right-hand form is what is evaluated: the
left-hand one subtracts two numbers within ``~ t sqrt(d)`` of 1 and loses every digit
when ``t`` is small and ``d`` large (a 224 x 224 image: ``d = 150528``). ``V_U`` (Wang &
Kong 2024), the volume where the balls do not overlap, is both lunes: ``V_U / V_S =
2 lune(t)``, which is 2 once ``eps >= 2 r``.

Pure math (scipy's regularised incomplete beta, which is Boost's ``ibeta``, and its
inverse); no torch. :func:`log_lune_fraction` sums the series of ``I_x(1/2, b)`` in log
space: an independent evaluation (the tests hold both to mpmath and to Monte Carlo) that
stays finite where the fraction itself would underflow.
"""

from __future__ import annotations

import math

from scipy import special

__all__ = ["log_lune_fraction", "lune_fraction", "offset_for_ratio", "volume_ratio"]


def _half_offset(eps: float, radius: float) -> float:
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps = {eps!r} must be a finite number >= 0")
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius = {radius!r} must be a finite number > 0")
    return eps / (2.0 * radius)


def _check_d(d: int) -> float:
    if isinstance(d, bool) or int(d) != d or d < 1:
        raise ValueError(f"d = {d!r} must be an integer >= 1")
    return (int(d) + 1) / 2.0


def lune_fraction(eps: float, radius: float, d: int) -> float:
    """The fraction of ``B(0, r)`` outside ``B(delta, r)`` for ``||delta||_2 = eps``:
    ``I_{t^2}(1/2, (d + 1)/2)``, ``t = eps / (2 r)`` (1 once ``eps >= 2 r``)."""
    b = _check_d(d)
    t = _half_offset(eps, radius)
    if t >= 1.0:
        return 1.0
    return float(special.betainc(0.5, b, t * t))


def volume_ratio(eps: float, radius: float, d: int) -> float:
    """``V_U / V_S``: the volume of the symmetric difference of ``B(x, r)`` and
    ``B(x + delta, r)``, ``||delta||_2 = eps``, over the volume of one ball (in ``[0, 2]``).
    ``||h(x + delta) - h(x)||_2 <= M V_U / V_S`` for every ``g`` with ``||g|| <= M``."""
    return 2.0 * lune_fraction(eps, radius, d)


def log_lune_fraction(eps: float, radius: float, d: int, *, terms: int = 100_000) -> float:
    """``log lune(t)`` from the series ``I_x(a, b) = x^a (1 - x)^b / (a B(a, b))
    * sum_k (a + b)_k / (a + 1)_k x^k`` (``a = 1/2``, ``x = t^2``), every term in log space.

    The series converges for ``x < 1``; each term grows while ``(a + b + k) x / (a + 1 + k)
    > 1``, so it is summed with a running maximum (log-sum-exp) until the terms fall below
    ``1e-17`` of the sum. ``-inf`` at ``eps = 0``, 0 once ``eps >= 2 r``.
    """
    b = _check_d(d)
    t = _half_offset(eps, radius)
    if t == 0.0:
        return -math.inf
    if t >= 1.0:
        return 0.0
    a, x = 0.5, t * t
    log_x = math.log(x)
    # log B(1/2, b) = log Gamma(1/2) - log(Gamma(b + 1/2) / Gamma(b)): the ratio by scipy's
    # Pochhammer symbol, without the cancellation of three log-gammas (special.betaln
    # loses 1e-10 relative at b ~ 1e5)
    log_beta = math.lgamma(a) - math.log(float(special.poch(b, a)))
    prefix = a * log_x + b * math.log1p(-x) - math.log(a) - log_beta
    log_term, peak, total = 0.0, 0.0, 1.0  # total: sum of exp(log_term - peak)
    for k in range(terms):
        log_term += math.log(a + b + k) - math.log(a + 1 + k) + log_x
        if log_term > peak:
            total = total * math.exp(peak - log_term) + 1.0
            peak = log_term
        else:
            total += math.exp(log_term - peak)
        if log_term - peak < math.log(1e-17 * total) and (a + b + k) * x < (a + 1 + k):
            break
    else:
        raise ArithmeticError(f"the series for I_x(1/2, {b}) at x = {x} did not converge")
    return min(0.0, prefix + peak + math.log(total))


def offset_for_ratio(ratio: float, d: int) -> float | None:
    """The largest ``t = eps / (2 r)`` with ``2 lune(t) <= ratio`` (``V_U / V_S <= ratio``):
    0 for ``ratio <= 0``, ``None`` when every ``t`` qualifies (``ratio >= 2``).

    From scipy's inverse of the incomplete beta, then moved down (by relative steps of
    ``1e-12``) until the forward formula confirms it, so the bound is never overstated.
    """
    b = _check_d(d)
    if math.isnan(ratio):
        raise ValueError("ratio is NaN")
    if ratio >= 2.0:
        return None
    if ratio <= 0.0:
        return 0.0
    t = math.sqrt(float(special.betaincinv(0.5, b, ratio / 2.0)))
    step = 1e-12
    while t > 0.0 and 2.0 * float(special.betainc(0.5, b, t * t)) > ratio:
        t *= 1.0 - step
        step *= 2.0
    return min(t, 1.0)
