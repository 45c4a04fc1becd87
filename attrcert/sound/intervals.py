"""Interval arithmetic on float64 tensors, and proved ranges of activation derivatives.

Used by :mod:`attrcert.sound`. An interval vector is either ``(lo, hi)`` (elementwise
products) or centre/radius ``(c, r)`` with ``r >= 0`` (linear maps: ``A [c +- r] is
contained in [A c +- |A| r]``, Rump's midpoint-radius rule).

Rounding. torch has no directed rounding, so every operation here widens its result
outward: elementwise results by a relative ``REL = 1e-12`` plus ``TINY``; sums (matrix
products, convolutions, reductions) by ``SUM_REL = 1e-10`` times the sum of the absolute
values of the terms (``|A| (|c| + r) + |b|``). Under IEEE-754 round-to-nearest the error
of a float64 sum of ``n`` terms is at most ``n * 2^-53`` times that magnitude (any order of
summation), so ``SUM_REL`` covers fan-ins up to about ``9 * 10^5``; ``REL`` covers the
few ulps of each elementwise operation and of the closed-form derivatives below.
"""

from __future__ import annotations

import torch
from torch import Tensor

REL = 1e-12
SUM_REL = 1e-10
TINY = 1e-300


def widen(lo: Tensor, hi: Tensor, scale: float | Tensor = 0.0) -> tuple[Tensor, Tensor]:
    """``[lo, hi]`` widened by ``REL * |.| + REL * scale + TINY`` on each side."""
    return (lo - REL * (lo.abs() + scale) - TINY, hi + REL * (hi.abs() + scale) + TINY)


def to_cr(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Centre and radius enclosing ``[lo, hi]``."""
    c = 0.5 * (lo + hi)
    r = 0.5 * (hi - lo)
    return c, r + REL * (c.abs() + r) + TINY


def to_lohi(c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """``[lo, hi]`` enclosing ``c +- r``."""
    pad = REL * (c.abs() + r) + TINY
    return c - r - pad, c + r + pad


def mul(alo: Tensor, ahi: Tensor, blo: Tensor, bhi: Tensor) -> tuple[Tensor, Tensor]:
    """The product ``[a] * [b]`` elementwise (broadcasting): min and max of the four corner
    products, widened."""
    p = torch.stack(torch.broadcast_tensors(alo * blo, alo * bhi, ahi * blo, ahi * bhi))
    return widen(p.amin(0), p.amax(0))


def mul_cr(slo: Tensor, shi: Tensor, c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """``[s] * (c +- r)`` as centre/radius (exact corner products, then :func:`to_cr`)."""
    lo, hi = to_lohi(c, r)
    return to_cr(*mul(slo, shi, lo, hi))


def magnitude(box: tuple[Tensor, Tensor]) -> Tensor:
    """``max(|lo|, |hi|)`` of ``(lo, hi)``."""
    return torch.maximum(box[0].abs(), box[1].abs())


def intersect(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``[a] & [b]`` (both contain the true value, so their intersection does)."""
    return torch.maximum(a[0], b[0]), torch.minimum(a[1], b[1])
