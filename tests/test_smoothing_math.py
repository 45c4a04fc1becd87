"""The mathematics of ``attrcert smooth`` (attrcert.smoothing's pure modules): the volume
of two overlapping balls against closed forms, mpmath and Monte Carlo; the concentration
bounds' coverage on toy distributions (and that the check would catch a bound too small);
the cosine certificate against an attribution that attains it (and that breaks the
expression the paper states); the tolerance forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attrcert.smoothing import (
    certify_cosine,
    deviation_radius,
    log_lune_fraction,
    lune_fraction,
    norm_lower_bound,
    offset_for_ratio,
    tolerance_limits,
    volume_ratio,
)
from attrcert.smoothing.concentration import bernstein_radius, mcdiarmid_radius

mpmath = pytest.importorskip("mpmath")


# --- the geometry ---------------------------------------------------------------------------

def uniform_ball(seed: int, n: int, d: int, radius: float) -> np.ndarray:
    """``n`` points uniform in ``B(0, radius)`` of ``R^d`` (numpy's own generator: an
    oracle independent of attrcert.smoothing.sampling, which has its own test)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d))
    return z / np.linalg.norm(z, axis=1, keepdims=True) * radius * rng.random((n, 1)) ** (1 / d)


def lens_fraction_2d(t: float) -> float:
    """The area of two unit discs' intersection, centres ``2 t`` apart, over pi."""
    return (2 * math.acos(t) - 2 * t * math.sqrt(1 - t * t)) / math.pi


def lens_fraction_3d(t: float) -> float:
    """Two unit balls, centres ``e = 2 t`` apart: ``pi (4 + e)(2 - e)^2 / 12`` over
    ``4 pi / 3``."""
    e = 2 * t
    return (4 + e) * (2 - e) ** 2 / 16


@pytest.mark.parametrize("t", [1e-6, 0.01, 0.2, 0.5, 0.9, 0.999])
def test_the_lune_matches_the_closed_forms_of_one_two_and_three_dimensions(t):
    radius = 2.5
    eps = 2 * t * radius
    assert lune_fraction(eps, radius, 1) == pytest.approx(t, rel=1e-12)
    assert lune_fraction(eps, radius, 2) == pytest.approx(1 - lens_fraction_2d(t), rel=1e-10)
    assert lune_fraction(eps, radius, 3) == pytest.approx(1 - lens_fraction_3d(t), rel=1e-10)
    assert volume_ratio(eps, radius, 3) == pytest.approx(2 * lune_fraction(eps, radius, 3))


def test_disjoint_and_identical_balls():
    assert volume_ratio(0.0, 1.0, 150528) == 0.0
    assert volume_ratio(2.0, 1.0, 5) == 2.0 and volume_ratio(7.0, 1.0, 5) == 2.0
    assert log_lune_fraction(0.0, 1.0, 5) == -math.inf


@pytest.mark.parametrize("d", [1, 2, 7, 784, 3072, 150528])
@pytest.mark.parametrize("t", [1e-7, 1e-5, 1e-3, 1e-2, 0.1])
def test_high_dimensions_against_mpmath_in_log_space_too(d, t):
    mpmath.mp.dps = 40
    if d * t * t > 2000:  # mpmath's series gives up; the fraction is 1 to double precision
        assert lune_fraction(2 * t, 1.0, d) == 1.0
        return
    exact = mpmath.betainc(mpmath.mpf(1) / 2, mpmath.mpf(d + 1) / 2, 0, mpmath.mpf(t) ** 2,
                           regularized=True)
    assert lune_fraction(2 * t, 1.0, d) == pytest.approx(float(exact), rel=1e-12)
    log = log_lune_fraction(2 * t, 1.0, d)
    assert log == pytest.approx(float(mpmath.log(exact)), rel=1e-11, abs=1e-11)
    assert math.exp(log) == pytest.approx(float(exact), rel=1e-11)


def test_the_naive_complement_loses_the_digits_the_symmetric_form_keeps():
    """``1 - I_{1 - t^2}((d + 1)/2, 1/2)`` at ImageNet's d: why geometry.py evaluates
    ``I_{t^2}(1/2, (d + 1)/2)`` instead."""
    from scipy import special

    mpmath.mp.dps = 40
    d, t = 150528, 1e-7
    exact = float(mpmath.betainc(0.5, mpmath.mpf(d + 1) / 2, 0, mpmath.mpf(t) ** 2,
                                 regularized=True))
    naive = 1 - special.betainc((d + 1) / 2, 0.5, 1 - t * t)
    assert abs(naive / exact - 1) > 1e-5
    assert abs(lune_fraction(2 * t, 1.0, d) / exact - 1) < 1e-13


@pytest.mark.parametrize("d", [2, 3, 5, 10])
def test_the_volume_ratio_against_monte_carlo(d):
    """Points uniform in ``B(0, r)`` outside ``B(delta, r)``: the lune, within 5 standard
    errors, at three offsets."""
    radius, n = 1.5, 200_000
    points = uniform_ball(d, n, d, radius)
    assert np.linalg.norm(points, axis=1).max() <= radius * (1 + 1e-12)
    for t in (0.05, 0.25, 0.6):
        eps = 2 * t * radius
        shift = np.zeros(d)
        shift[d - 1] = eps
        outside = np.mean(np.linalg.norm(points - shift, axis=1) > radius)
        expected = lune_fraction(eps, radius, d)
        se = math.sqrt(expected * (1 - expected) / n)
        assert abs(outside - expected) < 5 * se + 1e-12, (d, t, outside, expected)


@pytest.mark.parametrize("d", [1, 2, 784, 150528])
@pytest.mark.parametrize("ratio", [1e-9, 1e-3, 0.3, 1.0, 1.9, 1.9999])
def test_the_inverse_never_overstates(d, ratio):
    t = offset_for_ratio(ratio, d)
    assert t is not None and 0 < t < 1
    assert volume_ratio(2 * t, 1.0, d) <= ratio
    assert volume_ratio(2 * t * (1 + 1e-7), 1.0, d) > ratio  # and gives away almost nothing
    assert offset_for_ratio(0.0, d) == 0.0 and offset_for_ratio(2.0, d) is None


# --- the concentration bound ------------------------------------------------------------------

def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _signs(rng, shape):
    x = np.zeros((*shape, 3))
    x[..., 0] = rng.choice([-1.0, 1.0], size=shape)
    return x, np.zeros(3)


def _agreeing(rng, shape):  # unit vectors near e1: ||h|| ~ 0.96, Bernstein's regime
    x = _unit(np.array([1.0, 0.0, 0.0]) + 0.25 * rng.standard_normal((*shape, 3)))
    mean = _unit(np.array([1.0, 0.0, 0.0]) + 0.25 * rng.standard_normal((2_000_000, 3)))
    return x, mean.mean(0)


def _clipped(rng, shape):  # norms uniform in [0, 1], two directions
    direction = np.where(rng.random(shape)[..., None] < 0.7, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    return rng.random(shape)[..., None] * direction, 0.5 * np.array([0.7, 0.3, 0.0])


@pytest.mark.parametrize("draw", [_signs, _agreeing, _clipped])
@pytest.mark.parametrize("n", [5, 40])
def test_the_mean_bound_covers_at_its_confidence(draw, n):
    """Over 20000 repetitions: ``||h_hat - h|| > b(||h||)`` and ``||h|| < h_norm_lower`` each
    happen in at most an alpha share (plus 3 binomial standard errors)."""
    rng = np.random.default_rng(7)
    alpha, trials = 0.1, 20_000
    x, mean = draw(rng, (trials, n))
    estimates = x.mean(1)
    error = np.linalg.norm(estimates - mean, axis=1)
    h = float(np.linalg.norm(mean))
    slack = 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert np.mean(error > deviation_radius(n, 1.0, alpha, h)) <= alpha + slack
    lows = np.array([norm_lower_bound(float(np.linalg.norm(e)), n, 1.0, alpha).norm_lower
                     for e in estimates[:4000]])
    assert np.mean(h < lows) <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / 4000)


def test_the_coverage_check_catches_a_bound_that_is_too_small():
    rng = np.random.default_rng(8)
    alpha, n, trials = 0.1, 40, 20_000
    x, mean = _signs(rng, (trials, n))
    error = np.linalg.norm(x.mean(1) - mean, axis=1)
    assert np.mean(error > 0.4 * deviation_radius(n, 1.0, alpha, 0.0)) > 2 * alpha


def test_the_two_bounds_and_their_regimes():
    n, alpha = 100, 1e-3
    assert mcdiarmid_radius(n, 1.0, alpha) == pytest.approx(
        (1 + math.sqrt(2 * math.log(1 / alpha))) / math.sqrt(n))
    # Bernstein wins when the vectors agree, and the min is used
    assert bernstein_radius(n, 1.0, alpha, 0.95) < mcdiarmid_radius(n, 1.0, alpha, 0.95)
    assert bernstein_radius(5, 1.0, alpha, 0.0) > mcdiarmid_radius(5, 1.0, alpha, 0.0)
    assert deviation_radius(n, 2.0, alpha, 1.0) == pytest.approx(
        2 * deviation_radius(n, 1.0, alpha, 0.5))  # homogeneous in M


@pytest.mark.parametrize("estimate", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_the_norm_lower_bound_is_the_smallest_consistent_norm(estimate):
    n, alpha = 60, 0.01
    bound = norm_lower_bound(estimate, n, 1.0, alpha)
    s = bound.norm_lower
    assert 0 <= s <= estimate
    if s > 0:  # s is (just below) the boundary: s + b(s) reaches the estimate from below
        assert s + deviation_radius(n, 1.0, alpha, s) <= estimate + 1e-12
        above = s + 1e-9
        assert above + deviation_radius(n, 1.0, alpha, above) >= estimate - 1e-12
    assert bound.radius == pytest.approx(deviation_radius(n, 1.0, alpha, s))


# --- the certificate --------------------------------------------------------------------------

class Lunes:
    """An attribution ``g: R^2 -> R^2`` with ``||g|| <= 1``, piecewise constant on the two
    lunes and the lens of ``B(0, 1)`` and ``B(delta, 1)``, that makes ``h(delta) - h(0)``
    the tangent worst case: ``cos(h(delta), h(0)) = sqrt(1 - D^2/||h(0)||^2)``, exactly the
    certificate, while the paper's ``||h|| / sqrt(||h||^2 + D^2)`` is larger."""

    def __init__(self, eps: float, norm: float) -> None:
        self.delta = np.array([eps, 0.0])
        p = lune_fraction(eps, 1.0, 2)
        self.deviation = 2 * p  # D = M V_U / V_S with M = 1
        q = self.deviation / norm
        self.h0 = np.array([norm, 0.0])
        turn = np.array([-self.deviation * q, self.deviation * math.sqrt(1 - q * q)])
        self.h1 = self.h0 + turn
        self.lune_a = turn / (2 * p)  # on B(delta) only: norm 1
        self.lune_c = -turn / (2 * p)  # on B(0) only
        self.lens = (self.h0 + turn / 2) / (1 - p)
        assert np.linalg.norm(self.lens) <= 1.0

    def __call__(self, z: np.ndarray) -> np.ndarray:
        in0 = np.linalg.norm(z, axis=1) <= 1.0
        in1 = np.linalg.norm(z - self.delta, axis=1) <= 1.0
        out = np.zeros_like(z)
        out[in0 & in1] = self.lens
        out[in0 & ~in1] = self.lune_c
        out[in1 & ~in0] = self.lune_a
        return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_an_attribution_attains_the_certificate_and_breaks_the_papers_expression():
    eps, norm = 0.1, 0.15
    g = Lunes(eps, norm)
    eta = uniform_ball(3, 400_000, 2, 1.0)
    h0, h1 = g(eta).mean(0), g(eta + g.delta).mean(0)  # Monte Carlo agrees with the design
    assert np.linalg.norm(h0 - g.h0) < 0.01 and np.linalg.norm(h1 - g.h1) < 0.01
    truth = _cos(g.h1, g.h0)
    q = g.deviation / norm
    assert truth == pytest.approx(math.sqrt(1 - q * q), rel=1e-12)  # the tangent
    papers = norm / math.sqrt(norm**2 + g.deviation**2)
    assert papers > truth + 0.2  # 0.76 against 0.53: not a lower bound
    # attrcert's certificate from the exact norm (n huge, so the estimate error vanishes)
    exact = certify_cosine(norm, samples=10**15, bound=1.0, alpha=0.5, eps=eps, radius=1.0, d=2)
    assert exact.cos_sim_lower <= truth + 1e-6
    assert exact.cos_sim_lower == pytest.approx(truth, abs=1e-5)  # attained: it is tight
    # from the 400000 samples drawn, at 99.9%: lower, still valid
    estimated = certify_cosine(float(np.linalg.norm(h0)), samples=400_000, bound=1.0,
                               alpha=1e-3, eps=eps, radius=1.0, d=2)
    assert estimated.cos_sim_lower <= truth


def test_certificate_fields_and_vacuous_cases():
    c = certify_cosine(0.9, samples=1000, bound=1.0, alpha=1e-3, eps=0.001, radius=1.0, d=784)
    assert c.deviation_bound == pytest.approx(volume_ratio(0.001, 1.0, 784))
    assert c.h_norm_lower < 0.9 and c.estimate_error > 0
    assert not c.vacuous and -1 < c.cos_to_estimate_lower < c.cos_sim_lower < 1
    assert c.angle_deg == pytest.approx(math.degrees(math.acos(c.cos_sim_lower)))
    v = certify_cosine(0.9, samples=1000, bound=1.0, alpha=1e-3, eps=1.0, radius=1.0, d=784)
    assert v.vacuous and v.cos_sim_lower == -1.0 and v.angle_deg == 180.0
    zero = certify_cosine(0.0, samples=10, bound=1.0, alpha=0.1, eps=0.0, radius=1.0, d=3)
    assert zero.vacuous and zero.h_norm_lower == 0.0
    same = certify_cosine(0.5, samples=10**9, bound=1.0, alpha=0.1, eps=0.0, radius=1.0, d=3)
    assert same.cos_sim_lower == 1.0 and same.deviation_bound == 0.0


@pytest.mark.parametrize("metric,omega", [("cosine", 0.05), ("angle", 20.0),
                                          ("euclidean", 0.3)])
def test_eps_max_and_radius_min_meet_the_tolerance_and_no_more(metric, omega):
    h, d, radius, eps = 0.8, 3072, 2.0, 0.01
    lim = tolerance_limits(h, bound=1.0, eps=eps, radius=radius, d=d, omega=omega,
                           metric=metric)

    def meets(e: float, r: float) -> bool:
        c = certify_cosine(1.0, samples=10**30, bound=1.0, alpha=0.5, eps=e, radius=r, d=d)
        dev = c.deviation_bound
        if metric == "euclidean":
            return dev <= omega
        if dev >= h:
            return False
        cos = math.sqrt(1 - (dev / h) ** 2)
        return (1 - cos <= omega) if metric == "cosine" else \
            (math.degrees(math.acos(cos)) <= omega)

    assert lim.eps_max is not None and lim.radius_min is not None
    assert meets(lim.eps_max, radius) and not meets(lim.eps_max * (1 + 1e-6), radius)
    assert meets(eps, lim.radius_min) and not meets(eps, lim.radius_min * (1 - 1e-6))
    assert lim.radius_min_floor is not None and lim.radius_min_floor <= lim.radius_min


def test_limits_when_nothing_or_everything_is_certified():
    none = tolerance_limits(0.0, bound=1.0, eps=0.1, radius=1.0, d=10, omega=0.1,
                            metric="cosine")
    assert none.eps_max == 0.0 and none.radius_min is None
    every = tolerance_limits(0.5, bound=1.0, eps=0.1, radius=1.0, d=10, omega=2.5,
                             metric="euclidean")
    assert every.eps_max is None and every.radius_min == 0.0
