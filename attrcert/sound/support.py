"""What sound mode can read, and the one-line refusals for what it cannot."""

from __future__ import annotations

from ..errors import InputError

SUPPORTED = ("Linear", "Conv2d", "AvgPool2d / adaptive average pooling / means",
             "Flatten / reshape", "BatchNorm (eval)", "residual additions",
             "elementwise products (gates)", "concatenation", "Tanh", "Sigmoid", "Softplus",
             "SiLU", "GELU")

NOT_SMOOTH = {
    "relu": "ReLU", "relu_": "ReLU", "max_pool2d": "max-pooling",
    "max_pool2d_with_indices": "max-pooling", "adaptive_max_pool2d": "max-pooling",
    "leaky_relu": "LeakyReLU", "hardtanh": "Hardtanh", "elu": "ELU", "relu6": "ReLU6",
    "hardswish": "Hardswish", "hardsigmoid": "Hardsigmoid", "abs": "abs",
    "maximum": "maximum", "minimum": "minimum", "clamp": "clamp", "amax": "max",
    "max": "max", "sign": "sign", "round": "round",
}

NOT_ENCLOSED = {
    "layer_norm": "LayerNorm", "native_layer_norm": "LayerNorm", "group_norm": "GroupNorm",
    "native_group_norm": "GroupNorm", "softmax": "softmax", "_softmax": "softmax",
    "_safe_softmax": "softmax", "log_softmax": "log-softmax", "_log_softmax": "log-softmax",
    "scaled_dot_product_attention": "softmax attention",
    "_scaled_dot_product_flash_attention_for_cpu": "softmax attention",
    "_scaled_dot_product_efficient_attention": "softmax attention",
    "bmm": "a product of two activations (attention)",
    "matmul": "a product of two activations (attention)",
    "baddbmm": "a product of two activations (attention)",
}


def refusal(op: str) -> InputError:
    """The one-line error for the ATen operation ``op`` that sound mode cannot bound."""
    if op in NOT_SMOOTH:
        return InputError(
            f"--sound cannot bound a model with {NOT_SMOOTH[op]} (aten.{op}): it is not twice "
            "differentiable, so the attribution has no bounded Jacobian; use a model built "
            f"from {', '.join(SUPPORTED)}")
    if op in NOT_ENCLOSED:
        return InputError(
            f"--sound does not bound {NOT_ENCLOSED[op]} (aten.{op}): no proved enclosure of "
            "its second derivatives is implemented; supported are "
            f"{', '.join(SUPPORTED)}")
    return InputError(f"--sound does not support the operation aten.{op} in this model: "
                      f"supported are {', '.join(SUPPORTED)}")
