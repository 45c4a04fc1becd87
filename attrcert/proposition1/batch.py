"""Proposition 1 for a batch: ``label_preserved`` from ``J_f delta``, ``label_radius`` screened
(the package doc)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..attributions import Attribution, Model, target_gradient
from ..errors import OptionError
from .jacobian import LogitJacobian
from .screening import MAX_STEPS, NORM_TOL, screened_label_radius

__all__ = ["LABEL_GRADIENTS", "LabelTest", "label_test"]

LABEL_GRADIENTS = ("completeness", "attribution")


@dataclass(frozen=True)
class LabelTest:
    """Proposition 1 for one batch.

    Attributes:
        radius: ``(N,)`` float64 ``min_{y'} b_{y'} / ||a_{y'}||_q``; ``0`` when the target is
            not the prediction, ``inf`` when no competitor can ever overtake.
        preserved: ``(N,)`` bool, Eq. 8 at every perturbation given.
        classes: ``(N,)`` int64, the class gradients computed exactly (``k - 1`` without
            screening).
    """

    radius: Tensor
    preserved: Tensor
    classes: Tensor


def _class_gradients(model: Model, x: Tensor, attribution: Attribution, how: str,
                     classes: Tensor) -> Tensor:
    """``(len(classes), d)``: the gradient Proposition 1 uses for each class of one sample
    ``x`` ``(1, C, H, W)``: ``grad f_j`` (completeness) or ``grad sum_i g^j_i``."""
    copies = x.expand(classes.numel(), *x.shape[1:]).clone().requires_grad_(True)
    if how == "completeness":
        grads = target_gradient(model, copies, classes, create_graph=False)
    else:
        g = attribution(model, copies, classes, create_graph=True)
        if not g.requires_grad:  # g does not depend on x: its gradient is zero
            grads = torch.zeros_like(copies)
        else:
            (grads,) = torch.autograd.grad(g.sum(), copies, materialize_grads=True)
    return grads.detach().reshape(classes.numel(), -1).double()


def _chunks(k: int, target: int, per_pass: int) -> Iterator[Tensor]:
    others = torch.tensor([j for j in range(k) if j != target], dtype=torch.long)
    for first in range(0, others.numel(), per_pass):
        yield others[first : first + per_pass]


def label_test(model: Model, x: Tensor, target: Tensor, logits: Tensor, deltas: Tensor, *,
               q: float, attribution: Attribution, how: str = "completeness",
               classes_per_pass: int | None = None, tol: float = NORM_TOL,
               steps: int = MAX_STEPS,
               progress: Callable[[int, int], None] | None = None) -> LabelTest:
    """Proposition 1 for a batch (module doc).

    Args:
        x: ``(N, C, H, W)`` in the model's dtype and device; ``target`` ``(N,)``.
        logits: ``(N, k)`` at ``x``.
        deltas: ``(S, N, d)`` perturbations at which Eq. 8 is checked.
        q: the dual norm of the ball's.
        how: ``"completeness"`` (screened) or ``"attribution"`` (every class).
        classes_per_pass: class gradients per pass (the memory budget's; default all).
        tol: relative residual of the deflated-norm solve (screening only).
        steps: at most this many Golub-Kahan steps on ``J_f`` behind the screening bounds
            (:func:`~attrcert.proposition1.screening.screened_label_radius`).
        progress: called with ``(samples done, N)``.
    """
    if how not in LABEL_GRADIENTS:
        raise OptionError(f"unknown label_gradient {how!r}: use {' or '.join(LABEL_GRADIENTS)}")
    n, k = logits.shape
    per_pass = max(1, min(k, classes_per_pass or k))
    logits64 = logits.detach().double().cpu()
    deltas64 = deltas.double().cpu()
    radius = torch.full((n,), math.inf, dtype=torch.float64)
    preserved = torch.ones(n, dtype=torch.bool)
    counts = torch.zeros(n, dtype=torch.int64)
    for i in range(n):
        if progress is not None:
            progress(i, n)
        y = int(target[i])
        b = (logits64[i, y] - logits64[i]).numpy()  # b_j, with b_y = 0
        others = np.array([j for j in range(k) if j != y], dtype=np.int64)
        if others.size == 0:
            continue
        xi = x[i : i + 1]
        if how == "completeness":
            jac = LogitJacobian(model, xi)
            moved = torch.stack([jac.matvec(dl[i : i + 1].to(xi)).double().cpu()[0]
                                 for dl in deltas64])  # (S, k): J_f delta
            ad = moved - moved[:, y : y + 1]  # a_j^T delta
            preserved[i] = bool((ad[:, others] < torch.from_numpy(b[others])).all())
            if np.any(b[others] <= 0):
                radius[i] = 0.0
                continue
            grad_y = jac.rmatvec(torch.nn.functional.one_hot(
                torch.tensor([y]), k).double()).double().cpu()[0]

            def norms(classes: np.ndarray, jac: LogitJacobian = jac,
                      grad_y: Tensor = grad_y) -> np.ndarray:
                grads = jac.rows(torch.from_numpy(classes)).cpu()
                return torch.linalg.vector_norm(grads - grad_y, ord=q, dim=1).numpy()

            radius[i], counts[i] = screened_label_radius(
                jac, y, b, norms, q=q, per_pass=per_pass, seed=i, tol=tol, max_steps=steps)
            del jac
            continue
        # through the attribution: every class, a pass at a time
        own = _class_gradients(model, xi, attribution, how,
                               torch.tensor([y], device=xi.device)).cpu()[0]
        best = 0.0 if np.any(b[others] <= 0) else math.inf
        for chunk in _chunks(k, y, per_pass):
            a = _class_gradients(model, xi, attribution, how, chunk.to(xi.device)).cpu() - own
            ad = deltas64[:, i] @ a.T  # (S, len(chunk))
            preserved[i] &= bool((ad < torch.from_numpy(b[chunk.numpy()])).all())
            norm = torch.linalg.vector_norm(a, ord=q, dim=1).numpy()
            positive = norm > 0
            if best > 0 and positive.any():
                best = min(best, float(np.min(b[chunk.numpy()][positive] / norm[positive])))
            counts[i] += chunk.numel()
        radius[i] = best
    if progress is not None:
        progress(n, n)
    return LabelTest(radius=radius, preserved=preserved, classes=counts)
