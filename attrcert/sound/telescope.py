"""A spectral bound on the deviation of a layer's Jacobian over the ball, by telescoping.

For an activation ``k`` with input ``z_k``, the Hessian term ``J_k^T diag(w) J_k`` needs
``D = J_k(x') - J_k(x)``. In a graph of affine maps, sums, concatenations and activations,
``J_k`` is a multilinear function of the slopes ``D_l = diag(sigma_l'(z_l))`` of the
activations ``l`` above it (every path crosses each activation once). Changing the slopes one
activation at a time, in topological order, gives the exact identity

    J_k(x') - J_k(x) = sum_l  L_{k<-l}(x)  (D_l(x') - D_l(x))  J_l(x'),

``L_{k<-l}(x) = d z_k / d a_l`` at ``x`` (the slopes between ``l`` and ``k`` at ``x``) and
``J_l(x') = d z_l / d x`` at ``x'`` (the slopes above ``l`` at ``x'``). With
``|D_l(x') - D_l(x)| <= diag(s_l)`` (the radius of ``[sigma_l']`` over the ball) and
``Omega = diag(W_a)^(1/2)``,

    ||Omega D|| <= a = sum_l ||Omega L_{k<-l}(x) diag(s_l)^(1/2)|| ||diag(s_l)^(1/2) [J_l]||,

and the cross terms of the Hessian term with centre ``J_k(x)`` have spectral norm at most
``2 a b + a^2``, ``b = ||Omega J_k(x)||`` (instead of the entrywise ``R`` of :mod:`.hessian`,
which drops every sign). The norms are ``lambda_max`` of Gram matrices (:mod:`.linalg`),
their rounding covered; ``[J_l] = Jc +- Jr`` contributes ``||diag(s)^(1/2) Jc|| +
sigma_max(diag(s)^(1/2) Jr)``. Graphs with elementwise products above ``k`` are left to the
entrywise bound (their values, not only slopes, enter ``J_k``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .hessian import gram
from .intervals import SUM_REL, TINY
from .linalg import lmax_psd, smax_nonneg
from .nodes import ACT, MUL, Graph

NMAX = 1024  # the largest layer whose Gram matrices (n x n) are formed per piece


@dataclass
class Telescope:
    """The point quantities for one centre: ``jx[k]`` = ``J_k(x)`` as ``(c, r)`` ``(d, n_k)``,
    ``lmat[(k, l)]`` = ``L_{k<-l}(x)`` as ``(c, r)`` ``(n_k, n_l)``, ``ups[k]`` the
    activations above ``k`` (by node index of the activation)."""

    jx: dict[int, tuple[Tensor, Tensor]]
    lmat: dict[tuple[int, int], tuple[Tensor, Tensor]]
    ups: dict[int, list[int]]


def eligible(graph: Graph) -> dict[int, list[int]]:
    """For every activation's input node ``k`` that the bound applies to (no product above
    it, at most ``NMAX`` units, some activation above), the activations above it."""
    anc: list[set[int]] = []
    for node in graph.nodes:
        s: set[int] = set()
        for j in node.inputs:
            s |= anc[j] | {j}
        anc.append(s)
    out: dict[int, list[int]] = {}
    for node in graph.nodes:
        if node.kind != ACT:
            continue
        k = node.inputs[0]
        above = sorted(a for a in anc[k] | {k} if graph.nodes[a].kind == ACT)
        if not above or any(graph.nodes[a].kind == MUL for a in anc[k] | {k}):
            continue
        if int(torch.Size(graph.nodes[k].shape).numel()) <= NMAX:
            out[k] = above
    return out


def _gram_lmax(x: Tensor, v: Tensor) -> float:
    """``lambda_max(X^T diag(v) X)`` for ``X`` ``(N, m)``, ``v >= 0``, the product's rounding
    covered (``SUM_REL sum_i v_i ||X_i||^2`` in Frobenius norm); the smaller side's Gram."""
    if x.shape[0] < x.shape[1]:  # ||diag(v)^(1/2) X||^2 is also lambda_max of the N x N Gram
        y = (x * v.sqrt().unsqueeze(1)).T
        g = gram(y, torch.ones(y.shape[0], dtype=y.dtype, device=y.device), y)
    else:
        g = gram(x, v, x)
    err = SUM_REL * float((v * (x * x).sum(1)).sum()) * (1.0 + SUM_REL)
    return lmax_psd(g.cpu().numpy(), err)


def _norm(xc: Tensor, xr: Tensor, v: Tensor) -> float:
    """``||diag(v)^(1/2) [X]||`` for ``[X] = xc +- xr`` ``(N, m)``."""
    top = math.sqrt(_gram_lmax(xc, v))
    if bool((xr > 0).any()):
        top += smax_nonneg((xr * v.sqrt().unsqueeze(1)).cpu().numpy())
    return top * (1.0 + 1e-12) + TINY


def cross(tel: Telescope, k: int, omega2: Tensor, slopes: dict[int, Tensor],
          tangents: dict[int, tuple[Tensor, Tensor]]) -> Tensor:
    """``2 a b + a^2`` per piece ``(P,)`` (module docstring); see :func:`deviation`."""
    ab = deviation(tel, k, omega2, slopes, tangents)
    return ((2.0 * ab[:, 0] * ab[:, 1] + ab[:, 0] ** 2) * (1.0 + 1e-12)).to(torch.float64)


def deviation(tel: Telescope, k: int, omega2: Tensor, slopes: dict[int, Tensor],
              tangents: dict[int, tuple[Tensor, Tensor]]) -> Tensor:
    """``(a, b)`` per piece ``(P, 2)`` (module docstring) for the input node ``k``:
    ``omega2`` ``(P, n_k)`` the weights ``W_a``; ``slopes[l]`` ``(P, n_l)`` bounds on
    ``|sigma_l'(z_l(x')) - sigma_l'(z_l(x))|`` over the ball; ``tangents[l]`` the ball's
    ``[J_l]`` ``(P, d, *shape_l)`` of ``l``'s input. ``J_k(x)`` is known within its rounding
    radius ``jr``, which joins ``a`` (Frobenius norm)."""
    jc, jr = tel.jx[k]
    out = []
    for p in range(omega2.shape[0]):
        w = omega2[p]
        root = w.sqrt()
        b = _norm(jc.T, jr.T, w)
        a = float(torch.linalg.vector_norm(root.unsqueeze(1) * jr.T)) * (1.0 + 1e-12)
        for act in tel.ups[k]:
            lc, lr = tel.lmat[(k, act)]
            s = slopes[act][p].reshape(-1).sqrt()
            ws = (root.unsqueeze(1) * lc) * s.unsqueeze(0)
            first = math.sqrt(_gram_lmax(ws, torch.ones(ws.shape[0], dtype=ws.dtype,
                                                        device=ws.device)))
            if bool((lr > 0).any()):
                first += float(torch.linalg.vector_norm(
                    root.unsqueeze(1) * lr * s.unsqueeze(0))) * (1.0 + 1e-12)
            tc, tr = tangents[act]
            n = tc.shape[1]
            second = _norm(tc[p].reshape(n, -1).T, tr[p].reshape(n, -1).T, s * s)
            a += first * second
        out.append((a * (1.0 + 1e-12), b))
    return torch.tensor(out, dtype=torch.float64)
