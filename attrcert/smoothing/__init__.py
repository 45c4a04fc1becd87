"""Certified smoothed attributions: guarantees for any model and any attribution, about the
attribution averaged over random noise (docs/smoothing.md).

- :mod:`~attrcert.smoothing.geometry`: how much two l2 balls fail to overlap (pure math);
- :mod:`~attrcert.smoothing.concentration`: how far a Monte Carlo mean of bounded vectors
  can be from its expectation (pure math);
- :mod:`~attrcert.smoothing.certificate`: the uniform-smoothing certificate on the cosine
  similarity, its largest eps and smallest radius (pure math; Wang & Kong 2024);
- :mod:`~attrcert.smoothing.pixels`: the pixel-level certificate of top-k bins under
  Gaussian noise (Anani et al. 2025);
- :mod:`~attrcert.smoothing.sampling`: the noise and the attributions of noisy copies;
- :mod:`~attrcert.smoothing.run`: :func:`smooth`, the whole run, image by image, and
  :mod:`~attrcert.smoothing.records` its records.
"""

from __future__ import annotations

from .certificate import CosineCertificate, Limits, certify_cosine, tolerance_limits
from .concentration import MeanBound, deviation_radius, norm_lower_bound
from .geometry import log_lune_fraction, lune_fraction, offset_for_ratio, volume_ratio
from .options import LimitOptions, PixelOptions, SmoothingOptions, parse_top_k
from .pixels import CORRECTIONS, PixelCertificate, certify_bins, pixel_tau
from .records import PIXEL_ASSUMPTION, SMOOTHING_ASSUMPTION
from .run import SmoothedSample, smooth, smooth_run

__all__ = [
    "CORRECTIONS",
    "PIXEL_ASSUMPTION",
    "SMOOTHING_ASSUMPTION",
    "CosineCertificate",
    "LimitOptions",
    "Limits",
    "MeanBound",
    "PixelCertificate",
    "PixelOptions",
    "SmoothedSample",
    "SmoothingOptions",
    "certify_bins",
    "certify_cosine",
    "deviation_radius",
    "log_lune_fraction",
    "lune_fraction",
    "norm_lower_bound",
    "offset_for_ratio",
    "parse_top_k",
    "pixel_tau",
    "smooth",
    "smooth_run",
    "tolerance_limits",
    "volume_ratio",
]
