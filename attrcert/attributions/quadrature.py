"""Quadrature rules for path integrals, isolated from the methods that use them.

Integrated gradients approximates ``int_0^1 grad f(b + a (x - b)) da`` by
``sum_a w_a grad f(b + alpha_a (x - b))``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def riemann_right(steps: int, *, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """The right Riemann sum of Eq. 40: ``alpha_a = a / m``, ``w_a = 1 / m``, ``a = 1..m``.

    The same points and weights as Captum's ``method="riemann_right"``.
    """
    if steps < 1:
        raise ValueError(f"steps = {steps} must be >= 1")
    alphas = torch.arange(1, steps + 1, dtype=dtype, device=device) / steps
    weights = torch.full((steps,), 1.0 / steps, dtype=dtype, device=device)
    return alphas, weights
