"""The logit Jacobian ``J_f`` (``k x d``) as an operator, and bounds on the norms of its
rows' differences ``||grad f_j - grad f_y||_2`` for every class at once (the package doc)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..attributions import Model
from ..attributions.differentiable import differentiable_forward
from ..spectral.krylov import golub_kahan

__all__ = ["ROUNDING", "ClassNormBounds", "LogitJacobian", "NormBounds", "class_norm_bounds"]

#: the upper bounds allow this many units of the model dtype's rounding (``eps``) times
#: ``||grad f_j|| + ||grad f_y||`` for the two ways ``a_j`` is computed to disagree
ROUNDING = 1024.0


class LogitJacobian:
    """``J_f`` (``k x d``) of the logits of one batch at ``x``, as products: ``J_f^T c`` is
    a VJP of the logits, ``J_f v`` the VJP of ``c -> J_f^T c`` (double-VJP; one first-order
    graph kept). Rows of the batch are independent (block diagonal)."""

    def __init__(self, model: Model, x: Tensor) -> None:
        leaf = x.detach().clone().requires_grad_(True)
        with differentiable_forward():
            logits = model(leaf)
        self.leaf, self.logits = leaf, logits
        self.k, self.d = int(logits.shape[1]), x[0].numel()
        self.dummy = torch.zeros_like(logits, requires_grad=True)
        with differentiable_forward():
            (w,) = torch.autograd.grad(logits, leaf, grad_outputs=self.dummy, create_graph=True,
                                       materialize_grads=True)
        self.w = w
        self.constant = not w.requires_grad  # J_f does not depend on c: never (linear in c)

    def rmatvec(self, c: Tensor) -> Tensor:
        """``J_f^T c``: ``(N, k)`` -> ``(N, d)``."""
        (out,) = torch.autograd.grad(self.logits, self.leaf,
                                     grad_outputs=c.to(self.logits).reshape(self.logits.shape),
                                     retain_graph=True, materialize_grads=True)
        return out.detach().reshape(c.shape[0], self.d)

    def rows(self, classes: Tensor) -> Tensor:
        """``(len(classes), d)`` float64: ``grad f_j = J_f^T e_j`` of a one-sample batch for
        each class ``j``, one backward pass each through the kept graph (no forward pass:
        about a third cheaper than a forward and backward pass per class)."""
        eye = torch.zeros(1, self.k, dtype=torch.float64)
        out = []
        for j in classes.tolist():
            eye.zero_()
            eye[0, j] = 1.0
            out.append(self.rmatvec(eye)[0].double())
        return torch.stack(out) if out else torch.zeros(0, self.d, dtype=torch.float64)

    def matvec(self, v: Tensor) -> Tensor:
        """``J_f v``: ``(N, d)`` -> ``(N, k)``."""
        if not self.w.requires_grad:  # J_f^T c does not depend on c: J_f = 0
            return torch.zeros(v.shape[0], self.k, dtype=self.logits.dtype,
                               device=self.logits.device)
        (out,) = torch.autograd.grad(self.w, self.dummy,
                                     grad_outputs=v.to(self.w).reshape(self.w.shape),
                                     retain_graph=True, materialize_grads=True)
        return out.detach()


@dataclass(frozen=True)
class NormBounds:
    """Bounds on ``||grad f_j - grad f_y||_2`` for every class ``j`` of one sample.

    Attributes:
        upper: ``(k,)`` float64 upper bounds (the target's own entry is 0).
        lower: ``(k,)`` float64 lower bounds (``||C (e_j - e_y)||``, the part in ``V``).
        steps: Golub-Kahan steps on ``J_f``; ``rho``: the deflated norm.
        products: logit-Jacobian products spent.
    """

    upper: np.ndarray
    lower: np.ndarray
    steps: int
    rho: float
    products: int


class ClassNormBounds:
    """:func:`class_norm_bounds` a few steps at a time: :meth:`extend` runs more Golub-Kahan
    steps on ``J_f``, :meth:`bounds` deflates and bounds (module doc)."""

    def __init__(self, jac: LogitJacobian, target: int, seed: int) -> None:
        self.jac, self.target = jac, target
        self.rng = np.random.default_rng(seed)
        v = torch.from_numpy(self.rng.standard_normal(jac.d)).to(jac.leaf.device)
        self.next: Tensor | None = v / v.norm()
        self.vs: list[Tensor] = []
        self.us: list[Tensor] = []
        self.images: list[Tensor] = []
        self.products = 0

    def extend(self, steps: int) -> None:
        """Golub-Kahan steps until ``V`` has ``steps`` columns (or spans ``J_f``'s row space)."""
        jac = self.jac
        d, k = jac.d, jac.k
        while self.next is not None and len(self.vs) < min(steps, d, k):
            v = self.next
            self.vs.append(v)
            jv = jac.matvec(v.reshape(1, d)).double().reshape(k)
            self.images.append(jv)
            self.products += 1
            scale = max(1e-300, float(jv.norm()))
            u = _orthogonal(jv, self.us)
            if float(u.norm()) <= 1e-14 * scale:
                self.next = None  # J_f V spans J_f's range
                break
            self.us.append(u / u.norm())
            r = _orthogonal(jac.rmatvec(self.us[-1].reshape(1, k)).double().reshape(d), self.vs)
            self.products += 1
            if float(r.norm()) <= 1e-14 * scale:
                self.next = None  # V spans an invariant subspace of J_f^T J_f
                break
            self.next = r / r.norm()

    def bounds(self, tol: float) -> NormBounds:
        """The bounds with the current ``V``; ``rho`` by Golub-Kahan on ``J_f (I - V V^T)``
        (zero when ``V`` spans ``J_f``'s row space)."""
        jac, y = self.jac, self.target
        d, k = jac.d, jac.k
        basis = torch.stack(self.vs, 1)  # (d, s), orthonormal
        c = torch.stack(self.images)  # (s, k): (J_f V)^T
        rho, spent = 0.0, 0

        def deflated(w: Tensor) -> Tensor:
            return w - basis @ (basis.T @ w)

        if self.next is None and not self._spans_rows(deflated):
            # an invariant Krylov subspace of J_f^T J_f is J_f's row space only when J_f^T J_f
            # has no repeated eigenvalue there: with W W^T = c I (a linear model's orthogonal
            # rows of equal norm) the first steps stop at 2 columns and rho = 0 would let
            # screening skip the minimiser
            restart = deflated(torch.from_numpy(self.rng.standard_normal(d)).to(jac.leaf.device))
            self.next = restart / restart.norm()
        if self.next is not None:
            top = golub_kahan(
                lambda w: jac.matvec(deflated(w).reshape(1, d)).reshape(-1),
                lambda c_: deflated(jac.rmatvec(c_.reshape(1, k)).double().reshape(-1)),
                torch.from_numpy(self.rng.standard_normal(d)).to(jac.leaf.device), tol=tol)
            # the value is within tol of the top singular value (in a cluster it stops on a
            # member below the top, 0.3 % under with tol = 1e-2): the top is <= value / (1 - tol)
            rho, spent = top.value / (1.0 - tol), top.products
        self.products += spent
        lower = (c - c[:, y : y + 1]).norm(dim=0).cpu()  # ||C (e_j - e_y)||
        # rounding: C and the exact a_j come from different products in the model's dtype,
        # each off by ~ eps ||grad f_j||, which is no small part of ||a_j|| when two classes'
        # gradients nearly coincide (then C alone fell 16 % below the computed ||a_j||);
        # ||grad f_j|| <= ||C e_j|| + rho
        reach = c.norm(dim=0).cpu() + rho
        slack = ROUNDING * torch.finfo(jac.logits.dtype).eps * (reach + reach[y])
        upper = torch.sqrt(lower**2 + 2.0 * rho**2) + slack
        upper[y] = 0.0
        return NormBounds(upper.numpy(), lower.numpy(), len(self.vs), rho, spent)


    def _spans_rows(self, deflated: Callable[[Tensor], Tensor]) -> bool:
        """Whether ``V`` spans ``J_f``'s row space: ``J_f w = 0`` for one random unit ``w``
        orthogonal to ``V`` (if ``J_f (I - P) != 0``, ``J_f w != 0`` for almost every ``w``),
        to the relative level at which :meth:`extend` declared the subspace invariant."""
        jac = self.jac
        w = deflated(torch.from_numpy(self.rng.standard_normal(jac.d)).to(jac.leaf.device))
        w = w / w.norm()
        image = jac.matvec(w.reshape(1, jac.d)).double().reshape(jac.k)
        self.products += 1
        scale = max(float(c.norm()) for c in self.images)
        return float(image.norm()) <= 1e-14 * scale


def class_norm_bounds(jac: LogitJacobian, target: int, *, steps: int, tol: float,
                      seed: int) -> NormBounds:
    """``||J_f^T (e_j - e_y)||_2 <= sqrt(||C (e_j - e_y)||^2 + 2 rho^2)`` for every class
    ``j`` of one sample, from ``steps`` Golub-Kahan steps on ``J_f`` (module doc), plus
    :data:`ROUNDING` ``eps (||grad f_j|| + ||grad f_y||)`` for the model dtype's rounding."""
    found = ClassNormBounds(jac, target, seed)
    found.extend(steps)
    return found.bounds(tol)


def _orthogonal(r: Tensor, basis: list[Tensor]) -> Tensor:
    """``r`` minus its projection on the orthonormal ``basis`` (twice)."""
    if not basis:
        return r
    q = torch.stack(basis, 1)
    for _ in range(2):
        r = r - q @ (q.T @ r)
    return r
