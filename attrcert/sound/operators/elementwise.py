"""Elementwise activations ``sigma(z)`` (Tanh, Sigmoid, Softplus, SiLU, GELU): the operator,
its Softplus twin, and its reader. The proved ranges of ``sigma``, ``sigma'`` and
``sigma''`` are :class:`..activations.Activation`'s.

Errors (:mod:`..propagation`): ``e' = L1 e + i_sigma``; with ``|s_hat - s| <= ds = L2 e +
k_sigma``, ``f (|s| + ds) + |u| ds`` backwards (``L1``, ``L2``: ``sup |sigma'|``, ``sup
|sigma''|`` over the interval widened by ``e``, where both the computed and the exact ``z``
lie); ``i_sigma = ulps u (|sigma| + |z|)``, ``k_sigma = ulps u (1 + kappa |z|)`` (the
kernels' assumed accuracy), and where a Softplus threshold is within ``e`` of the interval,
the value and slope jumps (torch may take the other branch).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ...errors import InputError
from ..activations import Activation, activation, slope_deviation, twin_range
from ..intervals import REL, TINY, magnitude, mul, mul_cr, to_cr, to_lohi
from ..rounding import ErrorModel
from .base import CR, Box, ErrorShare, HessianTerms, Operator, Refused, scale_tangents
from .registry import Call, reads


@dataclass(kw_only=True)
class Elementwise(Operator):
    """``fn(z)`` elementwise; its own second derivative is ``J^T diag(u fn''(z)) J``.

    torch's Softplus switches to the identity above its :attr:`threshold`, where its
    derivative jumps; the passes then enclose a twin, the identity on the units ``twin``
    marks (whose interval lies above the threshold, where it equals torch's function) and
    the smooth closed form elsewhere, and bound the gap (:meth:`twin_units`)."""

    kind = "act"
    linear = False
    uses_input_values = True
    fn: Activation

    @property
    def threshold(self) -> float | None:
        return self.fn.threshold

    def value(self, args: list[Tensor]) -> Tensor:
        return self.fn.value(0, args[0])

    def enclose(self, ins: list[CR], twin: Tensor | None) -> CR:
        return to_cr(*twin_range(self.fn, 0, *to_lohi(*ins[0]), twin))

    def tangent(self, tangents: list[CR], boxes: list[CR], pad: Tensor | float,
                twin: Tensor | None) -> CR:
        return scale_tangents(twin_range(self.fn, 1, *to_lohi(*boxes[0]), twin), tangents[0],
                              pad)

    def adjoint(self, u: CR, boxes: list[CR], twin: Tensor | None) -> list[CR | None]:
        return [mul_cr(*twin_range(self.fn, 1, *to_lohi(*boxes[0]), twin), *u)]

    def hessian(self, terms: HessianTerms, u: CR, boxes: list[CR],
                twin: Tensor | None) -> None:
        lo, hi = to_lohi(*boxes[0])
        wc, wr = to_cr(*mul(*to_lohi(*u), *twin_range(self.fn, 2, lo, hi, twin)))
        terms.square(self.inputs[0], (wc.reshape(wc.shape[0], -1),
                                      wr.reshape(wr.shape[0], -1)))

    def slope_deviation(self, ball: CR, point: CR, twin: Tensor | None) -> Tensor:
        """``max |fn'(z(x')) - fn'(z(x))|`` over the ball, per unit ``(P, n)``, from the
        input's ball and point enclosures."""
        return slope_deviation(self.fn, ball, point, twin)

    def twin_units(self, ball: Box, point: Box, drift: tuple[Tensor, Tensor],
                   twin: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """With a threshold: the twin's identity units (``twin``, or those whose ball
        interval, widened by ``drift[0]`` (``|z - z_s|`` of the input over the ball), lies
        above it), and the units whose ball (point) interval reaches it where the twin is
        the smooth form, which the gap's jumps are injected on (``drift[1]``: at the
        point)."""
        thr = self.fn.threshold
        assert thr is not None
        mask = ball[0] - drift[0] > thr if twin is None else twin
        near = (~mask & (ball[1] + drift[0] >= thr)).to(ball[0].dtype)
        near0 = (~mask & (point[1] + drift[1] >= thr)).to(ball[0].dtype)
        return mask, near, near0

    def forward_error(self, boxes: list[Box], errs: list[Tensor], model: ErrorModel,
                      straddle: Tensor | None) -> Tensor:
        act, box, e_in, u = self.fn, boxes[0], errs[0], model.u
        lip = magnitude(act.range(1, box[0] - e_in, box[1] + e_in))  # sup |sigma'| near z
        e = lip * e_in
        if model.rnd is not None:
            mag = magnitude(box) + e_in
            vmag = magnitude(act.range(0, *box)) + lip * e_in
            e = e + act.ulps * u * (vmag + mag) + _near(act, box, e_in, u) * act.gap
        if straddle is not None:
            e = e + straddle * act.gap
        return e

    def backward_error(self, f: Tensor, total: Tensor, umag: Tensor, boxes: list[Box],
                       errs: list[Tensor], model: ErrorModel,
                       straddle: Tensor | None) -> list[ErrorShare]:
        act, box, e, u = self.fn, boxes[0], errs[0], model.u
        smag = magnitude(act.range(1, *box))
        ds = magnitude(act.range(2, box[0] - e, box[1] + e)) * e  # sup |sigma''| near z
        if model.rnd is not None:
            ds = ds + act.ulps * u * (1.0 + act.kappa * (magnitude(box) + e)) \
                + _near(act, box, e, u) * act.jump
        if straddle is not None:
            ds = ds + straddle * act.jump
        ft = f * (smag + ds) + umag * ds + 4.0 * u * total * (smag + ds)
        return [(ft * (1.0 + REL) + TINY, total * (smag + ds))]


def _near(act: Activation, box: Box, err: Tensor, u: float) -> Tensor | float:
    """1 where ``[lo - err, hi + err]`` (and the rounding of ``beta z``) reaches the threshold."""
    if act.threshold is None:
        return 0.0
    lo, hi = box
    pad = err + 2.0 * u * magnitude(box) + TINY
    return ((lo - pad <= act.threshold) & (hi + pad >= act.threshold)).to(lo.dtype)


@reads("tanh", "sigmoid", "softplus", "silu", "gelu", inplace=True,
       supports=("Tanh", "Sigmoid", "Softplus", "SiLU", "GELU"))
def read_activation(call: Call) -> Elementwise:
    """The activation of one variable (Softplus with ``beta > 0``; exact GELU only)."""
    src = call.source()
    op, args, kwargs = call.op, call.args, call.kwargs
    if not call.is_var(args[0]):
        raise Refused(op)
    if op == "softplus":
        beta = float(call.value(args[1]) if len(args) > 1 else kwargs.get("beta", 1.0))
        thr = float(call.value(args[2]) if len(args) > 2 else kwargs.get("threshold", 20.0))
        if beta <= 0:
            raise Refused(f"softplus(beta={beta:g})")
        fn = activation("softplus", beta, thr)
    else:
        if op == "gelu":
            approx = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
            if approx != "none":
                raise InputError("--sound supports exact GELU only, not "
                                 f"GELU(approximate={approx!r})")
        fn = activation(op)
    return Elementwise(inputs=(src,), name=call.node.name, fn=fn)

