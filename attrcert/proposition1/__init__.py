"""Proposition 1 (Eq. 8): does the label stay, and within which radius, at a cost that does
not grow with the number of classes ``k``.

With ``a_{y'} = grad f_{y'} - grad f_y`` (the completeness form, Proposition 1's assumption)
and ``b_{y'} = f_y(x) - f_{y'}(x)``, Eq. 8 keeps the label under ``delta`` when
``a_{y'}^T delta < b_{y'}`` for every ``y' != y``; ``label_radius = min_{y'} b_{y'} /
||a_{y'}||_q`` (Hölder, ``q`` the dual norm). Both are first-order (docs/math.md).

- ``label_preserved`` at the worst-case perturbations needs only ``a_{y'}^T delta =
  (J_f delta)_{y'} - (J_f delta)_y`` for all classes at once: one product ``J_f delta`` of
  the logit Jacobian (:class:`LogitJacobian`) per perturbation, not ``k`` gradients.
- ``label_radius`` needs the classes that can attain the minimum only. With upper bounds
  ``n_{y'} >= ||a_{y'}||_q`` every class has ``b_{y'} / ||a_{y'}||_q >= b_{y'} / n_{y'}``,
  so classes are taken in increasing order of ``b_{y'} / n_{y'}``, their gradients
  computed exactly a pass at a time, until the next one's ``b_{y'} / n_{y'}`` is at least
  the best ratio found: no class left can beat it (:func:`screened_radius`). The bounds
  (:func:`class_norm_bounds`): ``s`` Golub-Kahan steps on ``J_f`` give an orthonormal
  ``V`` (``d x s``) and ``C = (J_f V)^T``; with ``w = e_{y'} - e_y`` and ``P = V V^T``,
  ``||a_{y'}||_2^2 = ||P J_f^T w||^2 + ||(I - P) J_f^T w||^2 <= ||C w||^2 + 2 rho^2``,
  ``rho = ||J_f (I - P)||_2`` from a second Golub-Kahan run on the deflated operator
  (:mod:`attrcert.spectral.krylov`: its Ritz value plus residual term, as ``xi_max``,
  over ``1 - tol``: the solver's value is within ``tol`` of the top singular value, and in
  a cluster it stops on a member below the top), and
  ``||a||_q <= d^{max(0, 1/q - 1/2)} ||a||_2``; each bound also allows ``1024 eps
  (||grad f_j|| + ||grad f_y||)`` for the rounding of the model's dtype (``C`` and the
  exact ``a_j`` round differently, which matters where two classes' gradients nearly
  coincide). Logit Jacobians are nearly low-rank, so a
  few dozen steps leave ``rho`` small and few classes to compute; ``s`` doubles while
  that pays.

``label_gradient="attribution"`` (``a_{y'}`` through the attribution,
``grad_x sum_i g^{y'}_i``, one second-order pass per class) has no such shortcut: every
class is computed, a pass at a time, and only the running results are kept.
"""

from __future__ import annotations

from .batch import LABEL_GRADIENTS, LabelTest, label_test
from .jacobian import ClassNormBounds, LogitJacobian, NormBounds, class_norm_bounds
from .screening import dual_factor, screened_label_radius, screened_radius

__all__ = [
    "LABEL_GRADIENTS",
    "ClassNormBounds",
    "LabelTest",
    "LogitJacobian",
    "NormBounds",
    "class_norm_bounds",
    "dual_factor",
    "label_test",
    "screened_label_radius",
    "screened_radius",
]
