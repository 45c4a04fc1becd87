"""Affine maps of one input, ``z = A t + b`` (Linear, Conv2d, pooling, means, reshapes, eval
BatchNorm, constant shifts and scales, broadcasting), and the stop-gradient.

The midpoint-radius rule ``A [c +- r]`` in ``[A c +- |A| r]`` (Rump) is :func:`affine_cr`;
the readers (:mod:`.affine_readers`) give ``lin`` (``t -> A t``), ``lin_abs`` (``t -> |A| t``),
the bias, and the fan-in / fan-out that the rounding term needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..intervals import SUM_REL, TINY, magnitude
from ..rounding import ErrorModel
from .base import CR, Box, ErrorShare, Operator

LinearFn = Callable[[Tensor], Tensor]


@dataclass(kw_only=True)
class Affine(Operator):
    """``t -> A t + bias`` on batches ``(B, *in_shape)``; ``lin`` is ``A t``, ``lin_abs``
    is ``|A| t`` (the same operation with its weights replaced by their absolute values);
    ``op`` names what it reads (``"aten.conv2d"``).

    Rounding (:mod:`..propagation`): torch's result has at most ``fan_in`` terms per output
    (0: exact, e.g. a reshape), its transpose ``fan_out`` per input; ``bias_abs`` replaces
    ``|bias|`` in the magnitude the rounding is relative to (eval BatchNorm).

    Errors: ``e' = |A| e + gamma_n (|A| (|z| + e) + |b|)`` forwards (``n`` the fan-in),
    ``f = |A|^T f' + gamma_n' |A|^T (|u| + f')`` backwards (fan-out ``n'``)."""

    op: str
    lin: LinearFn
    lin_abs: LinearFn
    bias: Tensor | None = None
    fan_in: int = 0
    fan_out: int = 0
    bias_abs: Tensor | None = None
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()

    kind = "affine"

    def set_shapes(self, inputs: Sequence[tuple[int, ...]], shape: tuple[int, ...]) -> None:
        self.shape = self.out_shape = shape
        self.in_shape = inputs[0]

    def value(self, args: list[Tensor]) -> Tensor:
        out = self.lin(args[0])
        return out if self.bias is None else out + self.bias

    def pattern(self, ins: list[Tensor]) -> Tensor:
        return self.lin_abs(ins[0].to(torch.float64)) > 0

    def enclose(self, ins: list[CR], twin: Tensor | None) -> CR:
        return affine_cr(self, *ins[0])

    def tangent(self, tangents: list[CR], boxes: list[CR], pad: Tensor | float,
                twin: Tensor | None) -> CR:
        tc, tr = tangents[0]
        d = tc.shape[1]
        flat = (tc.shape[0] * d, *tc.shape[2:])
        oc, orr = affine_cr(self, tc.reshape(flat), tr.reshape(flat), bias=False, pad=0.0,
                            crude=True)
        return oc.view(tc.shape[0], d, *oc.shape[1:]), orr.view(
            tc.shape[0], d, *oc.shape[1:]) + pad

    def adjoint(self, u: CR, boxes: list[CR], twin: Tensor | None) -> list[CR | None]:
        return [affine_t_cr(self, *u)]

    def forward_error(self, boxes: list[Box], errs: list[Tensor], model: ErrorModel,
                      straddle: Tensor | None) -> Tensor:
        e = self.lin_abs(errs[0])
        if model.rnd is not None and self.fan_in:
            babs = self.bias_abs if self.bias_abs is not None else (
                self.bias.abs() if self.bias is not None else 0.0)
            mag = magnitude(boxes[0]) + errs[0]
            e = e + model.gamma(self.fan_in) * (self.lin_abs(mag) + babs)
        return e * (1.0 + SUM_REL)

    def backward_error(self, f: Tensor, total: Tensor, umag: Tensor, boxes: list[Box],
                       errs: list[Tensor], model: ErrorModel,
                       straddle: Tensor | None) -> list[ErrorShare]:
        back = transpose(self.lin_abs, total, self.in_shape)
        ft = transpose(self.lin_abs, f, self.in_shape)
        if self.fan_out:
            ft = ft + model.gamma(self.fan_out) * back
        return [(ft * (1.0 + SUM_REL) + TINY, back)]


@dataclass(kw_only=True)
class StopGradient(Affine):
    """A stop-gradient (``aten.detach``): the identity on values and on their derivatives
    ``d z / d x``, but autograd's backward pass (and so the attribution) passes no adjoint
    through it, so every backward pass skips it; ``lin`` detaches, so that
    :func:`..nodes.forward` differentiates as torch does."""

    stops_gradient = True

    def adjoint(self, u: CR, boxes: list[CR], twin: Tensor | None) -> list[CR | None]:
        return [None]

    def backward_error(self, f: Tensor, total: Tensor, umag: Tensor, boxes: list[Box],
                       errs: list[Tensor], model: ErrorModel,
                       straddle: Tensor | None) -> list[ErrorShare]:
        return [None]


def affine_cr(a: Affine, c: Tensor, r: Tensor, *, bias: bool = True,
              pad: Tensor | float = TINY, crude: bool = False) -> CR:
    """``A (c +- r) + b`` enclosed: ``A c + b +- (|A| r + SUM_REL (|A| (|c| + r) + |b|) +
    pad)``. Tangents pass ``pad = TINY`` times their structural pattern (outside it every term
    is an exact zero, and so is the result) and ``crude``: the rounding's magnitude
    ``|A| (|c| + r)`` bounded by ``|A| 1`` times ``max (|c| + r)`` of each row of the batch,
    which saves one pass of ``|A|`` and changes the bound by ``1e-10`` relative at most."""
    out = a.lin(c)
    if crude:
        top = (c.abs() + r).reshape(c.shape[0], -1).amax(1)
        rows = a.lin_abs(torch.ones_like(c[:1]))
        mag = rows * top.view(-1, *([1] * (rows.ndim - 1)))
    else:
        mag = a.lin_abs(c.abs() + r)
    if bias and a.bias is not None:
        out = out + a.bias
        mag = mag + a.bias.abs()
    return out, a.lin_abs(r) + SUM_REL * mag + pad


def transpose(fn: LinearFn, v: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """``A^T v`` for the linear map ``fn`` (one vector-Jacobian product), batched over rows."""
    z = torch.zeros((v.shape[0], *in_shape), dtype=v.dtype, device=v.device,
                    requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(fn(z), z, v)
    return grad


def affine_t_cr(a: Affine, c: Tensor, r: Tensor) -> CR:
    """``A^T (c +- r)`` enclosed (the transposes of ``lin`` and ``lin_abs``)."""
    out = transpose(a.lin, c, a.in_shape)
    mag = transpose(a.lin_abs, c.abs() + r, a.in_shape)
    return out, transpose(a.lin_abs, r, a.in_shape) + SUM_REL * mag + TINY
