"""Input x gradient: ``g = x * grad_x f_y(x)`` (elementwise).

Equals Captum's ``InputXGradient(model).attribute(x, target)``.
"""

from __future__ import annotations

from torch import Tensor

from .base import Attribution, Model, as_differentiable, target_gradient


class InputXGradient(Attribution):
    """``g = x * grad_x f_y(x)``; ``J = diag(grad f_y) + diag(x) Hess f_y``."""

    name = "input_x_gradient"

    def parts(
        self, model: Model, x: Tensor, target: Tensor, *, create_graph: bool = False
    ) -> tuple[Tensor, Tensor]:
        x = as_differentiable(x)
        return x, target_gradient(model, x, target, create_graph=create_graph)
