"""How far the Monte Carlo mean ``h_hat = (1/n) sum_i X_i`` of i.i.d. vectors with
``||X_i||_2 <= M`` can be from their expectation ``h``, at confidence ``1 - alpha``
(docs/smoothing.md, "Estimating h", has the proofs).

Two bounds on ``||h_hat - h||``, each holding with probability ``>= 1 - alpha`` and each a
function of the unknown ``s = ||h||`` only (``v(s) = M^2 - s^2 >= E||X - h||^2``):

- bounded differences (McDiarmid 1989): replacing one ``X_i`` moves ``||h_hat - h||`` by at
  most ``2 M / n``, and ``E||h_hat - h|| <= sqrt(v / n)`` (Jensen), so
  ``b_1(s) = sqrt(v(s) / n) + M sqrt(2 ln(1/alpha) / n)``;
- Bernstein in Hilbert space (Pinelis 1994, Theorem 3.4, with ``a = 2 M / n``, ``b^2 = v /
  n``): ``P(||h_hat - h|| >= t) <= 2 exp(-t^2 / (2 (v / n + t a / 3)))``, so with
  ``L = ln(2/alpha)``, ``b_2(s) = L a / 3 + sqrt((L a / 3)^2 + 2 L v(s) / n)``.

``h`` is fixed, so ``b(||h||) = min(b_1, b_2)(||h||)`` is one of the two at a fixed point and
holds with probability ``>= 1 - alpha`` with no union bound. On that event ``||h|| >=
||h_hat|| - b(||h||)``, which :func:`norm_lower_bound` solves for the smallest ``||h||``
it allows. Bernstein wins when the attributions agree (``||h||`` near ``M``, small
variance), bounded differences at small ``n``.

Pure math: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MeanBound", "bernstein_radius", "deviation_radius", "mcdiarmid_radius",
           "norm_lower_bound"]


def _check(n: int, bound: float, alpha: float) -> None:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n = {n!r} must be an integer >= 1")
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"M = {bound!r} must be a finite number > 0")
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha = {alpha!r} must lie in (0, 1)")


def _variance(bound: float, norm: float) -> float:
    """``M^2 - s^2`` for ``s`` clamped to ``[0, M]``: at least ``E||X - h||^2``."""
    s = min(max(norm, 0.0), bound)
    return max(0.0, bound * bound - s * s)


def mcdiarmid_radius(n: int, bound: float, alpha: float, norm: float = 0.0) -> float:
    """``b_1(s) = sqrt((M^2 - s^2) / n) + M sqrt(2 ln(1/alpha) / n)`` (bounded differences);
    at ``s = 0`` it is ``M (1 + sqrt(2 ln(1/alpha))) / sqrt(n)``."""
    _check(n, bound, alpha)
    return (math.sqrt(_variance(bound, norm) / n)
            + bound * math.sqrt(2.0 * math.log(1.0 / alpha) / n))


def bernstein_radius(n: int, bound: float, alpha: float, norm: float = 0.0) -> float:
    """``b_2(s) = c + sqrt(c^2 + 2 L (M^2 - s^2) / n)``, ``c = 2 M L / (3 n)``, ``L =
    ln(2/alpha)``: the root of Pinelis's Bernstein tail set to ``alpha``."""
    _check(n, bound, alpha)
    log_term = math.log(2.0 / alpha)
    c = 2.0 * bound * log_term / (3.0 * n)
    return c + math.sqrt(c * c + 2.0 * log_term * _variance(bound, norm) / n)


def deviation_radius(n: int, bound: float, alpha: float, norm: float = 0.0) -> float:
    """``b(s) = min(b_1(s), b_2(s))``: with probability ``>= 1 - alpha``, ``||h_hat - h|| <=
    b(||h||)`` for ``n`` i.i.d. vectors of norm ``<= M`` (``bound``) with mean ``h``; both
    decrease in ``s``, so any ``norm <= ||h||`` gives a valid (larger) radius."""
    return min(mcdiarmid_radius(n, bound, alpha, norm), bernstein_radius(n, bound, alpha, norm))


def _lowest(radius: Callable[[int, float, float, float], float], estimate_norm: float,
            n: int, bound: float, alpha: float) -> float:
    """The smallest ``s`` in ``[0, M]`` with ``s + radius(s) >= ||h_hat||`` (rounded down),
    for ``s + radius(s)`` concave with ``M + radius(M) >= ||h_hat||``."""
    if radius(n, bound, alpha, 0.0) >= estimate_norm:
        return 0.0
    below, above = 0.0, bound  # not admissible at below; admissible at above
    for _ in range(200):
        mid = 0.5 * (below + above)
        if mid + radius(n, bound, alpha, mid) >= estimate_norm:
            above = mid
        else:
            below = mid
        if above - below <= 1e-15 * bound:
            break
    return below


@dataclass(frozen=True)
class MeanBound:
    """What one Monte Carlo mean says about the true mean, at confidence ``1 - alpha``.

    Attributes:
        norm_lower: ``||h|| >= norm_lower``.
        radius: ``||h_hat - h|| <= radius`` (:func:`deviation_radius` at ``norm_lower``).
    """

    norm_lower: float
    radius: float


def norm_lower_bound(estimate_norm: float, n: int, bound: float, alpha: float) -> MeanBound:
    """The smallest ``s in [0, M]`` with ``s + b(s) >= ||h_hat||``: on the event of
    :func:`deviation_radius`, ``||h|| >= s``.

    ``s + b(s) = min_k (s + b_k(s))`` and each ``s + b_k(s)`` is concave (``b_k`` is a
    constant plus the square root of a concave quadratic) with value ``>= M >= ||h_hat||``
    at ``s = M``; so each admissible set is an interval ``[s_k, M]``, their intersection is
    ``[max_k s_k, M]``, and each ``s_k`` is found by bisection and rounded down.
    """
    _check(n, bound, alpha)
    if not (math.isfinite(estimate_norm) and estimate_norm >= 0):
        raise ValueError(f"||h_hat|| = {estimate_norm!r} must be a finite number >= 0")
    low = max(_lowest(radius, estimate_norm, n, bound, alpha)
              for radius in (mcdiarmid_radius, bernstein_radius))
    return MeanBound(norm_lower=low, radius=deviation_radius(n, bound, alpha, low))
