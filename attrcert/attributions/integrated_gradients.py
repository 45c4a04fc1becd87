"""Integrated gradients with the right Riemann sum (Eq. 40).

``g = (x - b) * (1/m) sum_{a=1..m} grad f_y(b + (a/m)(x - b))``, ``b`` the baseline
(zeros by default) and ``m`` the number of steps. Equals Captum's
``IntegratedGradients(model).attribute(x, baselines=b, target=y, n_steps=m,
method="riemann_right")``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Attribution, Model, as_differentiable, target_gradient
from .quadrature import riemann_right

#: :meth:`IntegratedGradients.coarse` keeps one point in this many
COARSE_DIVISOR = 8


class IntegratedGradients(Attribution):
    """Integrated gradients along the straight path from ``baseline`` to ``x``.

    Args:
        steps: ``m``, the number of Riemann points (>= 1).
        baseline: ``b``, broadcastable to one sample ``(C, H, W)`` or to the batch;
            ``None`` means zeros.

    All ``m`` points of all samples go through the model as one batch of ``m * N``;
    :meth:`segments` cuts them into groups whose graphs are built one at a time.
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

    @property
    def points(self) -> int:
        """``m``: the Riemann points, one gradient of the model each."""
        return self.steps

    def coarse(self) -> IntegratedGradients | None:
        """Integrated gradients with ``max(1, m // COARSE_DIVISOR)`` Riemann points (same
        baseline): a product with its Jacobian costs that fraction of one with Eq. 45's, and
        its top singular vector is close to this one's (both sums approximate the same path
        integral); ``None`` for ``m = 1``."""
        if self.steps < 2:
            return None
        return IntegratedGradients(steps=max(1, self.steps // COARSE_DIVISOR),
                                   baseline=self.baseline)

    def segments(self, sizes: Sequence[int]) -> list[Attribution]:
        """:class:`PathSegment` s over consecutive groups of ``sizes`` Riemann points
        (``sum(sizes) = m``); their attributions sum to this one's."""
        sizes = [int(size) for size in sizes]
        if sum(sizes) != self.steps or min(sizes, default=0) < 1:
            raise ValueError(f"segment sizes {sizes} must be >= 1 and sum to m = {self.steps}")
        if len(sizes) == 1:
            return [self]
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        return [PathSegment(self, start, size) for start, size in zip(starts, sizes, strict=True)]

    def parts(
        self, model: Model, x: Tensor, target: Tensor, *, create_graph: bool = False
    ) -> tuple[Tensor, Tensor]:
        alphas, weights = riemann_right(self.steps, dtype=x.dtype, device=x.device)
        return _path_parts(model, x, target, self.baseline_for(x), alphas, weights,
                           create_graph=create_graph)

    def __repr__(self) -> str:
        return f"IntegratedGradients(steps={self.steps})"


class PathSegment(Attribution):
    """Points ``a = start + 1 .. start + count`` of an :class:`IntegratedGradients` sum:
    ``g_s = (x - b) * sum_{a in s} w_a grad f_y(b + alpha_a (x - b))`` (Eq. 40 restricted to
    the segment). The segments of :meth:`IntegratedGradients.segments` sum to ``g``, and
    their Jacobians to Eq. 45's ``J``; one segment's graph holds ``count`` forward passes
    instead of ``m``."""

    def __init__(self, whole: IntegratedGradients, start: int, count: int) -> None:
        if start < 0 or count < 1 or start + count > whole.steps:
            raise ValueError(f"points {start + 1}..{start + count} are not among the "
                             f"m = {whole.steps} points")
        self.whole, self.start, self.count = whole, start, count
        self.name = f"{whole.name}[{start + 1}..{start + count}]"

    @property
    def points(self) -> int:
        return self.count

    def parts(
        self, model: Model, x: Tensor, target: Tensor, *, create_graph: bool = False
    ) -> tuple[Tensor, Tensor]:
        alphas, weights = riemann_right(self.whole.steps, dtype=x.dtype, device=x.device)
        window = slice(self.start, self.start + self.count)
        return _path_parts(model, x, target, self.whole.baseline_for(x), alphas[window],
                           weights[window], create_graph=create_graph)

    def __repr__(self) -> str:
        return (f"PathSegment({self.whole!r}, points {self.start + 1}.."
                f"{self.start + self.count})")


def _path_parts(model: Model, x: Tensor, target: Tensor, base: Tensor, alphas: Tensor,
                weights: Tensor, *, create_graph: bool) -> tuple[Tensor, Tensor]:
    """``(x - b, sum_a w_a grad f_y(b + alpha_a (x - b)))``, all points of all samples in one
    batch of ``len(alphas) * N``."""
    x = as_differentiable(x)
    n, steps = x.shape[0], alphas.shape[0]
    shape = (-1,) + (1,) * x.ndim
    path = base.unsqueeze(0) + alphas.view(shape) * (x - base).unsqueeze(0)
    path = path.reshape(steps * n, *x.shape[1:])
    if not create_graph:
        path = path.detach().requires_grad_(True)
    grads = target_gradient(model, path, target.repeat(steps), create_graph=create_graph)
    mean_grad = (weights.view(shape) * grads.view(steps, *x.shape)).sum(0)
    return x - base, mean_grad
