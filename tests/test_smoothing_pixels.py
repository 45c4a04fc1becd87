"""Pixel-level certificates (attrcert.smoothing.pixels): the bins, the multiple-testing
corrections against their definitions, the family-wise error on synthetic bins whose
probabilities are known, and certified pixels of a ReLU network against noisy copies at
perturbed points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attrcert.attributions import Saliency
from attrcert.smoothing import PixelOptions, SmoothingOptions, certify_bins, pixel_tau, smooth
from attrcert.smoothing.pixels import bins, plane, reject
from attrcert.smoothing.sampling import attribution_fn, noise

from .models import make_cnn


def test_bins_rank_each_row_and_never_rank_zero():
    values = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                           [0.0, 1.0, 1.0, 1.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    out = bins(values, (50, 20))
    assert out[0].tolist() == [2, 2, 1, 1, 1, 0, 0, 0, 0, 0]
    # the 20% threshold (2nd largest) is 1: the tied 1s all count in; zeros never do
    assert out[1].tolist() == [0, 2, 2, 2, 2, 0, 0, 0, 0, 0]


def test_plane_sums_channels_then_takes_the_magnitude():
    g = torch.tensor([[1.0, -2.0, 3.0, 4.0, -1.0, 2.0, -3.0, 0.0]])  # C = 2, H = 2, W = 2
    assert plane(g, (2, 2, 2)).tolist() == [[0.0, 0.0, 0.0, 4.0]]


def _holm_by_definition(p: np.ndarray, alpha: float) -> np.ndarray:
    order = sorted(range(p.size), key=lambda i: (p[i], i))
    out = np.zeros(p.size, dtype=bool)
    for rank, i in enumerate(order):
        if p[i] > alpha / (p.size - rank):
            break
        out[i] = True
    return out


def test_holm_and_bonferroni_by_their_definitions():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.random(12) ** 4
        assert np.array_equal(reject(p, 0.05, "holm"), _holm_by_definition(p, 0.05))
        assert np.array_equal(reject(p, 0.05, "bonferroni"), p <= 0.05 / 12)
        assert np.all(reject(p, 0.05, "holm") >= reject(p, 0.05, "bonferroni"))
    assert reject(np.array([]), 0.05, "holm").size == 0


def test_identical_samples_certify_every_pixel_when_enough_are_drawn():
    sample = torch.tensor([0, 1, 2, 2, 0], dtype=torch.uint8)
    cert = certify_bins(sample.repeat(60, 1), selection=10, tau=0.8, alpha=0.01, levels=3)
    assert cert.attainable and cert.certified.tolist() == sample.tolist()
    assert cert.counts == [2, 1, 2] and cert.fraction == 1.0
    few = certify_bins(sample.repeat(12, 1), selection=10, tau=0.8, alpha=0.01, levels=3)
    assert not few.attainable and few.fraction == 0.0
    assert set(few.certified.tolist()) == {-1}


@pytest.mark.parametrize("correction", ["holm", "bonferroni"])
def test_the_family_wise_error_is_at_most_alpha(correction):
    """Every pixel's most probable bin has probability exactly ``tau`` (each null hypothesis
    true, at its boundary): over 3000 images, any certified pixel at all appears in at most
    an alpha share of them."""
    rng = np.random.default_rng(1)
    tau, alpha, pixels, n, selection, trials = 0.7, 0.1, 40, 60, 10, 3000
    wrong = 0
    for _ in range(trials):
        hit = rng.random((n, pixels)) < tau
        other = rng.integers(1, 3, size=(n, pixels))
        sample = torch.from_numpy(np.where(hit, 0, other).astype(np.uint8))
        cert = certify_bins(sample, selection=selection, tau=tau, alpha=alpha,
                            correction=correction, levels=3)
        wrong += int((cert.certified >= 0).any())
    assert wrong / trials <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def test_a_clear_majority_is_certified_and_a_coin_is_not():
    rng = np.random.default_rng(2)
    n = 400
    clear = np.where(rng.random((n, 20)) < 0.97, 2, 0)
    coin = np.where(rng.random((n, 20)) < 0.5, 1, 0)
    sample = torch.from_numpy(np.concatenate([clear, coin], axis=1).astype(np.uint8))
    cert = certify_bins(sample, selection=20, tau=0.75, alpha=0.001, levels=3)
    assert (cert.certified[:20] == 2).all() and (cert.certified[20:] == -1).all()


def test_pixel_tau_is_the_gaussian_radius():
    assert pixel_tau(0.0, 0.5) == 0.5
    assert 0.25 * float(torch.distributions.Normal(0, 1).icdf(torch.tensor(
        pixel_tau(0.1, 0.25)))) == pytest.approx(0.1, rel=1e-5)


def test_certified_pixels_keep_their_bin_at_perturbed_points():
    """A ReLU CNN, saliency, sigma = 0.5, eps = 0.1. At 12 points on the eps-sphere, 4000
    Gaussian samples estimate each certified pixel's probability of its certified bin: it
    must stay above 1/2 (the bin stays the most probable), beyond 4 binomial standard
    errors."""
    model = make_cnn(smooth=False)
    x = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    pixels = PixelOptions(sigma=0.5, top_k=(50, 20), selection=10)
    kept = []
    rec = smooth(model, x, options=SmoothingOptions(radius=1.0, samples=300, eps=0.1,
                                                   alpha=0.01),
                 pixels=pixels, method="saliency", collect=lambda r, s: kept.append(s))[0]
    certified = kept[0].certified.flatten().long()
    mask = certified >= 0
    assert rec["certified_fraction"] > 0.2 and int(mask.sum()) > 0
    fn = attribution_fn(model, Saliency(), rec["target"], None)
    big = 4000
    eta = noise("gaussian", 0.5, b"pixel attack", 0, big, 36).view(big, 1, 6, 6)
    gen = torch.Generator().manual_seed(12)
    for _ in range(12):
        delta = torch.randn(1, 6, 6, generator=gen, dtype=torch.float64)
        delta = 0.1 * delta / delta.norm()
        moved = bins(plane(fn(x[0] + delta + eta).reshape(big, -1), (1, 6, 6)), (50, 20))
        share = (moved.long() == certified.unsqueeze(0)).double().mean(0)
        assert share[mask].min() >= 0.5 - 4 * math.sqrt(0.25 / big), share[mask].min()
