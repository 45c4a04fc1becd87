"""Proved ranges of activation derivatives (the elementwise nonlinearities of sound mode).

Activation derivatives. For each supported activation ``sigma`` the closed forms of
``sigma, sigma', sigma''`` (and ``sigma'''``, used only to locate extrema of
``sigma''``) are written out; the range of ``sigma^(k)`` over ``[lo, hi]`` is the min/max
of its values at ``lo``, ``hi`` and at every critical point of ``sigma^(k)`` (zero of
``sigma^(k+1)``) inside ``[lo, hi]``, never sampled. The critical points are found once,
in float64, as sign changes of ``sigma^(k+1)`` on a grid of step 1/64 over ``[-60, 60]``
refined by Brent's method; outside ``[-60, 60]`` every ``sigma^(k)`` of these functions is
monotone (exponential tails). At an extremum the function is flat, so the small error in
the location changes the value by far less than the widening.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .intervals import REL, TINY, to_lohi, widen

GRID = (-60.0, 60.0, 1.0 / 64.0)

Fn = Callable[[Tensor], Tensor]


def _grid_roots(fn: Fn) -> list[float]:
    """Zeros of ``fn`` on ``[-60, 60]``: sign changes on the grid, refined by Brent's method
    (exact zeros on the grid are kept as they are)."""
    from scipy.optimize import brentq  # no type hints

    lo, hi, step = GRID
    xs = np.arange(lo, hi + step, step)
    vals = fn(torch.from_numpy(xs)).numpy()
    # exact zeros on the grid (not underflow in the far tails, where fn is flat)
    roots: list[float] = [float(x) for x, v in zip(xs, vals, strict=True)
                          if v == 0.0 and abs(x) < 30.0]
    for i in np.nonzero(np.sign(vals[:-1]) * np.sign(vals[1:]) < 0)[0]:
        def f(t: float) -> float:
            return float(fn(torch.tensor([t], dtype=torch.float64))[0])
        roots.append(float(brentq(f, xs[i], xs[i + 1], xtol=1e-15, rtol=1e-15)))
    return sorted(roots)


@dataclass
class Activation:
    """An elementwise activation with its derivatives ``d[k] = sigma^(k)``, ``k = 0..3``.

    ``crit[k]`` holds the critical points of ``d[k]`` (the zeros of ``d[k + 1]``), found
    once by :func:`_grid_roots`; ``scale[k]`` bounds ``sup |d[k]|`` (``k = 1, 2``: the
    Lipschitz constants of ``sigma`` and ``sigma'``) and sets the absolute widening that
    covers cancellation in the closed forms. ``threshold``: torch's Softplus switches to the
    identity above it, so its derivative jumps there by ``jump`` (and its value by ``gap``);
    ``smooth_twin`` is then the same activation without the switch (``d`` are its closed
    forms), which is twice differentiable everywhere.

    ``ulps``, ``kappa``: the accuracy assumed of torch's own kernels in the model's precision
    (unit roundoff ``u``): ``|fl(sigma(t)) - sigma(t)| <= ulps u (|sigma(t)| + |t|)`` for the
    value and ``|fl(sigma'(t)) - sigma'(t)| <= ulps u (1 + kappa |t|)`` for the slope that
    the backward pass multiplies by (``kappa = beta`` for Softplus: ``exp(beta t)`` carries
    a relative error ``beta |t| u``). ``tests/test_sound_rounding.py`` checks both against
    float64 on dense grids (measured: at most 5 ulps, GELU; 16, 32 for GELU, are assumed).
    """

    name: str
    d: tuple[Fn, Fn, Fn, Fn]
    scale: tuple[float, float, float]
    threshold: float | None = None
    crit: list[list[float]] = field(default_factory=list)
    smooth_twin: Activation | None = None
    jump: float = 0.0
    gap: float = 0.0
    ulps: float = 16.0
    kappa: float = 1.0

    def __post_init__(self) -> None:
        if not self.crit:
            self.crit = [_grid_roots(self.d[k + 1]) for k in range(3)]

    def value(self, k: int, z: Tensor) -> Tensor:
        """``sigma^(k)(z)`` as torch computes the activation (identity above ``threshold``)."""
        v = self.d[k](z)
        if self.threshold is not None:
            # torch's double backward already switches at equality
            above = z >= self.threshold if k == 2 else z > self.threshold
            linear = z if k == 0 else torch.full_like(z, 1.0 if k == 1 else 0.0)
            v = torch.where(above, linear, v)
        return v

    def range(self, k: int, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """A proved enclosure of ``{sigma^(k)(z) : lo <= z <= hi}``, elementwise, ``k = 0, 1, 2``.

        Values at both endpoints and at every critical point inside; above ``threshold``
        (Softplus) both branches are included.
        """
        top = lo if self.threshold is None else torch.clamp(lo, max=self.threshold)
        smooth_hi = hi if self.threshold is None else torch.clamp(hi, max=self.threshold)
        vals = [self.d[k](top), self.d[k](smooth_hi)]
        vmin, vmax = torch.minimum(*vals), torch.maximum(*vals)
        for c in self.crit[k]:
            inside = (lo <= c) & (c <= smooth_hi)
            if inside.any():
                vc = self.d[k](torch.tensor(c, dtype=lo.dtype, device=lo.device))
                vmin = torch.where(inside, torch.minimum(vmin, vc), vmin)
                vmax = torch.where(inside, torch.maximum(vmax, vc), vmax)
        if self.threshold is not None:
            above = hi >= self.threshold  # torch switches at (or, for sigma'', at) it
            if above.any():
                lin_lo = torch.clamp(lo, min=self.threshold)
                branch = ((lin_lo, hi) if k == 0 else
                          (torch.full_like(lo, 1.0 if k == 1 else 0.0),) * 2)
                vmin = torch.where(above, torch.minimum(vmin, branch[0]), vmin)
                vmax = torch.where(above, torch.maximum(vmax, branch[1]), vmax)
                only = lo > self.threshold  # wholly on the linear branch
                vmin = torch.where(only, branch[0], vmin)
                vmax = torch.where(only, branch[1], vmax)
        return widen(vmin, vmax, self.scale[k] if k < 3 else 1.0)

    def crosses_threshold(self, lo: Tensor, hi: Tensor) -> bool:
        """Whether some ``[lo, hi]`` straddles the Softplus threshold (``sigma'`` jumps)."""
        if self.threshold is None:
            return False
        return bool(((lo <= self.threshold) & (hi >= self.threshold)).any())


def _sig(z: Tensor) -> Tensor:
    return torch.sigmoid(z)


def _tanh() -> Activation:
    def d0(z: Tensor) -> Tensor:
        return torch.tanh(z)

    def d1(z: Tensor) -> Tensor:
        return 1.0 / torch.cosh(z) ** 2

    def d2(z: Tensor) -> Tensor:
        return -2.0 * torch.tanh(z) / torch.cosh(z) ** 2

    def d3(z: Tensor) -> Tensor:
        t = torch.tanh(z)
        return (6.0 * t * t - 2.0) / torch.cosh(z) ** 2

    return Activation("tanh", (d0, d1, d2, d3), (1.0, 1.0, 0.77))


def _sigmoid() -> Activation:
    def d1(z: Tensor) -> Tensor:
        return _sig(z) * _sig(-z)

    def d2(z: Tensor) -> Tensor:
        return -d1(z) * torch.tanh(z / 2)

    def d3(z: Tensor) -> Tensor:
        p = d1(z)
        return p * (1.0 - 6.0 * p)

    return Activation("sigmoid", (_sig, d1, d2, d3), (1.0, 0.25, 0.1))


def _softplus(beta: float, threshold: float) -> Activation:
    b = float(beta)

    def d0(z: Tensor) -> Tensor:  # log(1 + exp(b z)) / b without torch's threshold
        bz = b * z
        return (torch.clamp(bz, min=0.0) + torch.log1p(torch.exp(-bz.abs()))) / b

    def d1(z: Tensor) -> Tensor:
        return _sig(b * z)

    def d2(z: Tensor) -> Tensor:
        return b * _sig(b * z) * _sig(-b * z)

    def d3(z: Tensor) -> Tensor:
        return -b * b * _sig(b * z) * _sig(-b * z) * torch.tanh(b * z / 2)

    name = f"softplus(beta={beta:g})"
    smooth = Activation(name, (d0, d1, d2, d3), (1.0, 1.0, b / 4), kappa=max(b, 1.0))
    if not math.isfinite(threshold):
        return smooth
    t = float(threshold)
    return Activation(name, (d0, d1, d2, d3), (1.0, 1.0, b / 4), threshold=t / b,
                      crit=smooth.crit, smooth_twin=smooth, kappa=max(b, 1.0),
                      jump=float(torch.sigmoid(torch.tensor(-t, dtype=torch.float64))) * 1.01,
                      gap=math.log1p(math.exp(-t)) / b * 1.01)


def _silu() -> Activation:
    def d0(z: Tensor) -> Tensor:
        return z * _sig(z)

    def d1(z: Tensor) -> Tensor:
        return _sig(z) * (1.0 + z * _sig(-z))

    def d2(z: Tensor) -> Tensor:
        return _sig(z) * _sig(-z) * (2.0 - z * torch.tanh(z / 2))

    def d3(z: Tensor) -> Tensor:
        p = _sig(z) * _sig(-z)
        t = torch.tanh(z / 2)
        psi = 2.0 - z * t
        dpsi = -t - 0.5 * z * (1.0 - t * t)
        return p * (dpsi - t * psi)

    return Activation("silu", (d0, d1, d2, d3), (1.0, 1.1, 0.5))


def _gelu() -> Activation:
    inv_sqrt2 = 1.0 / math.sqrt(2.0)
    inv_sqrt2pi = 1.0 / math.sqrt(2.0 * math.pi)

    def cdf(z: Tensor) -> Tensor:
        return 0.5 * torch.special.erfc(-z * inv_sqrt2)

    def pdf(z: Tensor) -> Tensor:
        return torch.exp(-0.5 * z * z) * inv_sqrt2pi

    def d0(z: Tensor) -> Tensor:
        return z * cdf(z)

    def d1(z: Tensor) -> Tensor:
        return cdf(z) + z * pdf(z)

    def d2(z: Tensor) -> Tensor:
        return pdf(z) * (2.0 - z * z)

    def d3(z: Tensor) -> Tensor:
        return pdf(z) * (z * z * z - 4.0 * z)

    return Activation("gelu", (d0, d1, d2, d3), (1.0, 1.13, 0.8), ulps=32.0)


def twin_range(act: Activation, k: int, lo: Tensor, hi: Tensor,
                above: Tensor | None) -> tuple[Tensor, Tensor]:
    """``sigma^(k)`` over ``[lo, hi]`` for the twin of :mod:`.enclosures` (the identity on
    the units ``above`` the Softplus threshold, the smooth closed form elsewhere); torch's
    own function when ``above`` is None."""
    if above is None or act.threshold is None:
        return act.range(k, lo, hi)
    assert act.smooth_twin is not None
    slo, shi = act.smooth_twin.range(k, lo, hi)
    if k == 0:
        ilo, ihi = lo, hi
    else:
        ilo = ihi = torch.full_like(lo, 1.0 if k == 1 else 0.0)
    return torch.where(above, ilo, slo), torch.where(above, ihi, shi)


def slope_deviation(act: Activation, ball: tuple[Tensor, Tensor],
                    point: tuple[Tensor, Tensor], mask: Tensor | None) -> Tensor:
    """``max |sigma'(z(x')) - sigma'(z(x))|`` over the ball, per unit ``(P, n)``: ``z(x')`` in
    the ball's interval, ``z(x)`` in the point's, both through the twin's slope range."""
    slo, shi = twin_range(act, 1, *to_lohi(*ball), mask)
    plo, phi = twin_range(act, 1, *to_lohi(*point), mask)
    dev = torch.maximum(shi - plo, phi - slo).clamp(min=0.0)
    return (dev * (1.0 + REL) + TINY).reshape(dev.shape[0], -1)


_CACHE: dict[tuple, Activation] = {}


def activation(name: str, *params: float) -> Activation:
    """The :class:`Activation` called ``name`` (``tanh``, ``sigmoid``, ``softplus`` with
    ``beta, threshold``, ``silu``, ``gelu``), built once per parameter set."""
    key = (name, *params)
    if key not in _CACHE:
        makers: dict[str, Callable[..., Activation]] = {
            "tanh": _tanh, "sigmoid": _sigmoid, "softplus": _softplus, "silu": _silu,
            "gelu": _gelu}
        _CACHE[key] = makers[name](*params)
    return _CACHE[key]


ACTIVATIONS = ("tanh", "sigmoid", "softplus", "silu", "gelu")
