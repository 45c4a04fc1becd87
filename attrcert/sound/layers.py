"""The layers of the float64 copy of the network: affine maps and activations, and the
midpoint-radius rule for affine maps (``A [c +- r]`` is in ``[A c +- |A| r]``, Rump)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .activations import Activation
from .intervals import SUM_REL, TINY


@dataclass
class Affine:
    """``t -> A t + bias`` on batches ``(B, *in_shape)``; ``lin`` is ``A t``, ``lin_abs``
    is ``|A| t`` (the same operation with its weights replaced by their absolute values)."""

    name: str
    lin: Callable[[Tensor], Tensor]
    lin_abs: Callable[[Tensor], Tensor]
    bias: Tensor | None
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    fan_in: int = 0
    fan_out: int = 0
    bias_abs: Tensor | None = None


@dataclass
class Layer:
    """One step of the chain: an affine map or an elementwise activation."""

    affine: Affine | None = None
    act: Activation | None = None


def forward(layers: list[Layer], x: Tensor) -> Tensor:
    """The chain's output (float64) for ``x`` ``(B, *in_shape)``: a plain torch function,
    differentiable, used to check the extraction against the model."""
    t = x
    for layer in layers:
        if layer.affine is not None:
            a = layer.affine
            t = a.lin(t) + (a.bias if a.bias is not None else 0.0)
        else:
            assert layer.act is not None
            t = layer.act.value(0, t)
    return t


def affine_cr(a: Affine, c: Tensor, r: Tensor, *, bias: bool = True) -> tuple[Tensor, Tensor]:
    """``A (c +- r) + b`` enclosed: ``A c + b +- (|A| r + SUM_REL (|A| (|c| + r) + |b|))``."""
    out = a.lin(c)
    mag = a.lin_abs(c.abs() + r)
    if bias and a.bias is not None:
        out = out + a.bias
        mag = mag + a.bias.abs()
    return out, a.lin_abs(r) + SUM_REL * mag + TINY


def transpose(fn: Callable[[Tensor], Tensor], v: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """``A^T v`` for the linear map ``fn`` (one vector-Jacobian product), batched over rows."""
    z = torch.zeros((v.shape[0], *in_shape), dtype=v.dtype, device=v.device,
                    requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(fn(z), z, v)
    return grad


def affine_t_cr(a: Affine, c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """``A^T (c +- r)`` enclosed (the transposes of ``lin`` and ``lin_abs``)."""
    out = transpose(a.lin, c, a.in_shape)
    mag = transpose(a.lin_abs, c.abs() + r, a.in_shape)
    return out, transpose(a.lin_abs, r, a.in_shape) + SUM_REL * mag + TINY
