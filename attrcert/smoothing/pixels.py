"""Pixel-level certificates of a sparsified attribution (after Anani et al., ICML 2025,
who follow the certified segmentation of Fischer et al., ICML 2021).

Each noisy copy's attribution becomes a map of importance *bins*: the pixel values
``|sum_c g_c|`` ranked, bin ``j`` holding the pixels in the top ``K_j``% but not in the top
``K_{j+1}``% (``K_1 > K_2 > ...``; bin 0: outside the top ``K_1``%), zero values never
ranked. The smoothed map gives each pixel its most probable bin under Gaussian noise
``N(0, sigma^2 I)``. For a pixel whose most probable bin has probability ``p > tau >= 1/2``,
Cohen et al.'s theorem (2019) keeps that bin for every ``||delta||_2 < sigma Phi^-1(p)``;
attrcert takes ``tau = Phi(eps / sigma)``, so a certified pixel keeps its bin on the whole
``eps``-ball.

Per pixel (:func:`certify_bins`): the bin is guessed from the first ``n0`` samples (the
mode), counted in the other ``n - n0``, and tested (``H0: p <= tau``, exact one-sided
binomial test). The tests of all pixels are corrected together, Holm's step-down
(default) or Bonferroni, so that with probability ``>= 1 - alpha`` *every* certified pixel
holds at once (family-wise error); a pixel that fails abstains (-1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor

__all__ = ["CORRECTIONS", "PixelCertificate", "bins", "certify_bins", "pixel_tau",
           "plane", "reject"]

#: Multiple-testing corrections over the pixels of an image.
CORRECTIONS = ("holm", "bonferroni")
ABSTAIN = -1


def pixel_tau(eps: float, sigma: float) -> float:
    """``tau = Phi(eps / sigma)``: a bin of probability above ``tau`` is kept on the
    ``eps``-ball (``sigma Phi^-1(tau) = eps``)."""
    return float(stats.norm.cdf(eps / sigma))


def plane(g: Tensor, shape: Sequence[int]) -> Tensor:
    """``|sum_c g_c|`` per pixel: ``g`` ``(k, d)`` with ``d = C H W`` to ``(k, H W)``."""
    c, h, w = (int(s) for s in shape)
    return g.reshape(-1, c, h, w).sum(1).abs().reshape(-1, h * w)


def bins(values: Tensor, top_k: Sequence[float]) -> Tensor:
    """Importance bins ``(k, P)`` uint8 of pixel values ``(k, P)``: the number of top-``K``%
    sets (``top_k``, percents) that hold the pixel. A pixel is in the top ``K``% when its
    value is at least the ``ceil(K P / 100)``-th largest of its row (ties all in) and
    above 0."""
    k, p = values.shape
    out = torch.zeros(k, p, dtype=torch.uint8)
    ordered = torch.sort(values, dim=1, descending=True).values
    for percent in top_k:
        count = max(1, math.ceil(percent * p / 100.0))
        threshold = ordered[:, count - 1:count]
        out += ((values >= threshold) & (values > 0)).to(torch.uint8)
    return out


def reject(pvalues: np.ndarray, alpha: float, correction: str) -> np.ndarray:
    """Which null hypotheses to reject at family-wise level ``alpha``: Bonferroni
    (``p <= alpha / m``) or Holm's step-down (the ``i``-th smallest, ``i = 0, 1, ...``,
    against ``alpha / (m - i)``, stopping at the first that fails)."""
    m = pvalues.size
    out = np.zeros(m, dtype=bool)
    if m == 0:
        return out
    if correction == "bonferroni":
        return pvalues <= alpha / m
    if correction != "holm":
        raise ValueError(f"unknown correction {correction!r}: use one of {CORRECTIONS}")
    order = np.argsort(pvalues, kind="stable")
    levels = alpha / (m - np.arange(m))
    failed = np.nonzero(pvalues[order] > levels)[0]
    stop = int(failed[0]) if failed.size else m
    out[order[:stop]] = True
    return out


@dataclass(frozen=True)
class PixelCertificate:
    """One image's certified bin map.

    Attributes:
        certified: ``(P,)`` int16, the certified bin of each pixel or -1 (abstain).
        counts: the number of certified pixels in each bin (0 .. len(top_k)).
        fraction: certified pixels over all pixels.
        tau: the probability a bin must exceed (``Phi(eps / sigma)``).
        attainable: whether ``n - n0`` samples can certify any pixel at this ``tau`` and
            ``alpha`` at all (``tau^(n - n0) <= alpha / P`` for Bonferroni's first test).
    """

    certified: Tensor
    counts: list[int]
    fraction: float
    tau: float
    attainable: bool


def certify_bins(sample_bins: Tensor, *, selection: int, tau: float, alpha: float,
                 correction: str = "holm", levels: int) -> PixelCertificate:
    """Certify each pixel's bin from ``sample_bins`` ``(n, P)``: the mode of the first
    ``selection`` rows, counted in the rest, one-sided binomial tests against ``tau``,
    corrected over the ``P`` pixels (:func:`reject`). ``levels``: the number of bins."""
    n, p = sample_bins.shape
    if not 1 <= selection < n:
        raise ValueError(f"selection samples {selection} must lie in 1..{n - 1}")
    guess = torch.mode(sample_bins[:selection].to(torch.int64), dim=0).values
    rest = n - selection
    hits = (sample_bins[selection:].to(torch.int64) == guess.unsqueeze(0)).sum(0).numpy()
    pvalues = stats.binom.sf(hits - 1, rest, tau)  # P(Binomial(rest, tau) >= hits)
    passed = reject(np.asarray(pvalues, dtype=np.float64), alpha, correction)
    certified = torch.where(torch.from_numpy(passed), guess, torch.full_like(guess, ABSTAIN))
    counts = [int((certified == level).sum()) for level in range(levels)]
    attainable = rest * math.log(tau) <= math.log(alpha / p) if tau > 0 else True
    return PixelCertificate(certified=certified.to(torch.int16), counts=counts,
                            fraction=sum(counts) / p, tau=tau, attainable=attainable)
