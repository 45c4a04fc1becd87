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
their rounding covered (products through scipy.sparse, the matrices that do not change
with the piece converted once); ``[J_l] = Jc +- Jr`` contributes ``||diag(s)^(1/2) Jc|| +
sigma_max(diag(s)^(1/2) Jr)`` (Frobenius for a rounding-only ``Jr``). Graphs with
elementwise products above ``k`` are left to the entrywise bound (their values, not only
slopes, enter ``J_k``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp  # scipy ships no type hints
import torch
from torch import Tensor

from .intervals import SUM_REL, TINY
from .linalg import lmax_psd, smax_nonneg
from .nodes import Graph
from .operators import Elementwise

NMAX = 1024  # the largest layer whose Gram matrices (n x n) are formed per piece


@dataclass
class Telescope:
    """The point quantities for one centre: ``jx[k]`` = ``J_k(x)`` as ``(c, r)`` ``(d, n_k)``,
    ``lmat[(k, l)]`` = ``L_{k<-l}(x)`` as ``(c, r)`` ``(n_k, n_l)``, ``ups[k]`` the
    activations above ``k`` (by node index of the activation); ``fixed[l]``: the tangents
    of the activations' inputs that are affine in ``x`` (the same for every piece)."""

    jx: dict[int, tuple[Tensor, Tensor]]
    lmat: dict[tuple[int, int], tuple[Tensor, Tensor]]
    ups: dict[int, list[int]]
    fixed: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    _sparse: dict[object, sp.csr_matrix] = field(default_factory=dict)
    _grams: dict[int, tuple[Tensor, float]] = field(default_factory=dict)

    def csr(self, key: object, rows: Tensor) -> sp.csr_matrix:
        """``rows`` as a scipy CSR matrix, converted once per ``key``."""
        if key not in self._sparse:
            self._sparse[key] = sp.csr_matrix(rows.cpu().numpy())
        return self._sparse[key]

    def gram_jx(self, k: int) -> tuple[Tensor, float]:
        """``J_k(x) J_k(x)^T`` ``(n_k, n_k)`` and the Frobenius bound on its rounding."""
        if k not in self._grams:
            x = self.csr(("jx", k), self.jx[k][0].T)
            g = torch.from_numpy(np.ascontiguousarray((x @ x.T).toarray()))
            err = SUM_REL * float((self.jx[k][0] ** 2).sum()) * (1.0 + SUM_REL)
            self._grams[k] = (g, err)
        return self._grams[k]


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
    acts = [isinstance(n, Elementwise) for n in graph.nodes]
    # the identity holds for graphs of linear operators and activations: any other
    # nonlinear operator (a product) puts values, not only slopes, into J_k
    other = [not n.linear and not a for n, a in zip(graph.nodes, acts, strict=True)]
    for node, act in zip(graph.nodes, acts, strict=True):
        if not act:
            continue
        k = node.inputs[0]
        above = sorted(a for a in anc[k] | {k} if acts[a])
        if not above or any(other[a] for a in anc[k] | {k}):
            continue
        if int(torch.Size(graph.nodes[k].shape).numel()) <= NMAX:
            out[k] = above
    return out


def _lmax_scaled(g: Tensor, err: float, w: Tensor) -> float:
    """``lambda_max(diag(w)^(1/2) G diag(w)^(1/2))`` for a PSD ``G`` known within ``err``
    (Frobenius), ``w >= 0``."""
    root = w.sqrt()
    m = root.unsqueeze(1) * g * root.unsqueeze(0)
    return lmax_psd(m.cpu().numpy(), err * float(w.max()) * (1.0 + 1e-12))


def _radius_norm(r: Tensor, v: Tensor, scale: float) -> float:
    """``sigma_max(diag(v)^(1/2) r)`` for a nonnegative ``r`` ``(N, m)``: Frobenius when it
    is negligible next to ``scale``, Collatz-Wielandt otherwise."""
    if not bool((r > 0).any()):
        return 0.0
    rv = r * v.sqrt().unsqueeze(1)
    fro = float(torch.linalg.vector_norm(rv)) * (1.0 + 1e-12)
    if fro <= 1e-6 * scale:
        return fro
    return smax_nonneg(rv)


def _rows_norm(x: sp.csr_matrix, tc: Tensor, tr: Tensor, v: Tensor) -> float:
    """``||diag(v)^(1/2) [X]||`` for the rows ``[X] = tc +- tr`` ``(N, d)`` (``x`` = ``tc`` as
    CSR), by the ``d x d`` Gram ``X^T diag(v) X``."""
    g = torch.from_numpy(np.ascontiguousarray((x.T @ x.multiply(v.cpu().numpy()[:, None])
                                               .tocsr()).toarray()))
    err = SUM_REL * float((v * (tc * tc).sum(1)).sum()) * (1.0 + SUM_REL)
    top = math.sqrt(lmax_psd(g.numpy(), err))
    return (top + _radius_norm(tr, v, top)) * (1.0 + 1e-12) + TINY


def cross(tel: Telescope, k: int, omega2: Tensor, slopes: dict[int, Tensor],
          tangents: dict[int, tuple[Tensor, Tensor]], cache: dict) -> Tensor:
    """``2 a b + a^2`` per piece ``(P,)`` (module docstring); see :func:`deviation`."""
    ab = deviation(tel, k, omega2, slopes, tangents, cache)
    return ((2.0 * ab[:, 0] * ab[:, 1] + ab[:, 0] ** 2) * (1.0 + 1e-12)).to(torch.float64)


def deviation(tel: Telescope, k: int, omega2: Tensor, slopes: dict[int, Tensor],
              tangents: dict[int, tuple[Tensor, Tensor]], cache: dict) -> Tensor:
    """``(a, b)`` per piece ``(P, 2)`` (module docstring) for the input node ``k``:
    ``omega2`` ``(P, n_k)`` the weights ``W_a``; ``slopes[l]`` ``(P, n_l)`` bounds on
    ``|sigma_l'(z_l(x')) - sigma_l'(z_l(x))|`` over the ball; ``tangents[l]`` the ball's
    ``[J_l]`` ``(P, d, *shape_l)`` of ``l``'s input. ``J_k(x)`` is known within its rounding
    radius ``jr``, which joins ``a`` (Frobenius norm). ``cache``: one per batch of pieces,
    holds the second factors (per piece and activation, shared by the terms below them)."""
    jr = tel.jx[k][1]
    gx, gerr = tel.gram_jx(k)
    out = []
    for p in range(omega2.shape[0]):
        w = omega2[p]
        root = w.sqrt()
        jfro = float(torch.linalg.vector_norm(root.unsqueeze(1) * jr.T)) * (1.0 + 1e-12)
        b = math.sqrt(_lmax_scaled(gx, gerr, w)) + jfro
        a = jfro
        for act in tel.ups[k]:
            lc, lr = tel.lmat[(k, act)]
            s = slopes[act][p].reshape(-1)
            lsp = tel.csr(("l", k, act), lc)
            g = torch.from_numpy(np.ascontiguousarray(
                (lsp.multiply(s.cpu().numpy()[None, :]).tocsr() @ lsp.T).toarray()))
            err = SUM_REL * float((s * (lc * lc).sum(0)).sum()) * (1.0 + SUM_REL)
            first = math.sqrt(_lmax_scaled(g, err, w))
            if bool((lr > 0).any()):  # ||diag(w)^(1/2) L_r diag(s)^(1/2)||_F
                first += float(torch.linalg.vector_norm(
                    root.unsqueeze(1) * lr * s.sqrt().unsqueeze(0))) * (1.0 + 1e-12)
            a += first * _second(tel, p, act, s, tangents, cache)
        out.append((a * (1.0 + 1e-12), b))
    return torch.tensor(out, dtype=torch.float64)


def _second(tel: Telescope, p: int, act: int, s: Tensor,
            tangents: dict[int, tuple[Tensor, Tensor]], cache: dict) -> float:
    """``||diag(s)^(1/2) [J_l]||`` of piece ``p`` (cached per piece and activation)."""
    if (p, act) not in cache:
        tc, tr = tangents[act]
        n = tc.shape[1]
        rows, rad = tc[p].reshape(n, -1).T, tr[p].reshape(n, -1).T
        x = tel.csr(("fixed", act), rows) if act in tel.fixed else \
            sp.csr_matrix(rows.cpu().numpy())
        cache[(p, act)] = _rows_norm(x, rows, rad, s)
    return cache[(p, act)]


def row_bounds(tel: Telescope, k: int, slopes: dict[int, Tensor],
               tangents: dict[int, tuple[Tensor, Tensor]], cache: dict) -> Tensor:
    """``(P, n_k)`` bounds on ``sup ||row_i J_k(x')||_2`` over the ball: ``||row_i J_k(x)||``
    plus, by the identity of the module docstring with ``Omega = e_i``,
    ``sum_l ||row_i L_{k<-l}(x) diag(s_l)^(1/2)|| ||diag(s_l)^(1/2) [J_l]||``. So
    ``|z_k,i(x') - z_k,i(x)| <= eps`` times it (the mean-value theorem, l2 ball)."""
    jc, jr = tel.jx[k]
    base = torch.sqrt((jc * jc).sum(0)) * (1.0 + SUM_REL) + jr.abs().sum(0)
    out = []
    for p in range(next(iter(slopes.values())).shape[0]):
        extra = torch.zeros_like(base)
        for act in tel.ups[k]:
            lc, lr = tel.lmat[(k, act)]
            sp_ = slopes[act][p].reshape(1, -1)
            rows = torch.sqrt((lc * lc * sp_).sum(1)) + torch.sqrt((lr * lr * sp_).sum(1))
            extra = extra + rows * (1.0 + SUM_REL) * _second(tel, p, act, sp_.reshape(-1),
                                                             tangents, cache)
        out.append((base + extra) * (1.0 + 1e-12) + TINY)
    return torch.stack(out)
