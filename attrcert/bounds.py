"""The paper's bounds as small pure functions, one per equation.

Wang & Kong, CVPR 2023, "A Practical Upper Bound for the Worst-Case Attribution
Deviations" (arXiv 2303.00340). Every bound here assumes that the attribution ``g`` is
*locally linear* on the ball (``g(x + delta) - g(x) = J delta``); see docs/math.md §6.

No torch, no I/O: scalars are Python floats, vectors NumPy arrays. Values that would be
NaN or infinite are returned as ``None`` with a flag by the callers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .perturbation import l2_radius_factor

# --- Euclidean bound T_e --------------------------------------------------------------

def euclidean_bound_l2(xi_max: float, eps: float) -> float:
    """Theorem 1, Eq. 6: ``T_e = xi_max * eps`` for ``||delta||_2 <= eps``."""
    return xi_max * eps


def euclidean_bound_lp(xi_max: float, eps: float, d: int, p: float) -> float:
    """Corollary 1: ``T_e = d^(1/2 - 1/p) * xi_max * eps`` for ``p > 2`` (Lemma 1, Eq. 13).

    For ``1 <= p <= 2`` the lp ball lies inside the l2 ball of the same radius, so the
    factor is 1. For ``p = inf`` this is ``sqrt(d) * xi_max * eps`` (Corollary 1 as p -> inf).
    """
    return l2_radius_factor(d, p) * xi_max * eps


def euclidean_bound_linf(abs_sum_gram: float, eps: float) -> float:
    """Theorem 2, Eq. 7: ``T_e = eps * sqrt(sum_ij |P_ij|)``, ``P = J^T J``.

    Valid for ``||delta||_inf <= eps``; attained when ``J`` has rank one.
    """
    return eps * math.sqrt(abs_sum_gram)


@dataclass(frozen=True)
class EuclideanBound:
    """``T_e`` per unit of eps (it is linear in eps), and the theorem that gave it.

    Attributes:
        slope: ``T_e / eps``.
        method: ``"theorem1"`` (l2), ``"corollary1"`` (lp), ``"theorem2"`` (l-inf).
        slope_min: for l-inf, the smaller of Theorem 2 and Corollary 1 (``sqrt(d) xi_max``),
            both valid; equal to ``slope`` otherwise.
    """

    slope: float
    method: str
    slope_min: float


def euclidean_bound(xi_max: float, abs_sum_gram: float | None, d: int,
                    p: float) -> EuclideanBound:
    """The ``T_e`` of docs/math.md §2 for the lp ball, per unit eps (``T_e = slope * eps``).

    For l-inf without Theorem 2's constant (``abs_sum_gram`` None: not computed, as on the
    matrix-free path), Corollary 1 as ``p -> inf`` (``sqrt(d) xi_max``) is used instead.
    """
    if p == 2.0:
        s = euclidean_bound_l2(xi_max, 1.0)
        return EuclideanBound(s, "theorem1", s)
    if math.isinf(p) and abs_sum_gram is not None:
        s = euclidean_bound_linf(abs_sum_gram, 1.0)
        return EuclideanBound(s, "theorem2", min(s, euclidean_bound_lp(xi_max, 1.0, d, p)))
    s = euclidean_bound_lp(xi_max, 1.0, d, p)
    return EuclideanBound(s, "corollary1", s)


# --- the modified bound T'_e ------------------------------------------------------------

def modification_factor(deviations: list[float], xi_max: float, eps: float) -> float:
    """Eq. 39: ``c = max(1, max_s ||g(x + s eps v_max) - g(x)||_2 / (xi_max eps))``.

    ``deviations`` holds the measured ``||g(x + s eps v_max) - g(x)||_2`` for ``s = +1, -1``.
    ``xi_max = 0`` gives ``c = 1`` (nothing to scale).
    """
    denom = xi_max * eps
    if denom <= 0.0:
        return 1.0
    return max(1.0, max(deviations) / denom)


def modified_euclidean_bound(c: float, xi_max: float, eps: float) -> float:
    """Eq. 11: ``T'_e = c * xi_max * eps`` (Theorem 3 with ``c`` estimated by Eq. 39)."""
    return c * xi_max * eps


# --- cosine bound T_c -------------------------------------------------------------------

@dataclass(frozen=True)
class CosineBound:
    """Corollary 2 for one Euclidean bound ``T``.

    Attributes:
        distance: the cosine-distance bound ``T_c``, or ``None`` if ``||g|| = 0``.
        degrees: the angle bound ``arcsin(T / ||g||)`` in degrees, or ``None``.
        vacuous: ``T >= ||g||``: any angle is possible, reported as ``T_c = 2``, 180 degrees.
    """

    distance: float | None
    degrees: float | None
    vacuous: bool


def cosine_bound(t_e: float, attr_norm: float) -> CosineBound:
    """Corollary 2, Eq. 10: ``T_c = 1 - sqrt(1 - T^2 / ||g||^2)`` for ``0 <= T < ||g||``.

    The angle between ``g(x + delta)`` and ``g(x)`` is at most ``arcsin(T / ||g||)`` (Eq. 27).
    When ``T >= ||g||`` the ball around ``g`` contains the origin, the bound says nothing,
    and the trivial ``T_c = 2`` (180 degrees) is returned with ``vacuous=True``.
    With ``||g|| = 0`` the cosine is undefined: ``None`` and vacuous.
    """
    if attr_norm <= 0.0:
        return CosineBound(None, None, True)
    ratio = t_e / attr_norm
    if ratio >= 1.0:
        return CosineBound(2.0, 180.0, True)
    return CosineBound(1.0 - math.sqrt(1.0 - ratio * ratio), math.degrees(math.asin(ratio)), False)


# --- largest eps for a tolerance (Appendix E, corrected: docs/math.md §3, §5) ---------------------

METRICS = ("euclidean", "cosine", "angle")


def euclidean_tolerance(omega: float, metric: str, attr_norm: float) -> float:
    """The Euclidean deviation ``T`` allowed by a tolerance ``omega`` on ``metric``.

    - ``euclidean``: ``T = omega`` (Eq. 49).
    - ``cosine`` (``0 < omega <= 1``): Corollary 2 solved for ``T``:
      ``1 - sqrt(1 - T^2/||g||^2) <= omega  <=>  T <= ||g|| sqrt(1 - (1 - omega)^2)``
      ``= ||g|| sqrt(omega (2 - omega))`` (the corrected Eq. 51-52).
    - ``angle`` (degrees, ``0 < omega <= 90``): ``T <= ||g|| sin(omega)``.
    """
    if metric == "euclidean":
        return omega
    if metric == "cosine":
        return attr_norm * math.sqrt(omega * (2.0 - omega))
    if metric == "angle":
        return attr_norm * math.sin(math.radians(omega))
    raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")


def max_eps_linear(tolerance: float, slope: float) -> float | None:
    """Eq. 50 generalised: the largest eps with ``slope * eps <= tolerance``.

    ``slope`` is ``T_e / eps`` (``xi_max`` for l2, ``d^(1/2-1/p) xi_max`` for lp,
    ``sqrt(sum |P_ij|)`` for l-inf). ``None`` when ``slope = 0`` (no eps is too large).
    """
    if slope <= 0.0:
        return None
    return tolerance / slope


# --- Proposition 1: the label-change test ---------------------------------------------------

def label_margins(logits: np.ndarray, target: int) -> np.ndarray:
    """``b_{y'} = f_y(x) - f_{y'}(x)`` for every ``y' != y`` (Eq. 8, right-hand side)."""
    return np.delete(logits[target] - logits, target)


def label_directions(class_grads: np.ndarray, target: int) -> np.ndarray:
    """``a_{y'} = grad f_{y'} - grad f_y`` (``(k-1, d)``), Eq. 8's left vector under completeness.

    ``class_grads`` is ``(k, d)``: row ``j`` the gradient (of ``f_j``, or of ``sum_i g^j_i``)
    with respect to the input.
    """
    return np.delete(class_grads - class_grads[target], target, axis=0)


def label_preserved(a: np.ndarray, b: np.ndarray, deltas: list[np.ndarray]) -> bool:
    """Proposition 1, Eq. 8: ``a_{y'}^T delta < b_{y'}`` for every ``y'`` and every ``delta``."""
    return all(bool(np.all(a @ delta < b)) for delta in deltas)


def label_radius(a: np.ndarray, b: np.ndarray, q: float) -> float | None:
    """``min_{y'} b_{y'} / ||a_{y'}||_q``, ``q`` the dual norm.

    By Hölder, ``a^T delta <= ||a||_q ||delta||_p``.

    For every eps below it Eq. 8 holds on the whole lp ball, so the label constraint of
    Eq. 1 is inactive. ``0`` if some margin is already ``<= 0``; ``None`` if no competitor
    can ever overtake (every ``a_{y'} = 0`` with ``b_{y'} > 0``), i.e. no finite radius.
    """
    if b.size == 0:
        return None
    if np.any(b <= 0):
        return 0.0
    norms = np.linalg.norm(a, ord=q, axis=1)
    finite = norms > 0
    if not np.any(finite):
        return None
    return float(np.min(b[finite] / norms[finite]))
