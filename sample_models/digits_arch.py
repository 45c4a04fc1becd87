"""Architectures of the sample digit classifiers (28x28 grayscale input, 10 classes).

Single source of truth for the layer layout: ``train.py`` builds its models with
:func:`make_cnn`, and a weights-only loader (``*.safetensors``) can rebuild the
untrained module with :func:`softplus_cnn` or :func:`relu_maxpool_cnn` and then
``load_state_dict`` into it.
"""

from __future__ import annotations

from torch import nn

__all__ = ["make_cnn", "relu_maxpool_cnn", "softplus_cnn"]


def make_cnn(smooth: bool) -> nn.Sequential:
    """Small LeNet-style CNN for (N, 1, 28, 28) inputs.

    ``smooth=True`` uses Softplus activations and average pooling, so the network is
    twice differentiable everywhere; ``smooth=False`` uses ReLU and max pooling.
    """
    act: type[nn.Module] = nn.Softplus if smooth else nn.ReLU
    pool: type[nn.Module] = nn.AvgPool2d if smooth else nn.MaxPool2d
    return nn.Sequential(
        nn.Conv2d(1, 8, 5),  # 28 -> 24
        act(),
        pool(2),  # 24 -> 12
        nn.Conv2d(8, 16, 5),  # 12 -> 8
        act(),
        pool(2),  # 8 -> 4
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        act(),
        nn.Linear(32, 10),
    )


def softplus_cnn() -> nn.Sequential:
    """Untrained Softplus / average-pool CNN (matches ``digits_softplus.*``)."""
    return make_cnn(smooth=True)


def relu_maxpool_cnn() -> nn.Sequential:
    """Untrained ReLU / max-pool CNN (matches ``digits_relu_maxpool.*``)."""
    return make_cnn(smooth=False)
