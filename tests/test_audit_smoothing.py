"""Audit of the smoothed-attribution certificate's probabilistic and geometric parts, by
exact computation rather than sampling: the coverage of the mean bounds over every outcome
of two-point laws, the tangent cosine against brute force, Holm's family-wise error by
enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from attrcert.smoothing.certificate import certify_cosine, tolerance_limits
from attrcert.smoothing.concentration import deviation_radius, norm_lower_bound
from attrcert.smoothing.pixels import reject


@pytest.mark.parametrize("alpha", [0.5, 0.1])
def test_mean_bounds_cover_every_two_point_law_exactly(alpha):
    """``X = 1`` with probability ``p``, else ``lo`` (``|X| <= M = 1``): the probability of
    ``|h_hat - h| > b(|h|)`` and of ``|h| < h_norm_lower``, summed exactly over the binomial
    outcomes, is at most ``alpha`` for n = 1..30 and 21 values of p (the audit's largest
    share was 0.2 alpha, over n to 300 and alpha down to 0.01)."""
    for n, lo, p in itertools.product(range(1, 31, 3), (-1.0, 0.0), np.linspace(0, 1, 21)):
        h = p + (1 - p) * lo
        k = np.arange(n + 1)
        estimates = (k + (n - k) * lo) / n
        weights = stats.binom.pmf(k, n, p)
        miss = weights[np.abs(estimates - h) > deviation_radius(n, 1.0, alpha, abs(h))].sum()
        lows = np.array([norm_lower_bound(abs(e), n, 1.0, alpha).norm_lower
                         for e in estimates])
        assert miss <= alpha and weights[lows > abs(h)].sum() <= alpha, (n, lo, p)


def test_the_tangent_cosine_is_the_minimum_over_the_ball():
    """``min cos(h, h + u)`` over ``||u|| <= D`` (dense sampling of the sphere in 3-D, where
    the minimum lies) is ``sqrt(1 - D^2 / ||h||^2)``; certify_cosine, with a huge sample
    (estimate error ~ 0), reports that value for ``D = M V_U / V_S``."""
    rng = np.random.default_rng(0)
    u = rng.standard_normal((200_000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    h = np.array([0.6, 0.0, 0.0])
    for dev in (0.05, 0.3, 0.59):
        moved = h + dev * u
        cos = moved @ h / (np.linalg.norm(moved, axis=1) * 0.6)
        want = math.sqrt(1 - (dev / 0.6) ** 2)
        assert want <= cos.min() <= want + 1e-3
    found = certify_cosine(0.6, samples=10**12, bound=1.0, alpha=0.01, eps=0.1, radius=1.0,
                           d=3)
    q = found.deviation_bound / found.h_norm_lower
    assert found.h_norm_lower == pytest.approx(0.6, abs=1e-5)
    assert found.cos_sim_lower == pytest.approx(math.sqrt(1 - q * q), rel=1e-12)
    assert found.cos_sim_lower < 0.6 / math.hypot(0.6, found.deviation_bound)  # not the paper's


@pytest.mark.parametrize("correction", ["holm", "bonferroni"])
def test_holm_family_wise_error_by_enumeration(correction):
    """Three pixels' exact binomial tests, each true null at its boundary (``p = tau``) or
    false: the probability, summed over every outcome, of rejecting any true null is at
    most ``alpha``; and Holm rejects at least what Bonferroni does."""
    n, tau, alpha = 12, 0.6, 0.2
    outcomes = np.arange(n + 1)
    pvalue = stats.binom.sf(outcomes - 1, n, tau)
    every = list(itertools.product(outcomes, repeat=3))
    rejected = np.array([reject(pvalue[list(hits)], alpha, correction) for hits in every])
    bonferroni = np.array([reject(pvalue[list(hits)], alpha, "bonferroni") for hits in every])
    assert np.all(rejected >= bonferroni)
    pmf = {p: stats.binom.pmf(outcomes, n, p) for p in (tau, 0.99)}
    hits = np.array(every)
    for truths in itertools.product([tau, 0.99], repeat=3):  # 0.99: a false null
        nulls = [i for i, p in enumerate(truths) if p == tau]
        weight = np.prod([pmf[truths[i]][hits[:, i]] for i in range(3)], axis=0)
        wrong = rejected[:, nulls].any(1) if nulls else np.zeros(len(every), dtype=bool)
        assert float(weight[wrong].sum()) <= alpha + 1e-12, truths


@pytest.mark.parametrize("metric,omegas", [("cosine", (0.001, 0.01, 0.3, 0.9, 0.99, 0.999)),
                                           ("angle", (0.5, 10.0, 60.0, 89.0, 89.9)),
                                           ("euclidean", (0.01, 0.3, 1.5))])
def test_the_certificate_at_eps_max_and_radius_min_meets_the_tolerance(metric, omegas):
    """``certify_cosine`` at ``eps = eps_max`` (and at ``r = radius_min``) meets the tolerance
    as it reports it (``1 - cos_sim_lower``, ``angle_deg``, ``deviation_bound``), to the
    last bit. Before the fix the closed-form inversion missed by up to 3e-14 (29 of 150
    cases: ``1 - cos`` 0.99000000000001 at ``omega = 0.99``)."""
    def reached(c) -> float:
        return {"cosine": 1.0 - c.cos_sim_lower, "angle": c.angle_deg,
                "euclidean": c.deviation_bound}[metric]

    for d, omega, h in itertools.product((3, 100, 150528), omegas, (0.05, 0.3, 0.7, 0.95)):
        mean = certify_cosine(h, samples=1000, bound=1.0, alpha=0.01, eps=0.1, radius=0.5,
                              d=d).h_norm_lower
        lim = tolerance_limits(mean, bound=1.0, eps=0.1, radius=0.5, d=d, omega=omega,
                               metric=metric)
        if lim.eps_max:
            at = certify_cosine(h, samples=1000, bound=1.0, alpha=0.01, eps=lim.eps_max,
                                radius=0.5, d=d)
            assert reached(at) <= omega and (metric == "euclidean" or not at.vacuous)
            above = certify_cosine(h, samples=1000, bound=1.0, alpha=0.01,
                                   eps=lim.eps_max * (1 + 1e-9), radius=0.5, d=d)
            assert (above.vacuous and metric != "euclidean") or reached(above) > omega
        if lim.radius_min:
            at = certify_cosine(h, samples=1000, bound=1.0, alpha=0.01, eps=0.1,
                                radius=lim.radius_min, d=d)
            assert reached(at) <= omega and (metric == "euclidean" or not at.vacuous)
