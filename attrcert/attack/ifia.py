"""IFIA, the iterative feature importance attack of Ghorbani et al. (AAAI 2019), on the
attribution in the l-inf ball, with the paper's two objectives (:data:`IFIA_OBJECTIVES`):

- ``"topk"``: ``-sum_{i in topk(|g(x)|)} |g_i(x + delta)|``;
- ``"center_of_mass"``: ``||CM(|g(x + delta)|) - CM(|g(x)|)||_2``, ``CM`` over ``(H, W)``
  (:func:`center_of_mass`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import TINY, AttributionAttack
from .pgd import PGDLinf

__all__ = ["IFIA", "IFIA_OBJECTIVES", "center_of_mass"]

IFIA_OBJECTIVES = ("topk", "center_of_mass")


def center_of_mass(g: Tensor) -> Tensor:
    """Centre of mass ``(N, 2)`` (row, column) of the map ``|g|`` summed over channels.

    ``g`` is ``(N, C, H, W)`` (or ``(N, H, W)``); an all-zero map has its centre at 0.
    Differentiable in ``g`` (except where ``g_i = 0``).
    """
    m = g.abs()
    if m.ndim == 4:
        m = m.sum(1)
    if m.ndim != 3:
        raise ValueError(f"center_of_mass needs (N, C, H, W) or (N, H, W), got {tuple(g.shape)}")
    total = m.sum((1, 2)).clamp_min(TINY)
    rows = torch.arange(m.shape[1], dtype=m.dtype, device=m.device)
    cols = torch.arange(m.shape[2], dtype=m.dtype, device=m.device)
    return torch.stack([(m.sum(2) * rows).sum(1) / total, (m.sum(1) * cols).sum(1) / total], 1)


class IFIA(PGDLinf):
    """Iterative feature importance attack (Ghorbani et al., AAAI 2019) in the l-inf ball.

    Sign steps and clipping to ``[-eps, eps]`` as in :class:`PGDLinf`, on one of the
    paper's objectives, maximised over ``x + delta`` ``(N, C, H, W)``:

    - ``"topk"``: ``-sum_{i in K} |g_i(x + delta)|``, ``K`` the ``k`` largest ``|g_i(x)|``
      over all ``d = C H W`` entries (a differentiable surrogate of the top-k intersection);
    - ``"center_of_mass"``: ``||CM(|g(x + delta)|) - CM(|g(x)|)||_2``, ``CM`` the centre of
      mass of ``|g|`` summed over channels, over the ``(H, W)`` grid (its square is
      differentiated).

    The iterate kept is the one with the largest Euclidean deviation ``||g(x + delta) -
    g(x)||_2`` (what the bounds are about), not the best IFIA objective.

    Args:
        eps: the radius; objective: ``"topk"`` or ``"center_of_mass"``;
        k: the size of ``K`` (default ``max(1, d // 10)``).
        Other arguments: see :class:`AttributionAttack`.

    Norm: l-inf. Shapes: ``x`` and ``delta`` ``(N, C, H, W)`` (``"topk"`` also takes any
    ``(N, ...)``), ``target`` ``(N,)``; the per-sample results ``(N,)``.
    """

    name = "ifia"

    def __init__(self, eps: float, *, objective: str = "topk", k: int | None = None,
                 **kwargs: Any) -> None:
        AttributionAttack.__init__(self, eps, **kwargs)
        self.p = math.inf
        if objective not in IFIA_OBJECTIVES:
            raise ValueError(f"unknown IFIA objective {objective!r}: use one of "
                             f"{', '.join(IFIA_OBJECTIVES)}")
        if k is not None and (isinstance(k, bool) or int(k) != k or k < 1):
            raise ValueError(f"k = {k!r} must be an integer >= 1")
        self.objective_name = objective
        self.k = k

    def prepare(self, g0: Tensor) -> object:
        if self.objective_name == "center_of_mass":
            return center_of_mass(g0)
        flat = g0.reshape(g0.shape[0], -1).abs()
        k = min(flat.shape[1], self.k if self.k is not None else max(1, flat.shape[1] // 10))
        return flat.topk(k, dim=1).indices

    def objective(self, g: Tensor, g0: Tensor, context: object) -> Tensor:
        assert isinstance(context, Tensor)
        if self.objective_name == "center_of_mass":
            return ((center_of_mass(g) - context) ** 2).sum(1)
        return -g.reshape(g.shape[0], -1).abs().gather(1, context).sum(1)

    def score(self, deviation: Tensor, cosine_distance: Tensor) -> Tensor:
        return deviation

    def __repr__(self) -> str:
        return (f"IFIA(eps={self.eps}, steps={self.steps}, objective={self.objective_name!r}, "
                f"k={self.k})")
