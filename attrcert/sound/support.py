"""What sound mode can read, and the one-line refusals for what it cannot."""

from __future__ import annotations

from ..errors import InputError

SUPPORTED = ("Linear", "Conv2d", "AvgPool2d", "Flatten", "BatchNorm (eval)", "Tanh",
             "Sigmoid", "Softplus", "SiLU", "GELU")


NOT_SMOOTH = {
    "relu": "ReLU", "relu_": "ReLU", "max_pool2d": "max-pooling",
    "max_pool2d_with_indices": "max-pooling", "leaky_relu": "LeakyReLU",
    "hardtanh": "Hardtanh", "elu": "ELU", "relu6": "ReLU6", "hardswish": "Hardswish",
    "hardsigmoid": "Hardsigmoid", "abs": "abs", "maximum": "maximum", "clamp": "clamp",
}


def refusal(op: str) -> InputError:
    if op in NOT_SMOOTH:
        return InputError(
            f"--sound cannot bound a model with {NOT_SMOOTH[op]} (aten.{op}): it is not twice "
            "differentiable, so the attribution has no bounded Jacobian; use a model built "
            f"from {', '.join(SUPPORTED)}")
    return InputError(f"--sound does not support the operation aten.{op} in this model: "
                      f"supported are {', '.join(SUPPORTED)} in a chain")
