"""The structured enclosure of the Hessian (``C + F^T E' F + E``) and its sums."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .intervals import SUM_REL, TINY
from .linalg import lmax_psd, smax_nonneg_factor


@dataclass
class Structured:
    """``Hess f_y(z) = C + sum_k J_k^T diag(e_k) J_k + E`` over the ball, with
    ``|e_k| <= w_k`` (the radius of ``[u_k * sigma_k'']``), ``|E| <= R`` entrywise and
    ``P = sum_k J_k^T diag(w_k) J_k`` (``J_k`` the centre of ``[J_k]``; ``E`` also holds the
    cross terms with its radius). Writing ``F`` for the stacked ``diag(sqrt(w_k)) J_k``,
    ``P = F^T F`` and ``sum_k J_k^T diag(e_k) J_k = F^T E' F`` with ``|E'| <= 1`` diagonal, so
    its spectral norm is at most ``lambda_max(P)`` (far below that of the entrywise
    ``|J|^T diag(w) |J|``). ``p_err``/``p_err_sum`` bound the rounding of ``P`` in Frobenius
    norm and in ``sum |P_ij|``. ``q = sum_k |J_k|^T diag(w_k) |J_k|`` is the entrywise radius
    of that part (``[C - R - q, C + R + q]`` is the plain interval enclosure).

    For the l2 ball the cross terms with ``[J_k]``'s radius ``T_k`` also have a spectral-norm
    bound: with ``J = Jc + D``, ``|D| <= T_k``, ``|W| <= Wa = diag(|w_c| + w_r)``,
    ``||D^T W Jc + Jc^T W D + D^T W D|| <= 2 a b + a^2``, ``a = sigma_max(Wa^(1/2) T_k)``,
    ``b = sigma_max(Wa^(1/2) Jc)``; ``cross`` sums it over ``k``, and ``r_round`` is the part
    of ``r`` that is rounding only (``r`` = ``r_round`` + the entrywise cross terms)."""

    c: Tensor
    r: Tensor
    p: Tensor
    q: Tensor
    p_err: float
    p_err_sum: float
    r_round: Tensor | None = None
    cross: float = 0.0


def add_term(st: Structured, tcm: Tensor, trm: Tensor, wc: Tensor, wr: Tensor) -> None:
    """Add ``[J]^T diag([w]) [J]`` to ``st`` (``[J] = tcm +- trm`` as ``(d, n)``, ``[w] = wc +- wr``
    as ``(1, n)``): centre ``J diag(wc) J^T``, ``P += J diag(wr) J^T``, ``q += |J| diag(wr) |J|^T``,
    and into ``r`` the cross terms with ``trm`` and the rounding of the centre's sums."""
    wabs = wc.abs() + wr
    tabs = tcm.abs()
    st.c += (tcm * wc) @ tcm.T
    st.p += (tcm * wr) @ tcm.T
    # nonnegative products rounded up by SUM_REL
    rounding = (SUM_REL * (1.0 + SUM_REL)) * ((tabs * wabs) @ tabs.T) + TINY
    st.r += ((trm * wabs) @ (tabs + trm).T + (tabs * wabs) @ trm.T) * (1.0 + SUM_REL) + rounding
    assert st.r_round is not None
    st.r_round += rounding
    st.q += ((tabs * wr) @ tabs.T) * (1.0 + SUM_REL)
    sq = torch.sqrt(wabs)
    b2 = (tcm * wabs) @ tcm.T
    b2_err = SUM_REL * float((wabs * (tcm * tcm).sum(0)).sum()) * (1.0 + SUM_REL)
    b = math.sqrt(lmax_psd(b2.cpu().numpy(), b2_err))
    a = smax_nonneg_factor((trm * sq).cpu().numpy())
    st.cross += (2.0 * a * b + a * a) * (1.0 + 1e-12)
    st.p_err += SUM_REL * float((wr * (tcm * tcm).sum(0)).sum()) * (1.0 + SUM_REL)
    st.p_err_sum += SUM_REL * float((wr * tabs.sum(0) ** 2).sum()) * (1.0 + SUM_REL)


def add_scaled(acc: Structured | None, st: Structured, w: float) -> Structured:
    """``acc + w st`` (a new :class:`Structured` when ``acc`` is None)."""
    assert st.r_round is not None
    if acc is None:
        return Structured(st.c * w, st.r * w, st.p * w, st.q * w, st.p_err * w,
                          st.p_err_sum * w, st.r_round * w, st.cross * w)
    assert acc.r_round is not None
    acc.c += st.c * w
    acc.r += st.r * w
    acc.p += st.p * w
    acc.q += st.q * w
    acc.p_err += st.p_err * w
    acc.p_err_sum += st.p_err_sum * w
    acc.r_round += st.r_round * w
    acc.cross += st.cross * w
    return acc


def round_sums(st: Structured) -> None:
    """Widen a sum of weighted :class:`Structured` by its own rounding (``SUM_REL`` of the
    magnitudes)."""
    assert st.r_round is not None
    st.r_round += SUM_REL * (st.c.abs() + st.r_round + st.q)
    st.cross *= 1.0 + 1e-10
    st.r += SUM_REL * (st.c.abs() + st.r + st.q)
    st.q *= 1.0 + SUM_REL
    st.p_err += SUM_REL * float(torch.linalg.matrix_norm(st.p) + st.p_err)
    st.p_err_sum += SUM_REL * float(st.p.abs().sum() + st.p_err_sum)
