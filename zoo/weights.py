"""Seeded random weights that behave like trained ones.

A freshly built network is not what users certify: eval-mode BatchNorm with running
statistics 0 and 1 is an identity, and libraries initialise some parameters to zero or
nearly so (timm's MLP-Mixer head is zero, so every logit is 0 and every attribution too;
ConvNeXt's layer scales are 1e-6, so its residual branches vanish; ResNet's last BatchNorm
of each block is zero). :func:`seeded` draws those at random too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["revive", "seeded"]

#: Parameters whose entries are all below this in magnitude count as zero-initialised.
NEAR_ZERO = 1e-4


def seeded(build: Callable[[], nn.Module], seed: int = 0, *, revived: bool = False
           ) -> nn.Module:
    """``build()`` under ``torch.manual_seed(seed)``, with random BatchNorm statistics and
    affine parameters, frozen, in eval mode; ``revived``: also :func:`revive` it (what a
    library's initialisation leaves at zero)."""
    torch.manual_seed(seed)
    model = build()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if (isinstance(module, nn.modules.batchnorm._BatchNorm)
                    and module.running_mean is not None and module.running_var is not None):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                if module.affine:
                    module.weight.copy_(1 + 0.1 * torch.randn(n, generator=gen))
                    module.bias.copy_(0.1 * torch.randn(n, generator=gen))
    if revived:
        revive(model, seed)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def revive(model: nn.Module, seed: int = 0) -> nn.Module:
    """Draw at random every parameter whose entries are all below :data:`NEAR_ZERO`:
    matrices and kernels as ``N(0, 1 / fan_in)``, vectors (biases, layer scales, tokens)
    as ``0.1 N(0, 1)``. The other parameters keep their values."""
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() == 0 or float(p.detach().abs().max()) >= NEAR_ZERO:
                continue
            draw = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if p.dim() >= 2:
                draw /= (p.numel() // p.shape[0]) ** 0.5
            else:
                draw *= 0.1
            p.copy_(draw.to(p.dtype))
    return model
