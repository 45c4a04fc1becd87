"""Concatenation of the inputs along a per-sample axis: every pass concatenates (forwards)
or splits (backwards) its inputs' quantities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..rounding import ErrorModel
from .base import CR, Box, ErrorShare, Operator, Refused
from .registry import Call, reads


@dataclass(kw_only=True)
class Concat(Operator):
    """The inputs concatenated along the per-sample axis ``dim`` (``sizes``: theirs)."""

    kind = "cat"
    dim: int = 0
    sizes: tuple[int, ...] = ()

    def set_shapes(self, inputs: Sequence[tuple[int, ...]], shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.sizes = tuple(s[self.dim] for s in inputs)

    def value(self, args: list[Tensor]) -> Tensor:
        return torch.cat(args, dim=self.dim + 1)

    def pattern(self, ins: list[Tensor]) -> Tensor:
        return torch.cat(ins, dim=self.dim + 1)

    def enclose(self, ins: list[CR], twin: Tensor | None) -> CR:
        return (torch.cat([v[0] for v in ins], self.dim + 1),
                torch.cat([v[1] for v in ins], self.dim + 1))

    def tangent(self, tangents: list[CR], boxes: list[CR], pad: Tensor | float,
                twin: Tensor | None) -> CR:
        return (torch.cat([t[0] for t in tangents], self.dim + 2),
                torch.cat([t[1] for t in tangents], self.dim + 2))

    def adjoint(self, u: CR, boxes: list[CR], twin: Tensor | None) -> list[CR | None]:
        return list(zip(u[0].split(self.sizes, self.dim + 1),
                        u[1].split(self.sizes, self.dim + 1), strict=True))

    def forward_error(self, boxes: list[Box], errs: list[Tensor], model: ErrorModel,
                      straddle: Tensor | None) -> Tensor:
        return torch.cat(errs, dim=self.dim + 1)

    def backward_error(self, f: Tensor, total: Tensor, umag: Tensor, boxes: list[Box],
                       errs: list[Tensor], model: ErrorModel,
                       straddle: Tensor | None) -> list[ErrorShare]:
        return list(zip(f.split(self.sizes, self.dim + 1),
                        total.split(self.sizes, self.dim + 1), strict=True))


@reads("cat", supports=("concatenation",))
def read_cat(call: Call) -> Concat:
    """``torch.cat`` of variables and constants (a class token: a node of its own) along a
    per-sample axis."""
    parts = list(call.args[0])
    ids = [call.node_of(p) if call.is_var(p) else call.constant(p) for p in parts]
    dim = int(call.value(call.args[1] if len(call.args) > 1 else call.kwargs.get("dim", 0)))
    ndim = len(call.shape(call.node)) + 1
    dim = dim % ndim - 1
    if dim < 0:
        raise Refused("cat along the batch axis")
    return Concat(inputs=tuple(ids), name=call.node.name, dim=dim)
