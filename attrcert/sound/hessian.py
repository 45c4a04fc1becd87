"""The structured enclosure of a weighted sum of Hessians, ``sum_p h_p Hess f_y(piece p)``.

By the chain rule for second derivatives, over a ball

    Hess f_y = sum_{activations k} J_k^T diag(u_k sigma_k''(z_k)) J_k
             + sum_{products m = a * b} (J_a^T diag(u_m) J_b + J_b^T diag(u_m) J_a),

``J_v = d z_v / d x`` (``n_v x d``), ``u_v`` the adjoint of node ``v``'s output (the bilinear
term is the product's own second derivative). With ``[J] = Jc +- Jr`` and each weight vector
``[w] = wc +- wr`` (``W_a = |wc| + wr``), every term is ``C + F^T E' F + E`` where

- ``C = Jc^T diag(wc) Jc`` (products: ``Jca^T diag(wc) Jcb`` and its transpose);
- ``F^T E' F`` with ``||E'|| <= 1``: ``Jc^T diag(e) Jc``, ``|e| <= wr`` (products:
  ``F = [diag(wr)^(1/2) Jca; diag(wr)^(1/2) Jcb]``, ``E' = [[0, E], [E, 0]]``), so that
  ``||F^T E' F delta|| <= ||F|| ||F delta||`` with ``P = F^T F = Jc^T diag(wr) Jc`` (products:
  ``Jca^T diag(wr) Jca + Jcb^T diag(wr) Jcb``);
- ``|E| <= R = Jr^T W_a (|Jc| + Jr) + |Jc|^T W_a Jr`` entrywise (the terms with ``Jr``).

Sums over pieces and terms add ``C``, ``P`` and ``R`` (``F`` stacks the pieces' blocks, ``E'``
is block diagonal). ``A`` bounds ``sum_p t_p |Hess f_y(piece p)|`` entrywise by
``(|Jc| + Jr)^T W_a (|Jc| + Jr)`` (the input factor's own movement, for input x gradient and
integrated gradients). Rounding: each float64 product ``X^T diag(v) Y`` errs by at most
``SUM_REL |X|^T |v| |Y|`` entrywise, whose spectral norm is at most
``SUM_REL sqrt(sum_i |v_i| ||X_i||^2 sum_i |v_i| ||Y_i||^2)`` (``||M N|| <= ||M||_F ||N||_F``):
``slack`` collects that for ``C``, ``p_err`` (Frobenius) and ``p_err_sum`` (``sum |.|``) for ``P``;
the nonnegative ``R`` and ``A`` are rounded up.

The layers whose ``[J]`` is exact and the same for every piece (``z_v`` affine in ``x``, e.g.
the first layer) are formed once, from the sums of their weights over the pieces. Products
of sparse ``J`` (convolutions: most entries are structural zeros) go through scipy.sparse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp  # scipy ships no type hints
import torch
from torch import Tensor

from .intervals import REL, SUM_REL, TINY
from .linalg import smax_nonneg

SPARSE = 0.15  # density below which products use scipy.sparse


@dataclass
class Structured:
    """``sum_p h_p Hess f_y(piece p) = C + F^T E' F + E + E_round`` with ``P = F^T F``,
    ``|E| <= R`` entrywise, ``||E_round|| <= slack``, ``P``'s own rounding at most ``p_err``
    in Frobenius norm and ``p_err_sum`` in ``sum |.|``; ``A`` (or None) bounds
    ``sum_p t_p |Hess f_y(piece p)|`` entrywise. ``slack`` also holds the telescoped cross
    terms (:mod:`.telescope`) of the terms that use them."""

    c: Tensor
    r: Tensor
    p: Tensor
    a: Tensor | None
    slack: float
    p_err: float
    p_err_sum: float


def gram(x: Tensor, v: Tensor, y: Tensor) -> Tensor:
    """``X^T diag(v) Y`` for ``X``, ``Y`` ``(N, d)``, ``v`` ``(N,)`` (scipy.sparse when both are
    sparse)."""
    nx = int((x != 0).sum())
    ny = nx if y is x else int((y != 0).sum())
    if max(nx, ny) < SPARSE * x.numel():
        xs = sp.csr_matrix((x * v.unsqueeze(1)).cpu().numpy())
        ys = sp.csr_matrix(y.cpu().numpy())
        out = (xs.T @ ys).toarray()
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)
    return (x * v.unsqueeze(1)).T @ y


def _norms(x: Tensor, v: Tensor) -> float:
    """``sum_i |v_i| ||X_i||^2``, rounded up."""
    return float((v.abs() * (x * x).sum(1)).sum()) * (1.0 + SUM_REL) + TINY


def _stack(t: Tensor) -> Tensor:
    """Tangents ``(P, d, n)`` as the rows of ``[J_1; ...; J_P]`` ``(P n, d)``."""
    return t.permute(0, 2, 1).reshape(-1, t.shape[1])


class HessianSum:
    """Accumulates ``sum_p h_p Hess f_y(piece p)`` (see the module docstring); ``track_a``:
    also ``A`` with the weights ``t_p h_p``."""

    def __init__(self, d: int, device: torch.device, track_a: bool) -> None:
        zero = torch.zeros((d, d), dtype=torch.float64, device=device)
        self.c, self.p, self.r = zero, zero.clone(), zero.clone()
        self.a = zero.clone() if track_a else None
        self.slack = self.p_err = self.p_err_sum = self.spec = 0.0
        self.exact: dict[int, list[Tensor]] = {}

    def _acc(self, name: str, add: Tensor) -> None:
        old = getattr(self, name)
        if name == "c":  # the float64 sum of two matrices: REL of each, in Frobenius norm
            self.slack += REL * float(torch.linalg.matrix_norm(old) + torch.linalg.matrix_norm(add))
        elif name == "p":
            self.p_err += REL * float(torch.linalg.matrix_norm(old) + torch.linalg.matrix_norm(add))
        else:  # nonnegative: rounded up
            setattr(self, name, (old + add) * (1.0 + REL))
            return
        setattr(self, name, old + add)

    def _core(self, x: Tensor, vc: Tensor, vr: Tensor) -> None:
        self._acc("c", gram(x, vc, x))
        self.slack += SUM_REL * _norms(x, vc)
        self._acc("p", gram(x, vr, x))
        self.p_err += SUM_REL * _norms(x, vr)
        self.p_err_sum += SUM_REL * float((vr * x.abs().sum(1) ** 2).sum()) * (1.0 + SUM_REL)

    def add(self, key: int, tan: tuple[Tensor, Tensor], w: tuple[Tensor, Tensor], h: Tensor,
            t: Tensor | None, exact: bool, centre: tuple[Tensor, Tensor] | None = None,
            cross: Tensor | None = None) -> None:
        """``sum_p h_p J_p^T diag(w_p) J_p`` for tangents ``(P, d, n)`` and weights ``(P, n)``;
        ``exact``: ``[J]`` is exact and the same for every piece (formed in :meth:`finish`).
        ``centre``: ``J(x)`` ``(d, n)`` as ``(c, r)``, the centre of every piece's term (then
        ``C`` and ``P`` use the pieces' summed weights, and the entrywise ``R`` the radius
        ``|Jc - J(x)| + Jr``); ``cross`` ``(P,)``: the telescoped spectral bound on each
        piece's cross terms (:mod:`.telescope`), used instead of ``R`` when smaller."""
        if centre is not None and not exact:
            self._centred(tan, w, h, t, centre, cross)
            return
        wc, wr = (w[0] * h.unsqueeze(1), w[1] * h.unsqueeze(1))
        wa = (w[0].abs() + w[1]) * (t if t is not None else h).unsqueeze(1)
        if exact:
            wh = (w[0].abs() + w[1]) * h.unsqueeze(1)
            parts = [wc.sum(0), wr.sum(0), wa.sum(0), wc.abs().sum(0) + wr.sum(0), wh.sum(0)]
            if key in self.exact:
                parts = [a + b for a, b in zip(self.exact[key][2:], parts, strict=True)]
            n = tan[0].shape[1]
            self.exact[key] = [tan[0][0].reshape(n, -1).T, tan[1][0].reshape(n, -1).T, *parts]
            return
        x, xr = _stack(tan[0]), _stack(tan[1])
        vc, vr, va = wc.reshape(-1), wr.reshape(-1), ((w[0].abs() + w[1])
                                                      * h.unsqueeze(1)).reshape(-1)
        self._core(x, vc, vr)
        xa = x.abs()
        self._acc("r", (gram(xr, va, xa + xr) + gram(xa, va, xr)) * (1.0 + SUM_REL))
        if self.a is not None:
            self._acc("a", gram(xa + xr, wa.reshape(-1), xa + xr) * (1.0 + SUM_REL))

    def _centred(self, tan: tuple[Tensor, Tensor], w: tuple[Tensor, Tensor], h: Tensor,
                 t: Tensor | None, centre: tuple[Tensor, Tensor], cross: Tensor | None) -> None:
        h1 = h.unsqueeze(1)
        wc, wr = w[0] * h1, w[1] * h1
        n = tan[0].shape[1]
        x0 = centre[0].reshape(n, -1).T
        mag = (wc.abs() + wr).sum(0)
        self._core(x0, wc.sum(0), wr.sum(0) * (1.0 + SUM_REL) + SUM_REL * mag + TINY)
        xr = _stack((tan[0] - centre[0].reshape(1, n, -1)).abs() + tan[1]
                    + centre[1].reshape(1, n, -1))
        xa = x0.abs().repeat(tan[0].shape[0], 1)
        va = ((w[0].abs() + w[1]) * h1).reshape(-1)
        r = (gram(xr, va, xa + xr) + gram(xa, va, xr)) * (1.0 + SUM_REL)
        spectral = math.inf if cross is None else float((h * cross).sum()) * (1.0 + REL)
        if spectral < smax_nonneg(r.cpu().numpy()):
            self.spec += spectral
        else:
            self._acc("r", r)
        if self.a is not None:
            ta = ((w[0].abs() + w[1]) * (t if t is not None else h).unsqueeze(1)).reshape(-1)
            self._acc("a", gram(xa + xr, ta, xa + xr) * (1.0 + SUM_REL))

    def add_pair(self, ta: tuple[Tensor, Tensor], tb: tuple[Tensor, Tensor],
                 w: tuple[Tensor, Tensor], h: Tensor, t: Tensor | None) -> None:
        """``sum_p h_p (J_a^T diag(w_p) J_b + J_b^T diag(w_p) J_a)`` (an elementwise product)."""
        xa, xb, ra, rb = (_stack(v) for v in (ta[0], tb[0], ta[1], tb[1]))
        h1 = h.unsqueeze(1)
        vc, vr = (w[0] * h1).reshape(-1), (w[1] * h1).reshape(-1)
        va = ((w[0].abs() + w[1]) * h1).reshape(-1)
        g = gram(xa, vc, xb)
        self._acc("c", g + g.T)
        self.slack += 2.0 * SUM_REL * math.sqrt(_norms(xa, vc) * _norms(xb, vc))
        for x in (xa, xb):
            self._acc("p", gram(x, vr, x))
            self.p_err += SUM_REL * _norms(x, vr)
            self.p_err_sum += SUM_REL * float((vr * x.abs().sum(1) ** 2).sum()) \
                * (1.0 + SUM_REL)
        aa, ab = xa.abs(), xb.abs()
        cross = gram(ra, va, ab + rb) + gram(aa, va, rb)
        self._acc("r", (cross + cross.T) * (1.0 + SUM_REL))
        if self.a is not None:
            ta_w = ((w[0].abs() + w[1]) * (t if t is not None else h).unsqueeze(1)).reshape(-1)
            both = gram(aa + ra, ta_w, ab + rb)
            self._acc("a", (both + both.T) * (1.0 + SUM_REL))

    def finish(self) -> Structured:
        """The :class:`Structured` sum (the exact layers formed now from their summed
        weights; those sums' own rounding, ``SUM_REL`` of their magnitude, joins ``wr``)."""
        for x, xr, wc, wr, wa, mag, wh in self.exact.values():
            self._core(x, wc, wr * (1.0 + SUM_REL) + SUM_REL * mag + TINY)
            xa = x.abs() + xr
            # the terms with the (rounding-only) radius xr: spectral norm at most
            # ||W^(1/2) Xr||_F (||W^(1/2) (|X| + Xr)||_F + ||W^(1/2) |X| ||_F)
            wh = wh * (1.0 + SUM_REL) + SUM_REL * mag + TINY
            self.slack += math.sqrt(_norms(xr, wh)) * (math.sqrt(_norms(xa, wh))
                                                       + math.sqrt(_norms(x, wh))) * 1.01
            if self.a is not None:
                self._acc("a", gram(xa, wa * (1.0 + SUM_REL) + SUM_REL * mag, xa)
                          * (1.0 + SUM_REL))
        self.exact = {}
        return Structured(self.c, self.r, self.p, self.a, (self.slack + self.spec) * (1.0 + REL),
                          self.p_err * (1.0 + REL), self.p_err_sum * (1.0 + REL))
