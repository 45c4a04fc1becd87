"""How linear is the attribution on the ball? The linearity gap of Appendix B.1,
``eta = ||g(x + delta) - g(x) - J delta||_2``, with ``J delta`` applied matrix-free.

The bounds assume ``eta`` is small (docs/math.md §6); ``attrcert bound --verify`` reports it along
``eps v_max`` and along the attack's ``delta``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..attributions import Attribution, Model, resolve_target, summed
from .base import Target

__all__ = ["jacobian_vector_product", "linearity_gap"]


def jacobian_vector_product(
    model: Model, x: Tensor, attribution: Attribution, target: Tensor, v: Tensor, *,
    points_per_pass: int | None = None,
) -> Tensor:
    """``J v`` per sample (``J = dg/dx`` at ``x``), shaped like ``x``, without forming ``J``.

    The double-VJP trick: with ``g`` built on a leaf ``x`` (``create_graph=True``) and a
    dummy ``u`` (zeros, requires grad), ``w = J^T u`` is one VJP of ``g``, linear in ``u``;
    the VJP of ``u -> w`` with ``v`` is ``J v``. Two backward passes. With
    ``points_per_pass`` below the attribution's points, ``J v = sum_s J_s v`` over its
    segments (:meth:`~attrcert.attributions.Attribution.in_passes`), one graph at a time.
    """
    pieces = attribution.in_passes(points_per_pass)
    if len(pieces) > 1:
        total = torch.zeros_like(x)
        for piece in pieces:
            total = total + jacobian_vector_product(model, x, piece, target, v)
        return total
    leaf = x.detach().clone().requires_grad_(True)
    g = attribution(model, leaf, target, create_graph=True)
    if not g.requires_grad:  # g does not depend on x
        return torch.zeros_like(x)
    u = torch.zeros_like(g, requires_grad=True)
    (w,) = torch.autograd.grad(g, leaf, grad_outputs=u, create_graph=True,
                               materialize_grads=True)
    if not w.requires_grad:  # J^T u does not depend on u: J = 0
        return torch.zeros_like(x)
    (jv,) = torch.autograd.grad(w, u, grad_outputs=v.to(w), materialize_grads=True)
    return jv.detach()


def linearity_gap(
    model: Model, x: Tensor, attribution: Attribution, target: Target, delta: Tensor, *,
    points_per_pass: int | None = None,
) -> Tensor:
    """``eta = ||g(x + delta) - g(x) - J delta||_2`` per sample, float64 ``(N,)`` (App. B.1).

    ``x`` and ``delta`` are ``(N, C, H, W)``; ``J = dg/dx`` at ``x``, applied to ``delta``
    matrix-free by :func:`jacobian_vector_product`. ``eta = 0`` when ``g`` is affine on the
    segment (saliency of a quadratic model); the bounds assume ``eta`` is small.
    ``points_per_pass``: as for :func:`jacobian_vector_product` (the same ``eta`` up to
    rounding, in the memory of that many points' graph).
    """
    x = x.detach()
    target = resolve_target(model, x, target)
    jd = jacobian_vector_product(model, x, attribution, target, delta,
                                 points_per_pass=points_per_pass)
    pieces = attribution.in_passes(points_per_pass)
    g0 = summed(pieces, model, x, target)
    g1 = summed(pieces, model, x + delta.to(x), target)
    diff = g1.double() - g0.double() - jd.double()
    return diff.reshape(x.shape[0], -1).norm(dim=1).cpu()
