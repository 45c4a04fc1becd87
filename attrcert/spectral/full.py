"""The spectrum of the attribution Jacobian from the full matrices ``J`` ``(N, d, d)``
(:mod:`attrcert.jacobian`): ``xi_max``, ``v_max`` and Theorem 2's ``sum_ij |P_ij|``, all in
float64 from ``P = J^T J`` by a dense symmetric eigensolver. Memory ``O(d^2)`` per sample.

:class:`Spectrum` is what every path returns (:mod:`attrcert.spectral.iterative` too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ModelOutputError

__all__ = ["NONFINITE", "Spectrum", "canonical_sign", "gram", "nonfinite_jacobian",
           "spectrum_full"]

#: What :class:`~attrcert.errors.ModelOutputError` names when ``J`` is not finite.
NONFINITE = "attribution Jacobian entries"


def nonfinite_jacobian(index: int) -> ModelOutputError:
    """The error for sample ``index`` (of the batch) whose ``J`` holds NaN or infinity."""
    return ModelOutputError(f"the attribution's Jacobian of sample {index} is not finite (NaN "
                            "or infinite): it cannot be certified", index, NONFINITE)


@dataclass(frozen=True)
class Spectrum:
    """Per-sample spectral summary of ``J``.

    Attributes:
        xi_max: ``(N,)`` float64, largest singular value of ``J``.
        v_max: ``(N, d)`` float64, its right singular vector (unit norm).
        abs_sum_gram: ``(N,)`` float64, ``sum_ij |(J^T J)_ij|``; ``None`` when not
            computed (:func:`~attrcert.spectral.spectrum_iterative`: it needs all of ``J``, see
            :func:`~attrcert.spectral.abs_sum_gram_blocked`).
        products: ``(N,)`` int64, the Jacobian-vector products (``J v`` plus ``J^T u``)
            spent per sample by :func:`~attrcert.spectral.spectrum_iterative`; ``None`` for
            :func:`spectrum_full`.
        residual: ``(N,)`` float64, the Krylov residual behind ``xi_max`` (``xi_max`` is
            the Ritz value plus a term of this size); ``None`` where ``xi_max`` is exact to
            rounding (:func:`spectrum_full`) or a Ritz value (``svds``).
        start_products: ``(N,)`` int64, the products with a coarser attribution's
            Jacobian that found the solver's start vector
            (:func:`~attrcert.spectral.iterative.warm_start`, integrated gradients); ``None``
            where the start was random.
    """

    xi_max: Tensor
    v_max: Tensor
    abs_sum_gram: Tensor | None = None
    products: Tensor | None = None
    residual: Tensor | None = None
    start_products: Tensor | None = None


def gram(jac: Tensor) -> Tensor:
    """``P = J^T J`` per sample, in float64 (``(N, d, d)``)."""
    j64 = jac.to(torch.float64)
    return j64.transpose(-1, -2) @ j64


def spectrum_full(jac: Tensor) -> Spectrum:
    """:class:`Spectrum` from the full Jacobians ``(N, d, d)`` by a symmetric eigensolver.

    ``xi_max = sqrt(lambda_max(P))`` and ``v_max`` its eigenvector (Theorem 1, Eq. 33).
    LAPACK sees only finite, nonzero ``P``: ``J = 0`` has the exact answer ``xi_max = 0``
    (``v_max = e_1``), and a ``J`` holding NaN or infinity raises
    :class:`~attrcert.errors.ModelOutputError` (``index``: its sample in the batch).
    """
    p = gram(jac)
    finite = torch.isfinite(p).flatten(1).all(1)
    if not bool(finite.all()):
        raise nonfinite_jacobian(int((~finite).nonzero()[0]))
    n, d = p.shape[0], p.shape[-1]
    lam = torch.zeros(n, dtype=p.dtype, device=p.device)
    v = torch.zeros(n, d, dtype=p.dtype, device=p.device)
    v[:, 0] = 1.0
    nonzero = p.flatten(1).abs().amax(1) > 0
    if bool(nonzero.any()):
        evals, evecs = torch.linalg.eigh(p[nonzero])
        lam[nonzero] = evals[:, -1].clamp_min(0.0)
        v[nonzero] = evecs[:, :, -1]
    return Spectrum(xi_max=lam.sqrt(), v_max=canonical_sign(v), abs_sum_gram=p.abs().sum((-1, -2)))


def canonical_sign(v: Tensor) -> Tensor:
    """Flip each row of ``v`` so that its entry of largest magnitude is positive."""
    idx = v.abs().argmax(dim=-1, keepdim=True)
    sign = torch.sign(v.gather(-1, idx))
    sign[sign == 0] = 1.0
    return v * sign
