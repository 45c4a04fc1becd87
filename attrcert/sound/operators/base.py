"""What every operator of sound mode's graph knows about itself: :class:`Operator`.

One node of the graph holds one value ``z_v(x)`` of per-sample shape ``shape`` (batches
``(B, *shape)``), computed from the values of ``inputs`` (indices of earlier nodes). Its
class carries everything the proof needs of that computation (docs/sound.md):

- :meth:`~Operator.value`: ``z_v`` from its inputs' values, float64, differentiable;
- :meth:`~Operator.pattern`: the structural sparsity of ``d z_v / d x`` from its inputs';
- :meth:`~Operator.enclose`: ``z_v`` over its inputs' enclosures (centre, radius), rounding
  outward;
- :meth:`~Operator.tangent`: ``[J_v] = [d z_v / d x]`` ``(P, d, *shape)`` from its inputs';
- :meth:`~Operator.adjoint`: each input's share of ``u_v = d f_y / d z_v``;
- :meth:`~Operator.hessian`: its own second-derivative term of ``Hess f_y`` (none for maps
  affine in their inputs);
- :meth:`~Operator.forward_error` and :meth:`~Operator.backward_error`: how a bounded error
  in its inputs' values (its adjoint) propagates through it, with torch's rounding and the
  Softplus twin's jumps injected (:mod:`..propagation`).

Enclosures are ``(centre, radius)`` pairs (``CR``) or ``(lo, hi)`` pairs (``Box``) of float64
tensors batched over the pieces of a pass (``P``); every operation rounds outward
(:mod:`..intervals`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from ..intervals import REL, TINY, to_cr
from ..rounding import ErrorModel

CR = tuple[Tensor, Tensor]
Box = tuple[Tensor, Tensor]
#: Per input of a node, what it passes backwards: ``(error, magnitude)`` of its adjoint's
#: error bound (:meth:`Operator.backward_error`), or ``None`` (no adjoint passes).
ErrorShare = tuple[Tensor, Tensor] | None


class Refused(Exception):
    """Raised by a reader for an operation it cannot model: the graph reader turns it into
    the one-line refusal naming ``str(self)`` (``"slice of the batch axis"``, an ATen op)."""


class HessianTerms(Protocol):
    """Where an operator adds its second-derivative term (the pass's accumulator,
    :class:`..enclosures.HessianPass`): ``J_k^T diag(w) J_k`` of node ``k``'s tangents, or
    ``J_a^T diag(w) J_b + J_b^T diag(w) J_a``; weights ``w`` ``(P, n)`` as centre, radius."""

    def square(self, k: int, w: CR) -> None: ...

    def pair(self, a: int, b: int, w: CR) -> None: ...


@dataclass(kw_only=True)
class Operator:
    """One node (see the module docstring); ``name`` is the node's name in the model's graph.

    Class flags: ``linear``: ``z_v`` is affine in its inputs (so ``[J_v]`` is exact where
    theirs is, and :meth:`hessian` adds nothing); ``uses_input_values``: its derivative
    depends on its inputs' values (activations, products), so the pass tightens their ball
    enclosures by the mean-value form; ``stops_gradient``: no adjoint passes through it
    (the attribution's Jacobian is then no Hessian)."""

    inputs: tuple[int, ...] = ()
    name: str = ""
    shape: tuple[int, ...] = ()

    #: a short label of the class (``"affine"``, ``"act"``, ...), for display and tests
    kind: ClassVar[str] = ""
    linear: ClassVar[bool] = True
    uses_input_values: ClassVar[bool] = False
    stops_gradient: ClassVar[bool] = False

    @property
    def threshold(self) -> float | None:
        """Where torch's function switches to another branch (a Softplus threshold), if
        anywhere; the passes then enclose a smooth twin and bound the gap."""
        return None

    def set_shapes(self, inputs: Sequence[tuple[int, ...]], shape: tuple[int, ...]) -> None:
        """Record the per-sample shapes (after one forward pass of the graph)."""
        self.shape = shape

    def value(self, args: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def pattern(self, ins: list[Tensor]) -> Tensor:
        """Boolean ``(d, *shape)``: where ``d z_v / d x`` may be nonzero (the union of the
        inputs' patterns, by default)."""
        out = ins[0]
        for other in ins[1:]:
            out = out | other
        return out

    def enclose(self, ins: list[CR], twin: Tensor | None) -> CR:
        """``z_v`` over the inputs' enclosures ``ins``; ``twin``: the units on which the
        pass encloses the smooth twin's identity branch (:attr:`threshold`)."""
        raise NotImplementedError

    def tangent(self, tangents: list[CR], boxes: list[CR], pad: Tensor | float,
                twin: Tensor | None) -> CR:
        """``[J_v]`` ``(P, d, *shape)`` from the inputs' tangents and ball enclosures;
        ``pad``: the absolute widening inside the structural pattern."""
        raise NotImplementedError

    def adjoint(self, u: CR, boxes: list[CR], twin: Tensor | None) -> list[CR | None]:
        """Each input's share of the adjoint ``u`` (``None``: nothing passes)."""
        raise NotImplementedError

    def hessian(self, terms: HessianTerms, u: CR, boxes: list[CR],
                twin: Tensor | None) -> None:
        """Add this node's own second-derivative term with adjoint ``u`` (default: none)."""

    def twin_units(self, ball: Box, point: Box, drift: tuple[Tensor, Tensor],
                   twin: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """For an operator with a :attr:`threshold`: the twin's mask (``twin``, or decided
        here) and the units the gap's jumps are injected on over the ball and at the point
        (see :class:`.elementwise.Elementwise`)."""
        raise NotImplementedError(f"{type(self).__name__} has no threshold")

    def forward_error(self, boxes: list[Box], errs: list[Tensor], model: ErrorModel,
                      straddle: Tensor | None) -> Tensor:
        """A bound on ``|z_hat - z|`` from the inputs' value boxes and error bounds ``errs``
        (before the caller's final rounding); ``straddle``: the units where the twin's jump
        is injected."""
        raise NotImplementedError

    def backward_error(self, f: Tensor, total: Tensor, umag: Tensor, boxes: list[Box],
                       errs: list[Tensor], model: ErrorModel,
                       straddle: Tensor | None) -> list[ErrorShare]:
        """Each input's share of the adjoint error ``f`` (``|u_hat - u| <= f``; ``umag``
        bounds ``|u|``, ``total = umag + f``), as ``(error, magnitude)`` for the sum of the
        users' contributions (:func:`..propagation.backward_errors`)."""
        raise NotImplementedError


@dataclass(kw_only=True)
class Input(Operator):
    """``x`` itself: the pass supplies its enclosure, tangent (the identity) and error."""

    kind = "input"

    def value(self, args: list[Tensor]) -> Tensor:
        return args[0]

    def enclose(self, ins: list[CR], twin: Tensor | None) -> CR:
        return ins[0]

    def tangent(self, tangents: list[CR], boxes: list[CR], pad: Tensor | float,
                twin: Tensor | None) -> CR:
        return tangents[0]

    def adjoint(self, u: CR, boxes: list[CR], twin: Tensor | None) -> list[CR | None]:
        return []

    def forward_error(self, boxes: list[Box], errs: list[Tensor], model: ErrorModel,
                      straddle: Tensor | None) -> Tensor:
        return errs[0]

    def backward_error(self, f: Tensor, total: Tensor, umag: Tensor, boxes: list[Box],
                       errs: list[Tensor], model: ErrorModel,
                       straddle: Tensor | None) -> list[ErrorShare]:
        return []


def interval_sum(a: CR, b: CR, s: float = 1.0, pad: Tensor | float = TINY) -> CR:
    """``[a] + s [b]``, rounded."""
    c = a[0] + s * b[0]
    r = a[1] + abs(s) * b[1]
    return c, r + REL * (a[0].abs() + abs(s) * b[0].abs() + r) + pad


def scale_tangents(s: Box, tan: CR, pad: Tensor | float) -> CR:
    """``diag([s]) [J]`` for tangents ``(P, d, *shape)`` and ``[s]`` ``(P, *shape)`` as
    ``(lo, hi)`` (midpoint-radius, Rump)."""
    sc, sr = to_cr(*s)
    sc, sr = sc.unsqueeze(1), sr.unsqueeze(1)
    tc, tr = tan
    m = sc.abs() * tr + sr * (tc.abs() + tr)
    c = sc * tc
    return c, m + REL * (c.abs() + m) + pad


def flat_tangents(t: CR) -> CR:
    """Tangents ``(P, d, *shape)`` as ``(P, d, n)``."""
    return t[0].reshape(t[0].shape[0], t[0].shape[1], -1), \
        t[1].reshape(t[1].shape[0], t[1].shape[1], -1)


def as_float64(t: object) -> Tensor | None:
    """``t`` in float64 (a Python number directly: not through float32); None stays None."""
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return torch.tensor(float(t), dtype=torch.float64)
    return None if t is None else torch.as_tensor(t).detach().to(torch.float64)
