"""Trying to break a proved bound: the strongest attribution deviation that several attacks
and random points of the ball reach (the sound-mode tests compare bounds against it)."""

from __future__ import annotations

import torch
from torch import nn

from attrcert.attack import attack
from attrcert.attributions import get_method
from attrcert.perturbation import Perturbation


def strongest(net: nn.Module, x: torch.Tensor, method: str, norm: float | str, eps: float, *,
              steps: int = 4, attack_steps: int = 25, points: int = 64,
              noise_seed: int = 3) -> float:
    """The largest ``||g(x') - g(x)||_2`` found over ``||x' - x||_p <= eps``: PGD (two seeds,
    two restarts each, no label constraint) and ``points`` random points on the sphere of
    the ball (l2) or its vertices (l-inf), every ``g`` evaluated by torch in the model's own
    precision (``steps``: integrated-gradients steps)."""
    att, pert = get_method(method, steps=steps), Perturbation(norm, eps)
    y = torch.tensor([int(net(x).argmax())])
    best = 0.0
    for seed in (0, 7):
        found = attack(net, x, attribution=att, target=y, perturbation=pert,
                       steps=attack_steps, restarts=2, seed=seed, label_constraint=False)
        best = max(best, float(found.deviation[0]))
    gen = torch.Generator().manual_seed(noise_seed)
    noise = torch.randn((points, *x.shape[1:]), generator=gen, dtype=torch.float64)
    if pert.is_linf:
        delta = eps * torch.sign(noise)
    else:
        flat = noise.view(points, -1)
        delta = (eps * flat / flat.norm(dim=1, keepdim=True)).view_as(noise)
    g0 = att(net, x, y).double().reshape(1, -1)
    g = att(net, x + delta.to(x.dtype), y.repeat(points)).double().reshape(points, -1)
    return max(best, float((g - g0).norm(dim=1).max()))
