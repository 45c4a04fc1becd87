"""The largest safe eps for a tolerance (Appendix E, docs/math.md §3), per sample of a batch.

``metric="euclidean"``: ``T_e(eps) <= omega`` (Eq. 50; lp and l-inf through their ``T_e``).
``"cosine"`` (``0 < omega <= 1``): Corollary 2 inverted, ``T_e(eps) <=
||g|| sqrt(omega (2 - omega))`` (Eq. 51-52 as corrected in docs/math.md §5). ``"angle"`` (degrees,
``0 < omega <= 90``): ``T_e(eps) <= ||g|| sin(omega)``. With ``modified`` (l2 only) the
bound is ``T'_e = c(eps) xi_max eps``, solved by bisection (:func:`bisect_modified`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import bounds
from .analysis import Analysis, attribution_deviations
from .document import Record, finite_or_none
from .errors import OptionError
from .records import abs_sum_gram, common_fields
from .run import Run

__all__ = ["Tolerance", "bisect_modified", "check_modified", "check_tolerance",
           "eps_max_records"]


def check_tolerance(omega: float, metric: str) -> None:
    """Raise :class:`OptionError` unless ``omega`` is a valid tolerance for ``metric``."""
    if metric not in bounds.METRICS:
        raise OptionError(f"unknown metric {metric!r}: use one of {', '.join(bounds.METRICS)}")
    omega = float(omega)
    if not math.isfinite(omega) or omega <= 0:
        raise OptionError(f"omega = {omega!r} must be a finite number > 0")
    if metric == "cosine" and omega > 1:
        raise OptionError("a cosine-distance tolerance omega must lie in (0, 1]")
    if metric == "angle" and omega > 90:
        raise OptionError("an angle tolerance omega must lie in (0, 90] degrees")


@dataclass(frozen=True)
class Tolerance:
    """What :func:`attrcert.max_eps` solves for.

    Attributes:
        omega: the tolerance (a distance, a cosine distance in ``(0, 1]`` or degrees).
        metric: ``"euclidean"``, ``"cosine"`` or ``"angle"``.
        modified: use ``T'_e`` (Eq. 11; l2 only) instead of ``T_e``.
        bisection_steps: halvings of the bisection for ``modified``.
    """

    omega: float
    metric: str = "euclidean"
    modified: bool = False
    bisection_steps: int = 30

    def __post_init__(self) -> None:
        check_tolerance(self.omega, self.metric)


def check_modified(tolerance: Tolerance, p: float) -> None:
    """``modified`` (``T'_e``, Eq. 11) is defined for the l2 norm only."""
    if tolerance.modified and p != 2.0:
        raise OptionError("modified (T'_e) is defined for the l2 norm only: use norm=2")


def bisect_modified(run: Run, a: Analysis, linear: list[float | None],
                    tolerances: list[float], iterations: int) -> list[float | None]:
    """Largest eps in ``[0, eps_linear]`` with ``c(eps) xi_max eps <= tolerance``, by bisection.

    ``c(eps) xi_max eps = max(xi_max eps, dev(eps))`` (Eq. 39 times ``xi_max eps``), with
    ``dev(eps) = max_s ||g(x + s eps v_max) - g(x)||``. Samples with an unbounded linear
    eps (``xi_max = 0``) stay unbounded. One batched attribution call per step (in passes
    of the run's :attr:`~attrcert.plan.RunPlan.points_per_value_pass`).
    """
    n = len(linear)
    xi = a.spectrum.xi_max.numpy()
    tol = np.array(tolerances)
    hi = np.array([e if e is not None else 0.0 for e in linear])
    active = np.array([e is not None and e > 0 for e in linear])
    lo = np.zeros(n)

    def meets(eps_vec: np.ndarray) -> np.ndarray:
        e = torch.from_numpy(eps_vec).view(1, n, 1)
        v = a.spectrum.v_max.unsqueeze(0)
        dev = attribution_deviations(run.model, a, run.attribution, torch.cat([e * v, -e * v]),
                                     run.plan.points_per_value_pass)
        value = np.maximum(xi * eps_vec, dev.max(0).values.numpy())
        return value <= tol

    ok_hi = meets(hi)
    lo[ok_hi] = hi[ok_hi]
    todo = active & ~ok_hi
    for _ in range(iterations if todo.any() else 0):
        mid = np.where(todo, 0.5 * (lo + hi), lo)
        ok = meets(mid)
        lo = np.where(todo & ok, mid, lo)
        hi = np.where(todo & ~ok, mid, hi)
    return [None if linear[i] is None else float(lo[i]) for i in range(n)]


def eps_max_records(run: Run, a: Analysis, p: float, tolerance: Tolerance) -> list[Record]:
    """The records of one batch: the common fields plus ``omega``, ``metric``,
    ``modified``, ``eps_max`` (``None`` with ``eps_max_unbounded`` when no eps is too
    large), ``eps_max_linear`` (from ``T_e``, Eq. 50/52) and ``T_e_method``."""
    n, d = a.attr.shape
    tolerances, slopes, methods = [], [], []
    for i in range(n):
        te = bounds.euclidean_bound(float(a.spectrum.xi_max[i]), abs_sum_gram(a, i), d, p)
        tolerances.append(bounds.euclidean_tolerance(tolerance.omega, tolerance.metric,
                                                     float(a.attr[i].norm())))
        slopes.append(te.slope)
        methods.append(te.method)
    linear = [bounds.max_eps_linear(t, s) for t, s in zip(tolerances, slopes, strict=True)]
    found = (bisect_modified(run, a, linear, tolerances, tolerance.bisection_steps)
             if tolerance.modified else linear)
    records = []
    for i in range(n):
        rec = common_fields(run, a, i, p)
        rec.update({
            "omega": tolerance.omega,
            "metric": tolerance.metric,
            "modified": tolerance.modified,
            "eps_max": finite_or_none(found[i]),
            "eps_max_linear": finite_or_none(linear[i]),
            "eps_max_unbounded": found[i] is None,
            "T_e_method": methods[i],
        })
        records.append(rec)
    return records
