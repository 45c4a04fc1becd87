"""The perturbation ball ``{delta : ||delta||_p <= eps}`` as a value object.

Kept apart from the model (as auto_LiRPA does): it knows its norm ``p``, its radius
``eps``, the dual norm ``q`` (``1/p + 1/q = 1``) and the factor that turns an lp
radius into an l2 radius (Lemma 1, Eq. 13 of the paper's appendix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import OptionError

NormLike = float | int | str


def parse_norm(norm: NormLike) -> float:
    """``p`` as a float in ``[1, inf]``, from ``2``, ``"2"``, ``"inf"``, ``float("inf")``, ..."""
    if isinstance(norm, str):
        text = norm.strip().lower()
        if text in {"inf", "infinity", "linf", "l-inf", "max"}:
            return math.inf
        text = text.removeprefix("l")
        try:
            p = float(text)
        except ValueError:
            raise OptionError(
                f"norm {norm!r} is not a number: use 2, inf, or any p >= 1"
            ) from None
    else:
        p = float(norm)
    if math.isnan(p) or p < 1:
        raise OptionError(f"norm p = {norm!r} is not a norm: use 2, inf, or any p >= 1")
    return p


def norm_label(p: float) -> str:
    """``"inf"`` for l-inf, ``"2"`` for l2, ``"3.5"`` for others (used in records)."""
    if math.isinf(p):
        return "inf"
    return str(int(p)) if p == int(p) else repr(p)


@dataclass(frozen=True)
class Perturbation:
    """The lp ball of radius ``eps`` around an input, in pixel units.

    Attributes:
        norm: ``p`` in ``[1, inf]``.
        eps: the radius, ``> 0``.
    """

    norm: float
    eps: float

    def __post_init__(self) -> None:
        p = parse_norm(self.norm)
        object.__setattr__(self, "norm", p)
        eps = float(self.eps)
        if not math.isfinite(eps) or eps <= 0:
            raise OptionError(f"eps = {self.eps!r} must be a finite number > 0")
        object.__setattr__(self, "eps", eps)

    @property
    def is_l2(self) -> bool:
        return self.norm == 2.0

    @property
    def is_linf(self) -> bool:
        return math.isinf(self.norm)

    @property
    def dual(self) -> float:
        """The dual norm ``q`` with ``1/p + 1/q = 1`` (``inf`` for ``p = 1``)."""
        return dual_norm(self.norm)

    @property
    def label(self) -> str:
        return norm_label(self.norm)


def dual_norm(p: float) -> float:
    """``q`` with ``1/p + 1/q = 1``: l1 <-> l-inf, l2 <-> l2."""
    if p == 1.0:
        return math.inf
    if math.isinf(p):
        return 1.0
    return p / (p - 1.0)


def l2_radius_factor(d: int, p: float) -> float:
    """``r`` with ``||delta||_2 <= r * ||delta||_p`` for every ``delta`` in R^d.

    Lemma 1 (Eq. 13): ``r = d^(1/2 - 1/p)`` for ``p > 2`` (``sqrt(d)`` for l-inf);
    ``r = 1`` for ``1 <= p <= 2``, since then ``||delta||_2 <= ||delta||_p``.
    """
    if p <= 2.0:
        return 1.0
    if math.isinf(p):
        return math.sqrt(d)
    return float(d) ** (0.5 - 1.0 / p)
