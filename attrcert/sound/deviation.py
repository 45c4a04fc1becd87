"""From enclosures to bounds on ``sup ||g(x') - g(x)||_2``: the interval bound and the
mean-value bound with the structured enclosure of the Hessian (:mod:`.hessian`)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .hessian import Structured
from .intervals import REL, SUM_REL, TINY
from .linalg import lmax_psd, smax, smax_nonneg, theorem2


def interval_bound(g: tuple[Tensor, Tensor], g0: tuple[Tensor, Tensor]) -> float:
    """``|| max(g_hi - g0_lo, g0_hi - g_lo) ||_2`` (``g`` over the ball, ``g0`` at ``x``):
    bounds ``||g(x') - g(x)||_2`` for every ``x'`` in the ball."""
    dev = torch.maximum(g[1] - g0[0], g0[1] - g[0]).clamp(min=0.0)
    return float(torch.linalg.vector_norm(dev)) * (1.0 + SUM_REL) + TINY


def structured_bound(st: Structured, gdiag: tuple[Tensor, Tensor] | None,
                     u0: Tensor | None, eps: float, linf: bool) -> float:
    """``sup ||M delta||_2`` over the ball for the mean-value matrix ``M`` of
    ``g(x + delta) - g(x) = M delta`` enclosed by ``st`` (``sum_p h_p Hess f_y(piece p)``).

    Saliency (``u0`` None): ``M = C + F^T E' F + E + E_round``, so
    ``||M delta|| <= ||C delta|| + ||F||_2 ||F delta|| + ||R |delta| || + slack ||delta||``: for
    l2 ``eps (sigma_max(C) + lambda_max(P) + sigma_max(R) + slack)``, for l-inf
    ``eps (Thm2(C) + sqrt(lambda_max(P) sum |P|) + ||R 1||_2 + sqrt(d) slack)``.
    Input x gradient / IG (``g = u * G``, ``u = u0 + delta'``, ``delta'`` at most ``t_p eps``
    on piece ``p``): ``M = diag(G_s) + diag(u0) H_s + sum_p h_p diag(delta'_p) H_p`` with
    ``G_s = gdiag`` (the pieces' weighted sum of ``G``), so ``M = C' + diag(u0) F^T E' F + E''``
    with ``C' = diag(G_c) + diag(u0) C`` and ``|E''| <= diag(G_r) + |u0| R + eps A``
    entrywise; the middle term has norm at most ``sqrt(lambda_max(U P U)) ||F delta||``,
    ``U = diag(u0)``, and the rounding ``max |u0| slack``.
    """
    d = st.c.shape[0]
    p = st.p.cpu().numpy()
    lam = lmax_psd(p, st.p_err)
    f_delta = math.sqrt(lam) if not linf else math.sqrt(
        float(np.abs(p).sum()) * (1.0 + 1e-10) + st.p_err_sum)
    if u0 is None:
        c, r, left, slack = st.c, st.r, math.sqrt(lam), st.slack
    else:
        assert gdiag is not None and st.a is not None
        gc, gr = gdiag
        u = u0.reshape(-1, 1)
        c = u * st.c
        idx = torch.arange(d)
        c[idx, idx] += gc
        r = (u.abs() * st.r + eps * st.a) * (1.0 + REL) + REL * (u.abs() * st.c.abs())
        r[idx, idx] += gr + REL * (c[idx, idx].abs() + gc.abs())
        un = u.cpu().numpy()
        upu = un * p * un.T
        left = math.sqrt(lmax_psd(upu, float(np.max(un ** 2)) * st.p_err * (1.0 + 1e-10)
                                   + 1e-12 * float(np.linalg.norm(upu))))
        slack = float(u0.abs().max()) * st.slack * (1.0 + REL)
    cn, rn = c.cpu().numpy(), (r * (1.0 + REL) + TINY).cpu().numpy()
    if linf:
        value = theorem2(cn, d) + left * f_delta + float(np.linalg.norm(rn.sum(1))) \
            * (1.0 + 1e-10) + math.sqrt(d) * slack
    else:
        value = smax(cn) + left * f_delta + smax_nonneg(rn) + slack
    return eps * value * (1.0 + 1e-12)
