"""Audit of ``--beta-smooth``: every replacement tends to the operation it replaces as
beta grows, also where the rewrite check (torch's own operations put back) cannot see a
wrong formula; and what the smoothness probe does not see."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attrcert.loading.smooth_ops import smooth_clamp, smooth_max_pool2d
from attrcert.loading.smoothing import beta_smooth
from attrcert.smoothness import find_nonsmooth


class _Clamped(nn.Module):
    """A linear head behind ``clamp(x, lo, hi)`` with ``lo > hi`` (somewhere)."""

    def __init__(self, lo: float | torch.Tensor, hi: float | torch.Tensor) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3).double()
        self.lo, self.hi = lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.clamp(x.flatten(1), self.lo, self.hi))


@pytest.mark.parametrize("bounds", [
    (1.0, 0.0),  # torch: 0 everywhere
    (torch.tensor([0.0, 2.0, 0.0, 0.0], dtype=torch.float64),  # one element lo > hi
     torch.ones(4, dtype=torch.float64)),
])
def test_clamp_whose_min_exceeds_its_max(bounds):
    """torch's clamp is ``min(max(x, lo), hi)``: ``hi`` where ``lo > hi``. The identity
    ``lo + relu(x - lo) - relu(x - hi)`` gives ``lo`` there for ``x < hi``, so before the
    fix the smoothed model stayed 0.75 away from the original at every beta (1e5 too),
    and the rewrite check passed: it puts torch's clamp back, not the formula."""
    model = _Clamped(*bounds).eval()
    x = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64) * 2
    smoothed = beta_smooth(model, 1e6, x)
    with torch.no_grad():
        assert float((smoothed(x) - model(x)).abs().max()) < 1e-5
    lo, hi = bounds
    z = torch.linspace(-4, 4, 801, dtype=torch.float64).reshape(-1, 1).expand(-1, 4)
    want = torch.clamp(z, lo, hi)
    for beta in (1e2, 1e4, 1e6):
        err = float((smooth_clamp(z, lo, hi, beta) - want).abs().max())
        assert err <= 2 * 0.7 / beta  # |s - relu| <= log 2 / beta, twice


def test_max_pool_smoothing_tends_to_max_pooling():
    """Every kernel/stride/padding/dilation/ceil_mode combination on odd sizes, inputs all
    negative (padding read as 0 would win): ``LSE_beta`` of the valid elements is within
    ``log(k) / beta`` above the max (672 configurations checked in the audit)."""
    gen = torch.Generator().manual_seed(0)
    beta = 1e7
    for h, w in [(5, 7), (7, 4)]:
        x = torch.randn(1, 2, h, w, generator=gen, dtype=torch.float64) - 5.0
        for k, s, p, d, ceil in itertools.product([2, 3, (2, 3)], [None, 2, (1, 2)], [0, 1],
                                                  [1, 2], [False, True]):
            try:
                want = F.max_pool2d(x, k, s, p, d, ceil)
            except RuntimeError:  # torch refuses the configuration
                continue
            got = smooth_max_pool2d(x, beta, k, s, p, d, ceil)
            assert got.shape == want.shape
            assert float((got - want).min()) >= -1e-12
            assert float((got - want).max()) <= 2.0 / beta + 1e-12


class _MaskReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (x > 0)


class _WhereLeaky(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, 0.1 * x)


@pytest.mark.xfail(strict=True, reason="the smoothness probe lists ATen ops by name; a ReLU "
                   "written with a comparison (x * (x > 0), torch.where(x > 0, ...)) is not "
                   "seen, so the model is called smooth, --beta-smooth returns it unchanged "
                   "and saliency reports xi_max = 0 with no degenerate note")
@pytest.mark.parametrize("act", [_MaskReLU(), _WhereLeaky()])
def test_a_relu_written_with_a_comparison_is_not_smooth(act):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), act, nn.Linear(8, 3)).double().eval()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    assert find_nonsmooth(model, x) != []


_LOG2 = 0.6931471805599453


def _elementwise_cases():
    """(name, smoothed(z, beta), exact(z), c(z)) with ``|smoothed - exact| <= c / beta`` from
    ``0 <= s - relu <= log 2 / beta`` applied to each identity's ReLUs."""
    from attrcert.loading import smooth_ops as ops
    w = torch.tensor([0.25, -0.5, 1.5], dtype=torch.float64)  # PReLU slopes, one above 1
    return [
        ("relu", ops.smooth_relu, F.relu, lambda z: _LOG2 + 0 * z),
        ("leaky", lambda z, b: ops.smooth_leaky_relu(z, -0.3, b),
         lambda z: F.leaky_relu(z, -0.3), lambda z: 1.3 * _LOG2 + 0 * z),
        ("prelu", lambda z, b: ops.smooth_prelu(z, w, b), lambda z: F.prelu(z, w),
         lambda z: (1 - w).abs().reshape(1, 3, 1, 1) * _LOG2 + 0 * z),
        ("clamp_min", lambda z, b: ops.smooth_clamp(z, -0.5, None, b),
         lambda z: torch.clamp(z, min=-0.5), lambda z: _LOG2 + 0 * z),
        ("clamp_max", lambda z, b: ops.smooth_clamp(z, None, 0.7, b),
         lambda z: torch.clamp(z, max=0.7), lambda z: _LOG2 + 0 * z),
        ("hardsigmoid", ops.smooth_hardsigmoid, F.hardsigmoid, lambda z: _LOG2 / 6 + 0 * z),
        ("hardswish", ops.smooth_hardswish, F.hardswish, lambda z: z.abs() * _LOG2 / 6),
        ("maximum", lambda z, b: ops.smooth_maximum(z, z.flip(-1), b),
         lambda z: torch.maximum(z, z.flip(-1)), lambda z: _LOG2 + 0 * z),
        ("minimum", lambda z, b: ops.smooth_minimum(z, z.flip(-1), b),
         lambda z: torch.minimum(z, z.flip(-1)), lambda z: _LOG2 + 0 * z),
    ]


@pytest.mark.parametrize("case", _elementwise_cases(), ids=lambda c: c[0])
def test_each_elementwise_replacement_is_within_its_bound(case):
    """Every element-wise row of the table against torch's own operation on ``(2, 3, 5, 7)``
    values around the kinks (``0, +-3, lo, hi``), for beta from 1 to 1e6: within
    ``c / beta``, ``c`` from ``0 <= s - relu <= log 2 / beta``; ``max`` smoothed from
    above, ``min`` from below."""
    name, smooth, exact, c = case
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64) * 4
    z[0, 0, 0, :5] = torch.tensor([0.0, 3.0, -3.0, -0.5, 0.7], dtype=torch.float64)
    want = exact(z)
    for beta in (1.0, 10.0, 1e3, 1e6):
        err = smooth(z, beta) - want
        assert err.shape == want.shape
        assert bool((err.abs() <= c(z) / beta + 1e-12).all()), (name, beta)
        if name == "maximum":
            assert float(err.min()) >= -1e-12
        if name == "minimum":
            assert float(err.max()) <= 1e-12


class _Everything(nn.Module):
    """Every smoothable operation in one network: per-channel PReLU (a slope above 1, one
    of 0), LeakyReLU(1.5), Hardswish, Hardsigmoid, maximum, minimum, ReLU6, Hardtanh,
    max-pooling with padding and ceil_mode, adaptive max-pooling on sides it does not
    divide, F.relu."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.p = nn.Conv2d(3, 4, 3, padding=1), nn.PReLU(4)
        self.c2, self.leaky = nn.Conv2d(4, 4, 3), nn.LeakyReLU(1.5)
        self.hs, self.hg = nn.Hardswish(), nn.Hardsigmoid()
        self.mp, self.ap = nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.AdaptiveMaxPool2d((3, 2))
        self.r6, self.ht = nn.ReLU6(), nn.Hardtanh(-0.5, 0.25)
        self.fc = nn.Linear(4 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.leaky(self.c2(self.mp(self.p(self.c1(x)))))
        wide = 2 * z  # past both kinks at +-3
        z = self.hs(wide) + self.hg(wide) + torch.maximum(z, z.flip(-1)) \
            - torch.minimum(z, 0.3 * z)
        z = self.ap(self.r6(z)) + F.relu(z).mean() + self.ht(z).mean()
        return self.fc(z.flatten(1))


def test_a_network_of_every_smoothable_operation_converges_at_rate_one_over_beta():
    """``beta_smooth`` of the whole network against the network: the error falls 100 times
    for every 100 times beta (a wrong replacement leaves an error that does not vanish)."""
    torch.manual_seed(0)
    model = _Everything().double().eval()
    with torch.no_grad():
        model.p.weight.copy_(torch.tensor([0.1, -0.4, 1.3, 0.0], dtype=torch.float64))
    x = 4 * torch.randn(3, 3, 13, 11, dtype=torch.float64)
    errors = []
    for beta in (1e3, 1e5, 1e7):
        with torch.no_grad():
            errors.append(float((beta_smooth(model, beta, x)(x) - model(x)).abs().max()))
    assert errors[0] < 1e-3
    assert errors[1] < errors[0] / 30 and errors[2] < errors[1] / 30
