"""Operators of two variable inputs of the same shape: ``z_a + s z_b`` (residual additions)
and ``z_a * z_b`` elementwise (gates such as squeeze-excitation). Broadcasting is an affine
expand before them (:func:`.affine_readers.broadcast`).

Errors (:mod:`..propagation`): ``e' = e_a + |s| e_b`` plus one rounding of the sum, the
adjoint to both (times ``|s|``); ``e' = |a| e_b + |b| e_a + e_a e_b`` plus one rounding of
the product, to ``a``: ``f (|b| + e_b) + |u| e_b``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..intervals import REL, TINY, magnitude, mul, mul_cr, to_cr, to_lohi
from ..rounding import ErrorModel
from .affine_readers import broadcast, const_op
from .base import CR, Box, ErrorShare, HessianTerms, Operator, interval_sum, scale_tangents
from .registry import Call, reads


@dataclass(kw_only=True)
class Sum(Operator):
    """``z_a + sign z_b``."""

    kind = "add"
    sign: float = 1.0

    def value(self, args: list[Tensor]) -> Tensor:
        return args[0] + self.sign * args[1]

    def enclose(self, ins: list[CR], twin: Tensor | None) -> CR:
        return interval_sum(ins[0], ins[1], self.sign)

    def tangent(self, tangents: list[CR], boxes: list[CR], pad: Tensor | float,
                twin: Tensor | None) -> CR:
        return interval_sum(tangents[0], tangents[1], self.sign, pad)

    def adjoint(self, u: CR, boxes: list[CR], twin: Tensor | None) -> list[CR | None]:
        s = self.sign
        return [u, (s * u[0], abs(s) * u[1] + REL * (s * u[0]).abs())]

    def forward_error(self, boxes: list[Box], errs: list[Tensor], model: ErrorModel,
                      straddle: Tensor | None) -> Tensor:
        s, u = abs(self.sign), model.u
        mags = [magnitude(b) + e for b, e in zip(boxes, errs, strict=True)]
        return errs[0] + s * errs[1] + (u if s == 1.0 else 2.0 * u) * (mags[0] + s * mags[1])

    def backward_error(self, f: Tensor, total: Tensor, umag: Tensor, boxes: list[Box],
                       errs: list[Tensor], model: ErrorModel,
                       straddle: Tensor | None) -> list[ErrorShare]:
        s = abs(self.sign)
        extra = 0.0 if s == 1.0 else model.u * s * total
        return [(f, total), (s * f + extra, s * total)]


@dataclass(kw_only=True)
class Product(Operator):
    """``z_a * z_b`` elementwise; its own second derivative is the bilinear Hessian term
    ``J_a^T diag(u) J_b + J_b^T diag(u) J_a``."""

    kind = "mul"
    linear = False
    uses_input_values = True

    def value(self, args: list[Tensor]) -> Tensor:
        return args[0] * args[1]

    def enclose(self, ins: list[CR], twin: Tensor | None) -> CR:
        return to_cr(*mul(*to_lohi(*ins[0]), *to_lohi(*ins[1])))

    def tangent(self, tangents: list[CR], boxes: list[CR], pad: Tensor | float,
                twin: Tensor | None) -> CR:
        ja = scale_tangents(to_lohi(*boxes[1]), tangents[0], pad)
        jb = scale_tangents(to_lohi(*boxes[0]), tangents[1], pad)
        return interval_sum(ja, jb, 1.0, pad)

    def adjoint(self, u: CR, boxes: list[CR], twin: Tensor | None) -> list[CR | None]:
        (a_lo, a_hi), (b_lo, b_hi) = (to_lohi(*b) for b in boxes)
        return [mul_cr(b_lo, b_hi, *u), mul_cr(a_lo, a_hi, *u)]

    def hessian(self, terms: HessianTerms, u: CR, boxes: list[CR],
                twin: Tensor | None) -> None:
        wc, wr = (v.reshape(v.shape[0], -1) for v in u)
        terms.pair(self.inputs[0], self.inputs[1], (wc, wr))

    def forward_error(self, boxes: list[Box], errs: list[Tensor], model: ErrorModel,
                      straddle: Tensor | None) -> Tensor:
        mags = [magnitude(b) + e for b, e in zip(boxes, errs, strict=True)]
        return mags[0] * errs[1] + mags[1] * errs[0] + model.u * mags[0] * mags[1]

    def backward_error(self, f: Tensor, total: Tensor, umag: Tensor, boxes: list[Box],
                       errs: list[Tensor], model: ErrorModel,
                       straddle: Tensor | None) -> list[ErrorShare]:
        out: list[ErrorShare] = []
        for other in (1, 0):
            omag = magnitude(boxes[other]) + errs[other]
            ft = f * omag + umag * errs[other] + model.u * total * omag
            out.append((ft * (1.0 + REL) + TINY, total * omag))
        return out


def _two(call: Call) -> tuple[int, int]:
    """The nodes of the two variable operands, each broadcast to the result's shape."""
    out = call.shape(call.node)
    ids = []
    for v in call.variables():
        i, shape = call.node_of(v), call.shape(v)
        ids.append(i if shape == out else call.add(broadcast(i, shape, out)))
    return ids[0], ids[1]


@reads("add", "sub", inplace=True, supports=("residual additions",))
def read_sum(call: Call) -> Operator:
    """``a + alpha b`` / ``a - alpha b`` of two variables; with one, a constant shift."""
    if len(call.variables()) != 2:
        return const_op(call)
    a, b = _two(call)
    args, kwargs = call.args, call.kwargs
    alpha = float(call.value(kwargs.get("alpha", args[2] if len(args) > 2 else 1.0)))
    return Sum(inputs=(a, b), name=call.node.name, sign=alpha if call.op == "add" else -alpha)


@reads("mul", inplace=True, supports=("elementwise products (gates)",))
def read_product(call: Call) -> Operator:
    """``a * b`` of two variables; with one, a constant scale."""
    if len(call.variables()) != 2:
        return const_op(call)
    return Product(inputs=_two(call), name=call.node.name)
