"""What :func:`attrcert.smoothing.smooth` certifies, as checked value objects:
:class:`SmoothingOptions` (the uniform-smoothing certificate), :class:`PixelOptions` (the
pixel-level certificate) and :class:`LimitOptions` (the tolerance forms)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import OptionError
from ..tolerance import check_tolerance
from .pixels import CORRECTIONS

__all__ = ["LimitOptions", "PixelOptions", "SmoothingOptions", "check_selection",
           "parse_top_k"]

MAX_SAMPLES = 10_000_000


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value)
                                       and value > 0):
        raise OptionError(f"{name} = {value!r} must be a finite number > 0")


def _count(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or int(value) != value or not low <= value <= MAX_SAMPLES:
        raise OptionError(f"{name} = {value!r} must be an integer in {low}..{MAX_SAMPLES}")


@dataclass(frozen=True)
class SmoothingOptions:
    """The uniform-smoothing certificate (Wang & Kong 2024).

    Attributes:
        radius: ``r``, the radius of the l2 ball the noise is uniform in (pixel units).
        samples: ``n``, noise samples per image.
        eps: the radius of the perturbation ball certified (l2, pixel units).
        alpha: the certificate fails with probability at most ``alpha``.
        clip: ``M`` to clip each attribution's norm to; ``None`` (default) scales every
            attribution to norm ``M = 1`` instead.
        seed: the seed of the noise (:func:`attrcert.smoothing.sampling.image_digest`).
        samples_per_pass: noisy copies per pass (default: from the memory budget).
    """

    radius: float
    samples: int = 100
    eps: float = 0.1
    alpha: float = 0.001
    clip: float | None = None
    seed: int = 0
    samples_per_pass: int | None = None

    def __post_init__(self) -> None:
        _positive("radius", self.radius)
        _count("samples", self.samples, 1)
        if isinstance(self.eps, bool) or not (math.isfinite(self.eps) and self.eps >= 0):
            raise OptionError(f"eps = {self.eps!r} must be a finite number >= 0")
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha < 1):
            raise OptionError(f"alpha = {self.alpha!r} must lie in (0, 1)")
        if self.clip is not None:
            _positive("clip", self.clip)
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or self.seed < 0:
            raise OptionError(f"seed = {self.seed!r} must be an integer >= 0")
        if self.samples_per_pass is not None:
            _count("samples_per_pass", self.samples_per_pass, 1)

    @property
    def bound(self) -> float:
        """``M``: every attribution's norm is at most this."""
        return 1.0 if self.clip is None else float(self.clip)

    @property
    def normalization(self) -> str:
        return "unit" if self.clip is None else "clip"


def parse_top_k(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"50,25,5"`` (percents) as a strictly decreasing tuple in (0, 100)."""
    if isinstance(text, str):
        try:
            values = [float(v) for v in text.replace(",", " ").split()]
        except ValueError:
            raise OptionError(f"--top-k {text!r}: give percents such as 50,25,5") from None
    else:
        values = [float(v) for v in text]
    if not values or not all(math.isfinite(v) and 0 < v < 100 for v in values):
        raise OptionError(f"top-k {text!r}: give one or more percents in (0, 100)")
    if len(set(values)) != len(values):
        raise OptionError(f"top-k {text!r}: each percent once")
    return tuple(sorted(values, reverse=True))


@dataclass(frozen=True)
class PixelOptions:
    """The pixel-level certificate (Anani et al. 2025).

    Attributes:
        sigma: standard deviation of the Gaussian noise (pixel units).
        top_k: the bins' percents, largest first (e.g. ``(50, 25, 5)``).
        selection: of the ``samples`` noise draws, how many choose each pixel's bin (the
            rest test it; Anani et al. use 10 of 100).
        correction: ``"holm"`` or ``"bonferroni"`` over the pixels of an image.
    """

    sigma: float
    top_k: tuple[float, ...] = (50.0, 25.0, 5.0)
    selection: int = 10
    correction: str = "holm"

    def __post_init__(self) -> None:
        _positive("sigma", self.sigma)
        object.__setattr__(self, "top_k", parse_top_k(self.top_k))
        _count("selection samples", self.selection, 1)
        if self.correction not in CORRECTIONS:
            raise OptionError(f"unknown correction {self.correction!r}: use one of "
                              f"{', '.join(CORRECTIONS)}")

    @property
    def levels(self) -> int:
        return len(self.top_k) + 1


@dataclass(frozen=True)
class LimitOptions:
    """A tolerance for the largest eps and the smallest ``r``, as ``max-eps`` takes it:
    ``omega`` on ``metric`` (``euclidean``, ``cosine`` distance in (0, 1], ``angle``
    degrees in (0, 90])."""

    omega: float
    metric: str = "cosine"

    def __post_init__(self) -> None:
        check_tolerance(self.omega, self.metric)


def check_selection(options: SmoothingOptions, pixels: PixelOptions | None) -> None:
    """The pixel certificate's selection samples must leave samples to test the bins."""
    if pixels is not None and pixels.selection >= options.samples:
        raise OptionError(f"--selection-samples {pixels.selection} must be below --samples "
                          f"{options.samples}: the other samples test each pixel's bin")
