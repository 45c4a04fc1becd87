"""A label attack: projected gradient descent on the classification margin, which checks
Proposition 1's first-order ``label_radius`` and ``label_preserved`` (and, in sound mode,
the proved ``margin_lower``).

The margin of class ``y`` at ``x'`` is ``m(x') = f_y(x') - max_{y' != y} f_y'(x')``; the label
changes where ``argmax f(x') != y`` (``m < 0``). :func:`margin_attack` minimises ``m`` over
``||x' - x||_p <= r`` (a radius per sample; l2, l-inf or any ``p >= 1``) with steepest-descent
steps of the ``l_p`` norm (normalised gradient for l2, signs for l-inf), a step length
``r / 4`` decaying as a cosine to ``r / 40``, the first run from ``x`` itself, later ones
from random points of the ball. Where the label changed, the point found is pulled
towards ``x`` along its ray (bisection) as long as the label stays changed, and its
distance reported. An attack that finds nothing proves nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..attributions import Model
from .base import TINY, lp_norm, per_sample

SHRINK_STEPS = 12  # bisection steps along the ray of a point where the label changed


@dataclass
class MarginResult:
    """Per sample ``(N,)``, float64 on the CPU: ``margin``, the smallest ``f_y - max_{y' != y}
    f_y'`` found (the model's own logits, their differences in float64); ``flipped``,
    whether the label changed at some point found; ``distance``, the ``l_p`` distance of the
    closest such point (``inf`` where none); ``delta`` ``(N, C, H, W)``: the point of the
    smallest margin."""

    margin: Tensor
    flipped: Tensor
    distance: Tensor
    delta: Tensor


def margins(logits: Tensor, target: Tensor) -> Tensor:
    """``f_y - max_{y' != y} f_y'`` per row of ``logits`` ``(N, k)`` (``+inf`` for ``k = 1``)."""
    own = logits.gather(1, target.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, target.view(-1, 1), -math.inf)
    return own - others.amax(1)


def _direction(grad: Tensor, p: float) -> Tensor:
    """The unit ``l_p`` steepest-ascent direction of ``grad``, per sample."""
    flat = grad.reshape(grad.shape[0], -1)
    if math.isinf(p):
        return torch.sign(grad)
    if p == 2.0:
        return grad / per_sample(flat.norm(dim=1).clamp_min(TINY), grad)
    q = p / (p - 1.0) if p > 1.0 else math.inf
    top = flat.abs().amax(1, keepdim=True).clamp_min(TINY)
    scaled = (flat.abs() / top) ** (q - 1.0) if math.isfinite(q) \
        else (flat.abs() == top).to(flat.dtype)
    s = torch.sign(flat) * scaled
    s = s / torch.linalg.vector_norm(s, ord=p, dim=1, keepdim=True).clamp_min(TINY)
    return s.reshape(grad.shape)


def _project(delta: Tensor, radius: Tensor, p: float) -> Tensor:
    """``delta`` into the ball of its sample's radius (``radius`` ``(N,)`` in ``delta``'s
    dtype): clipping for l-inf, scaling otherwise."""
    if math.isinf(p):
        r = per_sample(radius, delta)
        return torch.maximum(torch.minimum(delta, r), -r)
    norms = lp_norm(delta, p).to(delta.dtype).to(delta.device)
    return delta * per_sample((radius / norms.clamp_min(TINY)).clamp(max=1.0), delta)


def _random_start(x: Tensor, radius: Tensor, p: float, gen: torch.Generator) -> Tensor:
    u = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
    if math.isinf(p):
        return per_sample(radius, u) * (2.0 * torch.rand(x.shape, generator=gen, dtype=x.dtype,
                                                         device=x.device) - 1.0)
    unit = u / per_sample(lp_norm(u, p).to(x.dtype).to(x.device).clamp_min(TINY), u)
    return per_sample(radius, u) * unit


def _changed(model: Model, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The margins at ``x`` (float64, CPU) and whether the label changed there."""
    with torch.no_grad():
        logits = model(x)
    return margins(logits.double(), target).cpu(), (logits.argmax(1) != target).cpu()


def margin_attack(model: Model, x: Tensor, target: Tensor, norm: float, radius: Tensor, *,
                  steps: int = 40, restarts: int = 1, seed: int = 0) -> MarginResult:
    """Minimise the margin of ``target`` ``(N,)`` over ``||delta||_p <= radius`` per sample
    (``radius`` ``(N,)``; samples with radius 0 stay at ``x``). See the module docstring."""
    x = x.detach()
    target = target.to(x.device)
    r = radius.to(dtype=x.dtype, device=x.device).clamp(min=0.0)
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    best_delta = torch.zeros_like(x)
    best, flipped = _changed(model, x, target)
    dist = torch.where(flipped, 0.0, math.inf).double()
    for run in range(restarts):
        delta = torch.zeros_like(x) if run == 0 else _random_start(x, r, norm, gen)
        for t in range(steps + 1):
            point = delta.detach().requires_grad_(True)
            with torch.enable_grad():
                m = margins(model(x + point).double(), target)
                (grad,) = torch.autograd.grad(m.sum(), point)
            md = m.detach().double().cpu()
            better = md < best
            best = torch.where(better, md, best)
            best_delta = torch.where(per_sample(better.to(x.device), x), point.detach(),
                                     best_delta)
            if t == steps:
                break
            size = 0.25 * r * (0.5 * (1.0 + math.cos(math.pi * t / steps))) + 0.025 * r
            delta = _project(delta - per_sample(size, x) * _direction(grad, norm), r, norm)
    at_best, changed = _changed(model, x + best_delta, target)
    best = torch.minimum(best, at_best)
    scale = torch.ones(x.shape[0], dtype=torch.float64)
    lo = torch.zeros(x.shape[0], dtype=torch.float64)
    for _ in range(SHRINK_STEPS if bool(changed.any()) else 0):
        mid = 0.5 * (lo + scale)
        _, flip = _changed(model, x + per_sample(mid.to(x), x) * best_delta, target)
        scale = torch.where(changed & flip, mid, scale)
        lo = torch.where(changed & ~flip, mid, lo)
    found = lp_norm(per_sample(scale.to(x), x) * best_delta, norm).cpu()
    dist = torch.where(changed, torch.minimum(dist, found), dist)
    return MarginResult(best, flipped | changed, dist, best_delta)
