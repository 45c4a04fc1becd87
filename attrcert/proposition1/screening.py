"""Screening: the label radius ``min_j b_j / ||a_j||_q`` from the few classes that can attain
it (the package doc)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from .jacobian import ClassNormBounds, LogitJacobian

__all__ = ["dual_factor", "screened_label_radius", "screened_radius"]

#: relative residual of the Golub-Kahan solve for the deflated norm ``rho``
NORM_TOL = 1e-2
#: Golub-Kahan steps on ``J_f`` behind the screening bounds: the first, and the most
FIRST_STEPS = 16
MAX_STEPS = 128
#: Below this many competitors every class gradient is computed: the first screening steps
#: (``2 FIRST_STEPS`` logit-Jacobian products, each about two class gradients) cost more.
SCREEN_MIN = 64
#: Class gradients per screening pass: small, so that screening stops soon after the bar
#: is set (a class gradient costs the same one at a time, through the kept logit graph).
SCREEN_PASS = 32


def dual_factor(d: int, q: float) -> float:
    """``c`` with ``||a||_q <= c ||a||_2`` on ``R^d``: ``d^(1/q - 1/2)`` for ``q < 2``, else 1."""
    return 1.0 if q >= 2 else float(d) ** (1.0 / q - 0.5)


def _lower_factor(d: int, q: float) -> float:
    """``c`` with ``||a||_q >= c ||a||_2`` on ``R^d``: ``d^(1/q - 1/2)`` for ``q > 2``, else 1."""
    return 1.0 if q <= 2 else float(d) ** (1.0 / q - 0.5)


def screened_radius(margins: np.ndarray, upper: np.ndarray,
                    norms: Callable[[np.ndarray], np.ndarray],
                    per_pass: int) -> tuple[float, int]:
    """``min_j margins_j / ||a_j||_q`` over classes ``j`` (margins all ``> 0``), given upper
    bounds ``upper_j >= ||a_j||_q`` and ``norms(indices)``, the exact norms of some classes.

    Classes go in increasing order of ``margins_j / upper_j``, ``per_pass`` at a time, until
    the next one's is at least the best exact ratio so far (every class left then has a
    ratio ``>= margins_j / upper_j >=`` best). Returns ``(radius, classes computed)``;
    ``inf`` when no class can ever overtake (every ``a_j = 0``)."""
    with np.errstate(divide="ignore"):
        lower = np.where(upper > 0, margins / np.where(upper > 0, upper, 1.0), math.inf)
    order = np.argsort(lower, kind="stable")
    best, done, first = math.inf, 0, 0
    while first < order.size and lower[order[first]] < best:
        chunk = order[first : first + max(1, per_pass)]
        chunk = chunk[lower[chunk] < best]  # the sorted tail of the pass can be skipped
        found = norms(chunk)
        done += chunk.size
        first += chunk.size
        positive = found > 0
        if positive.any():
            best = min(best, float(np.min(margins[chunk][positive] / found[positive])))
    return best, done




class _Known:
    """The exact norms computed so far (by position), and the seconds they took."""

    def __init__(self, norms: Callable[[np.ndarray], np.ndarray]) -> None:
        self.exact = norms
        self.values: dict[int, float] = {}
        self.seconds = 0.0

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        missing = np.array([p for p in positions.tolist() if p not in self.values],
                           dtype=np.int64)
        if missing.size:
            start = time.perf_counter()
            for p, value in zip(missing.tolist(), self.exact(missing).tolist(), strict=True):
                self.values[p] = value
            self.seconds += time.perf_counter() - start
        return np.array([self.values[p] for p in positions.tolist()], dtype=np.float64)

    def best(self, margins: np.ndarray) -> float:
        ratios = [margins[p] / v for p, v in self.values.items() if v > 0]
        return min(ratios, default=math.inf)

    def per_class(self) -> float:
        return self.seconds / max(1, len(self.values))


def screened_label_radius(jac: LogitJacobian, target: int, margins: np.ndarray,
                          norms: Callable[[np.ndarray], np.ndarray], *, q: float,
                          per_pass: int, seed: int, tol: float = NORM_TOL,
                          max_steps: int = MAX_STEPS, screen_min: int = SCREEN_MIN
                          ) -> tuple[float, int]:
    """``min_{j != y} b_j / ||a_j||_q`` of one sample, screened (the package doc).

    ``margins``: ``(k,)`` ``b_j`` (all ``> 0`` but the target's); ``norms(classes)``: the
    exact ``||a_j||_q`` of some classes. The Golub-Kahan steps behind the bounds
    (:class:`ClassNormBounds`) double from :data:`FIRST_STEPS` while the classes they could
    still spare cost more, at the measured seconds per class gradient, than the next
    doubling at the measured seconds per product; with at most ``screen_min`` competitors
    every one is computed. Returns ``(radius, classes computed)``.
    """
    others = np.flatnonzero(np.arange(margins.size) != target)
    b = margins[others]
    known = _Known(lambda positions: norms(others[positions]))
    if others.size <= screen_min:  # too few to pay for the screening bounds
        return screened_radius(b, np.full(b.size, math.inf), known, per_pass)[0], others.size
    per_pass = max(1, min(per_pass, SCREEN_PASS))
    up = dual_factor(jac.d, q)
    bounds = ClassNormBounds(jac, target, seed)
    steps, spent = FIRST_STEPS, 0.0
    while True:
        start = time.perf_counter()
        bounds.extend(steps)
        found = bounds.bounds(tol)
        spent += time.perf_counter() - start
        upper = up * found.upper[others]
        with np.errstate(divide="ignore"):
            lower = np.where(upper > 0, b / np.where(upper > 0, upper, 1.0), math.inf)
        if not known.values:  # the likeliest minimisers first: they set the bar
            known(np.argsort(lower, kind="stable")[:per_pass])
        best = known.best(b)
        need = int(np.sum(lower < best)) - sum(1 for p in known.values if lower[p] < best)
        per_product = spent / max(1, bounds.products)
        more = per_product * (2 * steps + found.products)
        if bounds.next is None or steps >= max_steps or need * known.per_class() <= more:
            break
        steps *= 2
    radius, _ = screened_radius(b, upper, known, per_pass)
    return radius, len(known.values)
