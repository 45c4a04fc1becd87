"""Spectral quantities of the attribution Jacobian ``J`` (``N x d x d``).

- ``xi_max``: the largest singular value of ``J`` (= of ``H = J^T``), Theorem 1;
  ``xi_max^2`` is the largest eigenvalue of ``P = H H^T = J^T J``.
- ``v_max``: the matching right singular vector of ``J`` (unit l2 norm), the direction
  in input space along which ``||J delta||_2`` is largest (Eq. 33).
- ``sum_ij |P_ij|`` with ``P = J^T J``: Theorem 2's l-inf constant (Eq. 7).

Two ways to get them:

- :func:`spectrum_full` from the full Jacobians (``attrcert.jacobian``): all three, in
  float64 from ``P`` by a dense symmetric eigensolver. Memory ``O(d^2)`` per sample.
- :func:`spectrum_iterative` without forming ``J``: ``xi_max`` and ``v_max`` by a Lanczos
  solver (Golub-Kahan in torch, or ``scipy.sparse.linalg.svds``) on the operator
  ``v -> J v`` / ``u -> J^T u``, both applied matrix-free by autograd (the double-VJP
  trick, :class:`JacobianProducts`).
  Memory one attribution graph per sample; it does not give ``sum_ij |P_ij|``, which
  needs every entry of ``P``: :func:`abs_sum_gram_blocked` computes that one in
  ``O(chunk d)`` memory from ``2 d`` products. (Where it is too costly, Cor. 1 as
  ``p -> inf`` still gives a valid l-inf bound from ``xi_max`` alone:
  ``sqrt(d) xi_max eps``, docs/math.md §2.)

``v_max``'s sign is fixed so that its largest-magnitude entry is positive (deterministic
output), in both paths.

Where each lives: :mod:`~attrcert.spectral.full` (:class:`Spectrum`,
:func:`spectrum_full`), :mod:`~attrcert.spectral.products` (:class:`JacobianProducts`),
:mod:`~attrcert.spectral.iterative` (:func:`spectrum_iterative` and its solvers),
:mod:`~attrcert.spectral.blocked` (:func:`abs_sum_gram_blocked`).
"""

from __future__ import annotations

from .blocked import abs_sum_gram_blocked
from .curvature import CurvatureProducts
from .full import Spectrum, canonical_sign, gram, nonfinite_jacobian, spectrum_full
from .iterative import SOLVERS, spectrum_iterative
from .products import AttributionGraph, JacobianProducts, segment_sizes

__all__ = [
    "SOLVERS",
    "AttributionGraph",
    "CurvatureProducts",
    "JacobianProducts",
    "Spectrum",
    "abs_sum_gram_blocked",
    "canonical_sign",
    "gram",
    "nonfinite_jacobian",
    "segment_sizes",
    "spectrum_full",
    "spectrum_iterative",
]
