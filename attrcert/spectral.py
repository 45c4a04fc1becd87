"""Spectral quantities of the attribution Jacobian ``J`` (``N x d x d``).

- ``xi_max``: the largest singular value of ``J`` (= of ``H = J^T``), Theorem 1;
  ``xi_max^2`` is the largest eigenvalue of ``P = H H^T = J^T J``.
- ``v_max``: the matching right singular vector of ``J`` (unit l2 norm), the direction
  in input space along which ``||J delta||_2`` is largest (Eq. 33).
- ``sum_ij |P_ij|`` with ``P = J^T J``: Theorem 2's l-inf constant (Eq. 7).

All three are computed in float64 from ``P``; ``v_max``'s sign is fixed so that its
largest-magnitude entry is positive (deterministic output).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Spectrum:
    """Per-sample spectral summary of ``J``.

    Attributes:
        xi_max: ``(N,)`` float64, largest singular value of ``J``.
        v_max: ``(N, d)`` float64, its right singular vector (unit norm).
        abs_sum_gram: ``(N,)`` float64, ``sum_ij |(J^T J)_ij|``.
    """

    xi_max: Tensor
    v_max: Tensor
    abs_sum_gram: Tensor


def gram(jac: Tensor) -> Tensor:
    """``P = J^T J`` per sample, in float64 (``(N, d, d)``)."""
    j64 = jac.to(torch.float64)
    return j64.transpose(-1, -2) @ j64


def spectrum_full(jac: Tensor) -> Spectrum:
    """:class:`Spectrum` from the full Jacobians ``(N, d, d)`` by a symmetric eigensolver.

    ``xi_max = sqrt(lambda_max(P))`` and ``v_max`` its eigenvector (Theorem 1, Eq. 33).
    """
    p = gram(jac)
    evals, evecs = torch.linalg.eigh(p)
    lam = evals[:, -1].clamp_min(0.0)
    v = evecs[:, :, -1]
    return Spectrum(xi_max=lam.sqrt(), v_max=canonical_sign(v), abs_sum_gram=p.abs().sum((-1, -2)))


def canonical_sign(v: Tensor) -> Tensor:
    """Flip each row of ``v`` so that its entry of largest magnitude is positive."""
    idx = v.abs().argmax(dim=-1, keepdim=True)
    sign = torch.sign(v.gather(-1, idx))
    sign[sign == 0] = 1.0
    return v * sign
