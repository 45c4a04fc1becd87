"""Gradient attributions, one module per method behind :class:`Attribution`."""

from __future__ import annotations

from torch import Tensor

from ..errors import OptionError
from .base import Attribution, Model, summed, target_gradient
from .differentiable import NotDifferentiableError, differentiable_forward
from .input_x_gradient import InputXGradient
from .integrated_gradients import IntegratedGradients
from .saliency import Saliency

METHODS = ("integrated_gradients", "saliency", "input_x_gradient")


def get_method(name: str, *, steps: int = 50, baseline: Tensor | None = None) -> Attribution:
    """The attribution called ``name`` (one of :data:`METHODS`)."""
    if name == "saliency":
        return Saliency()
    if name == "input_x_gradient":
        return InputXGradient()
    if name == "integrated_gradients":
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise OptionError(f"steps = {steps!r} must be an integer >= 1")
        return IntegratedGradients(steps=int(steps), baseline=baseline)
    raise OptionError(f"unknown method {name!r}: use one of {', '.join(METHODS)}")


__all__ = [
    "METHODS",
    "Attribution",
    "InputXGradient",
    "IntegratedGradients",
    "Model",
    "NotDifferentiableError",
    "Saliency",
    "differentiable_forward",
    "get_method",
    "summed",
    "target_gradient",
]


def resolve_target(model: Model, x: Tensor, target: int | Tensor | list[int] | None) -> Tensor:
    """Target classes ``(N,)`` long: the predicted classes when ``target`` is None."""
    import torch

    if target is None:
        with torch.no_grad():
            return model(x).argmax(dim=1)
    t = torch.as_tensor(target, dtype=torch.long, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise OptionError(
            f"target has shape {tuple(t.shape)}: give one class per sample ({x.shape[0]})"
        )
    return t.clone()


def attribute(
    model: Model,
    x: Tensor,
    *,
    method: str = "integrated_gradients",
    target: int | Tensor | list[int] | None = None,
    steps: int = 50,
    baseline: Tensor | None = None,
    create_graph: bool = False,
) -> Tensor:
    """The attribution ``g^y(x)`` of docs/math.md §1, shaped like ``x`` ``(N, C, H, W)``.

    Args:
        model: a classifier returning logits ``(N, k)``, in eval mode.
        x: the inputs.
        method: ``"integrated_gradients"`` (Eq. 40, right Riemann sum), ``"saliency"``
            (``grad_x f_y``) or ``"input_x_gradient"`` (``x * grad_x f_y``).
        target: class per sample (int, list or ``(N,)`` tensor); the prediction if None.
        steps: IG's ``m``.
        baseline: IG's ``b`` (zeros if None), broadcastable to ``x``.
        create_graph: keep ``g`` differentiable in ``x`` (pass an ``x`` that requires grad
            to differentiate with respect to it), e.g. for Jacobians or attribution attacks.
    """
    if baseline is not None and method != "integrated_gradients":
        raise OptionError("a baseline applies only to integrated_gradients")
    attribution = get_method(method, steps=steps, baseline=baseline)
    return attribution(model, x, resolve_target(model, x, target), create_graph=create_graph)


__all__ += ["attribute", "resolve_target"]
