"""Per-channel normalisation ``(x - mean) / std`` folded into the model as its first layer,
so that eps stays in pixel units (docs/math.md §1)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import OptionError


class Normalized(nn.Module):
    """``model((x - mean) / std)``, with ``mean`` and ``std`` as ``(1, C, 1, 1)`` buffers.

    ``train()``/``eval()`` set this module's flag and pass it on to the children that
    accept it: a torch.export module (which refuses both) is left as it was exported.
    """

    def __init__(self, model: nn.Module, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        """The wrapped model on the normalized input."""
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        channels = mean.shape[1]
        if channels != 1 and x.ndim == 4 and x.shape[1] != channels:
            raise OptionError(f"--mean/--std have {channels} values but the images have "
                              f"{x.shape[1]} channels")
        return self.model((x - mean) / std)

    def train(self, mode: bool = True) -> Normalized:
        """Set the training flag here and in every child that accepts it."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        for child in self.children():
            with contextlib.suppress(NotImplementedError):
                child.train(mode)
        return self


def _stats(values: Sequence[float], name: str) -> Tensor:
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise OptionError(f"--{name} must be numbers, got {values!r}") from None
    if not floats:
        raise OptionError(f"--{name} needs at least one value")
    if not all(np.isfinite(floats)):
        raise OptionError(f"--{name} must be finite, got {floats}")
    return torch.tensor(floats, dtype=torch.float32).view(1, -1, 1, 1)


def with_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]
                       ) -> Normalized:
    """``model`` behind per-channel normalization ``(x - mean) / std`` (see :class:`Normalized`).

    ``mean`` and ``std`` hold one value per channel, or one value for all channels. The
    wrapper's parameters are the model's, so ``next(wrapper.parameters())`` tells its device
    and dtype; it is differentiable twice wherever the model is.

    Raises:
        OptionError: empty or non-finite values, ``std <= 0``, or lengths that differ
            (other than 1).
    """
    mean_t, std_t = _stats(mean, "mean"), _stats(std, "std")
    if (std_t <= 0).any():
        raise OptionError(f"--std must be positive, got {std_t.flatten().tolist()}")
    if mean_t.shape[1] != std_t.shape[1] and 1 not in (mean_t.shape[1], std_t.shape[1]):
        raise OptionError(f"--mean has {mean_t.shape[1]} values and --std {std_t.shape[1]}: "
                          "give one per channel (or one for all)")
    channels = max(mean_t.shape[1], std_t.shape[1])
    mean_t = mean_t.expand(1, channels, 1, 1).clone()
    std_t = std_t.expand(1, channels, 1, 1).clone()
    param = next(iter(model.parameters()), None)
    if param is not None and param.is_floating_point():
        mean_t, std_t = (t.to(device=param.device, dtype=param.dtype) for t in (mean_t, std_t))
    wrapped = Normalized(model, mean_t, std_t)
    wrapped.training = model.training  # else a later train(was_training) trains the model
    return wrapped
