"""Proved upper bounds on spectral norms and top eigenvalues (LAPACK's through torch, widened
by their backward error; Collatz-Wielandt for nonnegative matrices)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .intervals import TINY


def smax(m: np.ndarray) -> float:
    """``sigma_max(m)`` from LAPACK, widened by ``1e-10 ||m||_F`` (its backward error)."""
    if m.size == 0:
        return 0.0
    top = float(torch.linalg.svdvals(torch.from_numpy(np.ascontiguousarray(m)))[0])
    return top + 1e-10 * float(np.linalg.norm(m)) + TINY


def smax_nonneg(r: np.ndarray | torch.Tensor, iterations: int = 40) -> float:
    """``sigma_max(r)`` for an entrywise nonnegative ``r``, by the Collatz-Wielandt bound:
    ``sigma_max(r)^2 = rho(r^T r) <= max_i (r^T r v)_i / v_i`` for every positive ``v``; ``v``
    from power iteration (so the bound is tight), the products rounded up (``1e-10``
    relative covers float64 sums of up to ``9 * 10^5`` terms)."""
    t = torch.as_tensor(r, dtype=torch.float64)
    if t.numel() == 0:
        return 0.0
    if t.shape[0] < t.shape[1]:
        t = t.T  # the same singular values; the smaller Gram side in the iteration
    v = torch.ones(t.shape[1], dtype=torch.float64, device=t.device)
    for _ in range(iterations):
        w = t.T @ (t @ v)
        top = float(w.max())
        if top <= 0.0:
            return TINY
        v = w / top + 1e-12  # stays positive
    w = t.T @ (t @ v)
    ratio = float((w / v).max()) * (1.0 + 1e-10) + TINY
    return math.sqrt(ratio) * (1.0 + 1e-12)


def lmax_psd(p: np.ndarray, err: float) -> float:
    """``lambda_max`` of the symmetric PSD matrix whose computed value is ``p``, with
    ``||p - P||_F <= err``: LAPACK's, widened by its backward error and by ``err``."""
    if p.size == 0:
        return 0.0
    top = float(scipy_eigvalsh(p)[-1])
    return max(top, 0.0) + 1e-10 * float(np.linalg.norm(p)) + err + TINY


def scipy_eigvalsh(p: np.ndarray) -> np.ndarray:
    """Eigenvalues of the symmetrised ``p`` (ascending)."""
    return torch.linalg.eigvalsh(torch.from_numpy(0.5 * (p + p.T))).numpy()


def theorem2(c: np.ndarray, d: int) -> float:
    """``max_{||delta||_inf <= 1} ||C delta||_2 <= min(sqrt(sum |C^T C|), sqrt(d) sigma_max(C))``
    (Theorem 2 and Corollary 1), with the rounding of ``C^T C`` covered."""
    absc = np.abs(c)
    gram = float(np.abs(c.T @ c).sum() + 1e-10 * np.sum(absc.T @ absc))
    return min(math.sqrt(gram), math.sqrt(d) * smax(c)) * (1.0 + 1e-12)
