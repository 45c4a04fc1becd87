"""Saliency (signed gradient): ``g = grad_x f_y(x)``.

Signed, with no absolute value, which would not be differentiable at 0. Equals
Captum's ``Saliency(model).attribute(x, target, abs=False)``.
"""

from __future__ import annotations

from torch import Tensor

from .base import Attribution, Model, as_differentiable, target_gradient


class Saliency(Attribution):
    """``g = grad_x f_y(x)``; its Jacobian is the Hessian of ``f_y``."""

    name = "saliency"

    def parts(
        self, model: Model, x: Tensor, target: Tensor, *, create_graph: bool = False
    ) -> tuple[None, Tensor]:
        return None, target_gradient(model, as_differentiable(x), target,
                                     create_graph=create_graph)
