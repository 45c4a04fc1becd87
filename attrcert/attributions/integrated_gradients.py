"""Integrated gradients with the right Riemann sum (Eq. 40).

``g = (x - b) * (1/m) sum_{a=1..m} grad f_y(b + (a/m)(x - b))``, ``b`` the baseline
(zeros by default) and ``m`` the number of steps. Equals Captum's
``IntegratedGradients(model).attribute(x, baselines=b, target=y, n_steps=m,
method="riemann_right")``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Attribution, Model, as_differentiable, target_gradient
from .quadrature import riemann_right


class IntegratedGradients(Attribution):
    """Integrated gradients along the straight path from ``baseline`` to ``x``.

    Args:
        steps: ``m``, the number of Riemann points (>= 1).
        baseline: ``b``, broadcastable to one sample ``(C, H, W)`` or to the batch;
            ``None`` means zeros.

    All ``m`` points of all samples go through the model as one batch of ``m * N``.
    The Jacobian (Eq. 45) is ``diag(mean_a grad f(z_a)) + diag(x - b) sum_a (a/m^2) Hess f(z_a)``.
    """

    name = "integrated_gradients"
    complete = True

    def __init__(self, steps: int = 50, baseline: Tensor | None = None) -> None:
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps = {steps!r} must be an integer >= 1")
        self.steps = int(steps)
        self.baseline = baseline

    def baseline_for(self, x: Tensor) -> Tensor:
        """The baseline broadcast to ``x``'s shape, dtype and device."""
        if self.baseline is None:
            return torch.zeros_like(x)
        return self.baseline.to(dtype=x.dtype, device=x.device).expand_as(x)

    def parts(
        self, model: Model, x: Tensor, target: Tensor, *, create_graph: bool = False
    ) -> tuple[Tensor, Tensor]:
        x = as_differentiable(x)
        n = x.shape[0]
        base = self.baseline_for(x)
        alphas, weights = riemann_right(self.steps, dtype=x.dtype, device=x.device)
        shape = (-1,) + (1,) * x.ndim
        path = base.unsqueeze(0) + alphas.view(shape) * (x - base).unsqueeze(0)
        path = path.reshape(self.steps * n, *x.shape[1:])
        if not create_graph:
            path = path.detach().requires_grad_(True)
        grads = target_gradient(model, path, target.repeat(self.steps), create_graph=create_graph)
        mean_grad = (weights.view(shape) * grads.view(self.steps, *x.shape)).sum(0)
        return x - base, mean_grad

    def __repr__(self) -> str:
        return f"IntegratedGradients(steps={self.steps})"
