"""From enclosures to bounds on ``sup ||g(x') - g(x)||_2``: interval, mean-value, structured."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .intervals import SUM_REL, TINY, to_cr, to_lohi
from .linalg import lmax_psd, smax, smax_nonneg, theorem2
from .structured import Structured


def interval_bound(g: tuple[Tensor, Tensor], g0: tuple[Tensor, Tensor]) -> float:
    """``|| max(g_hi - g0_lo, g0_hi - g_lo) ||_2`` (``g`` over the ball, ``g0`` at ``x``):
    bounds ``||g(x') - g(x)||_2`` for every ``x'`` in the ball."""
    dev = torch.maximum(g[1] - g0[0], g0[1] - g[0]).clamp(min=0.0)
    return float(torch.linalg.vector_norm(dev)) * (1.0 + SUM_REL) + TINY


def mean_value_bound(jac: tuple[Tensor, Tensor], center: Tensor, eps: float,
                     linf: bool) -> float:
    """``sup ||M delta||_2`` over the ball for every ``M`` in ``[Mc - R, Mc + R]``, split as
    ``C + (M - C)``: ``eps (sigma_max(C) + sigma_max(R'))`` (l2) or
    ``eps (min(sqrt(sum |C^T C|), sqrt(d) sigma_max(C)) + ||R' 1||_2)`` (l-inf)."""
    lo, hi = to_lohi(*jac)
    rp = torch.maximum((lo - center).abs(), (hi - center).abs())
    rp = (rp * (1.0 + 1e-12) + TINY).cpu().numpy()
    c = center.cpu().numpy()
    if not linf:
        value = smax(c) + smax_nonneg(rp)
    else:
        absc = np.abs(c)
        gram = float(np.abs(c.T @ c).sum() + 1e-10 * np.sum(absc.T @ absc))
        d = c.shape[1]
        value = min(math.sqrt(gram), math.sqrt(d) * smax(c)) * (1.0 + 1e-12) \
            + float(np.linalg.norm(rp.sum(1))) * (1.0 + 1e-10)
    return eps * value * (1.0 + 1e-12)


def structured_bound(st: Structured, grad: tuple[Tensor, Tensor], u0: Tensor | None,
                     eps: float, linf: bool) -> float:
    """The mean-value bound with the structured enclosure of ``H`` (:class:`Structured`).

    Saliency (``u0`` None): ``J_g = H = C + F^T E' F + E``, so
    ``||J_g delta|| <= ||C delta|| + ||F||_2 ||F delta|| + ||R |delta| ||``: for l2
    ``eps (sigma_max(C) + lambda_max(P) + sigma_max(R))``, for l-inf
    ``eps (Thm2(C) + sqrt(lambda_max(P) sum |P|) + ||R 1||_2)``.
    Input x gradient / IG (``u = u0 + delta'``, ``|delta'_i| <= eps``): ``J_g = diag(G) +
    diag(u) H = C' + diag(u0) F^T E' F + E''`` with ``C' = diag(G_c) + diag(u0) C`` and
    ``|E''| <= diag(G_r) + |u0| R + eps (|C| + R + q)`` entrywise; the middle term has
    norm at most ``sqrt(lambda_max(U P U)) ||F delta||``, ``U = diag(u0)``.
    """
    d = st.c.shape[0]
    p = st.p.cpu().numpy()
    lam = lmax_psd(p, st.p_err)
    f_delta = math.sqrt(lam) if not linf else math.sqrt(
        float(np.abs(p).sum()) * (1.0 + 1e-10) + st.p_err_sum)
    if u0 is None:
        c, r, left = st.c, st.r, math.sqrt(lam)
    else:
        gc, gr = to_cr(*grad)
        u = u0.reshape(-1, 1)
        c = u * st.c
        idx = torch.arange(d)
        c[idx, idx] += gc
        r = (u.abs() * st.r + eps * (st.c.abs() + st.r + st.q)) * (1.0 + 1e-12) \
            + 1e-12 * (u.abs() * st.c.abs())
        r[idx, idx] += gr + 1e-12 * (c[idx, idx].abs() + gc.abs())
        un = u.cpu().numpy()
        upu = un * p * un.T
        left = math.sqrt(lmax_psd(upu, float(np.max(un ** 2)) * st.p_err * (1.0 + 1e-10)
                                   + 1e-12 * float(np.linalg.norm(upu))))
    cn, rn = c.cpu().numpy(), (r * (1.0 + 1e-12) + TINY).cpu().numpy()
    if linf:
        value = theorem2(cn, d) + left * f_delta + float(np.linalg.norm(rn.sum(1))) \
            * (1.0 + 1e-10)
        return eps * value * (1.0 + 1e-12)
    sc = smax(cn)
    value = sc + left * f_delta + smax_nonneg(rn)
    if st.r_round is not None:  # the cross terms by their spectral bound (l2 only)
        if u0 is None:
            alt_r, scale = st.r_round, 1.0
        else:
            u = u0.reshape(-1, 1)
            alt_r = r - u.abs() * st.r + u.abs() * st.r_round  # E'' with R -> R_round
            alt_r = alt_r.clamp(min=0.0) * (1.0 + 1e-12) \
                + 1e-12 * (u.abs() * (st.r + st.c.abs())) + TINY
            scale = float(u0.abs().max())
        alt = sc + left * f_delta + scale * st.cross \
            + smax_nonneg((alt_r * (1.0 + 1e-12) + TINY).cpu().numpy())
        value = min(value, alt)
    return eps * value * (1.0 + 1e-12)


def diag_plus(jac: tuple[Tensor, Tensor], diag: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``[J] + diag([v])`` (centre/radius)."""
    jc, jr = jac[0].clone(), jac[1].clone()
    dc, dr = to_cr(*diag)
    idx = torch.arange(jc.shape[0])
    jc[idx, idx] += dc
    jr[idx, idx] += dr + 1e-12 * (jc[idx, idx].abs() + dc.abs())
    return jc, jr
