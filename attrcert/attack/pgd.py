"""Projected gradient ascent on the attribution (Madry et al. 2018, applied to ``g``): the
Euclidean and cosine objectives of Eq. 1 in an lp ball.

- :class:`PGDL2`: ``||delta||_2 <= eps``, normalised-gradient steps;
- :class:`PGDLinf`: ``||delta||_inf <= eps``, sign steps;
- :class:`PGD`: any ``p >= 1``, steepest-ascent steps of the lp norm.

Objectives (:data:`OBJECTIVES`, per sample, maximised): ``"euclidean"``,
``||g(x + delta) - g(x)||_2`` (its square is differentiated), and ``"cosine"``,
``1 - cos(g(x + delta), g(x))``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..perturbation import Perturbation, parse_norm
from .base import TINY, AttributionAttack, lp_norm, per_sample

__all__ = ["OBJECTIVES", "PGD", "PGDL2", "PGDLinf"]

OBJECTIVES = ("euclidean", "cosine")


class _DistanceObjective:
    """The Euclidean / cosine objectives shared by the PGD attacks."""

    objective_name: str = "euclidean"

    def _check_objective(self, objective: str) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
        self.objective_name = objective

    def objective(self, g: Tensor, g0: Tensor, context: object) -> Tensor:
        a = g.reshape(g.shape[0], -1)
        b = g0.reshape(g0.shape[0], -1)
        if self.objective_name == "euclidean":
            return ((a - b) ** 2).sum(1)  # squared: same ascent direction, smooth at 0
        cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(TINY)
        return 1.0 - cos

    def score(self, deviation: Tensor, cosine_distance: Tensor) -> Tensor:
        return deviation if self.objective_name == "euclidean" else cosine_distance


class PGD(_DistanceObjective, AttributionAttack):
    """Projected gradient ascent on the attribution in the lp ball ``||delta||_p <= eps``.

    For any ``p >= 1``. Steps follow the steepest-ascent direction of the lp norm,
    ``s_i = sign(G_i) |G_i|^(q-1) / ||G||_q^(q-1)`` (``||s||_p = 1``, ``q`` the dual norm; for
    ``p = 1`` the largest coordinates of ``G``), where ``G`` is the gradient of the objective
    with respect to ``x + delta`` ``(N, C, H, W)``. The projection scales,
    ``delta * min(1, eps / ||delta||_p)`` (exact for l2, inside the ball for every ``p``).
    The random start has a uniform direction in l2, scaled to lp radius ``eps U^(1/d)``.

    Norm: lp, any ``p >= 1``. Shapes: ``x`` and ``delta`` ``(N, C, H, W)``, ``target``
    ``(N,)``; the per-sample results ``(N,)``.

    Args:
        eps: the radius; norm: ``p``.
        objective: ``"euclidean"`` (maximise ``||g(x + delta) - g(x)||_2``; the returned
            iterate is the one with the largest deviation) or ``"cosine"`` (maximise
            ``1 - cos(g(x + delta), g(x))``; the largest cosine distance is returned).
        Other arguments: see :class:`AttributionAttack`.
    """

    name = "pgd"

    def __init__(self, eps: float, norm: float | str = 2, *, objective: str = "euclidean",
                 **kwargs: Any) -> None:
        super().__init__(eps, **kwargs)
        self.p = parse_norm(norm)
        self._check_objective(objective)

    def random_start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n, d = x.shape[0], x[0].numel()
        u = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        radius = torch.rand(n, generator=generator, dtype=x.dtype, device=x.device) ** (1.0 / d)
        unit = u / per_sample(lp_norm(u, self.p).to(x.dtype).clamp_min(TINY), u)
        return per_sample(self.eps * radius, u) * unit

    def direction(self, grad: Tensor) -> Tensor:
        flat = grad.reshape(grad.shape[0], -1)
        top = flat.abs().amax(1, keepdim=True)
        q = Perturbation(self.p, 1.0).dual
        scaled = (flat.abs() / top.clamp_min(TINY)) ** (q - 1.0) if math.isfinite(q) \
            else (flat.abs() == top).to(flat.dtype)
        s = torch.sign(flat) * scaled
        s = s / torch.linalg.vector_norm(s, ord=self.p, dim=1, keepdim=True).clamp_min(TINY)
        return s.reshape(grad.shape)

    def project(self, delta: Tensor) -> Tensor:
        norms = lp_norm(delta, self.p)
        factor = (self.eps / norms.clamp_min(TINY)).clamp(max=1.0)
        return delta * per_sample(factor.to(delta.dtype), delta)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", norm={self.p}, objective={self.objective_name!r})"


class PGDL2(PGD):
    """PGD on the attribution in the l2 ball ``||delta||_2 <= eps``.

    Random start uniform in the ball (uniform direction, radius ``eps U^(1/d)``); steps
    ``alpha_t G / ||G||_2`` with ``G`` the gradient of the objective with respect to
    ``x + delta`` ``(N, C, H, W)``; projection ``delta * min(1, eps / ||delta||_2)``.
    Objectives ``"euclidean"`` (``||g(x + delta) - g(x)||_2``) and ``"cosine"``
    (``1 - cos``); see :class:`PGD` and :class:`AttributionAttack` for the arguments.

    Norm: l2. Shapes: ``x`` and ``delta`` ``(N, C, H, W)``, ``target`` ``(N,)``; the
    per-sample results ``(N,)``.
    """

    name = "pgd_l2"

    def __init__(self, eps: float, *, objective: str = "euclidean", **kwargs: Any) -> None:
        super().__init__(eps, 2, objective=objective, **kwargs)

    def direction(self, grad: Tensor) -> Tensor:
        norms = grad.reshape(grad.shape[0], -1).norm(dim=1).clamp_min(TINY)
        return grad / per_sample(norms, grad)


class PGDLinf(PGD):
    """PGD on the attribution in the l-inf ball ``||delta||_inf <= eps``.

    Random start uniform in ``[-eps, eps]^d``; sign steps ``alpha_t sign(G)`` with ``G`` the
    gradient of the objective with respect to ``x + delta`` ``(N, C, H, W)``; projection by
    clipping to ``[-eps, eps]``. Objectives ``"euclidean"`` and ``"cosine"`` as in
    :class:`PGD`; arguments in :class:`AttributionAttack`.

    Norm: l-inf. Shapes: ``x`` and ``delta`` ``(N, C, H, W)``, ``target`` ``(N,)``; the
    per-sample results ``(N,)``.
    """

    name = "pgd_linf"

    def __init__(self, eps: float, *, objective: str = "euclidean", **kwargs: Any) -> None:
        super().__init__(eps, math.inf, objective=objective, **kwargs)

    def random_start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return self.eps * (2.0 * u - 1.0)

    def direction(self, grad: Tensor) -> Tensor:
        return torch.sign(grad)

    def project(self, delta: Tensor) -> Tensor:
        return delta.clamp(-self.eps, self.eps)
