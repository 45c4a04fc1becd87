"""Numbers that mean nothing, said so: each record's ``degenerate`` field.

A bound can be right and still say nothing. Three cases are recognised, each a line in the
record's ``degenerate`` list (empty when none applies) and in the table:

- **zero Jacobian**: ``J = dg/dx = 0`` at ``x``, so ``xi_max = T_e = 0``. Saliency of a
  piecewise-linear model (ReLU, max-pooling) is the typical case: ``J`` is the Hessian of
  the logit, zero almost everywhere, whatever the robustness of the saliency map (which
  jumps between linear regions); ``--beta-smooth`` certifies a smoothed explanation
  instead (Dombrowski et al., 2019). A model whose logits do not depend on the input (a
  zero-initialised head: every logit 0) is the other.
  Found before the spectrum by :func:`zero_jacobians`: one product ``J v`` with a random
  ``v`` (if ``J != 0``, ``J v != 0`` for almost every ``v``); those samples skip the
  spectrum (``xi_max = 0``, ``v_max = v / ||v||``).
- **zero attribution**: ``g(x) = 0``: the cosine bounds (Corollary 2) are undefined and
  there is nothing to explain; with every logit equal, the prediction itself is arbitrary.
- **completeness gap above ``||g||``**: integrated gradients' Riemann sum (Eq. 40) misses
  ``f_y(x) - f_y(b)`` by more than the attribution's own norm: too few steps for this
  model, so ``g`` is not the integral the method stands for.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .attack.linearity import jacobian_vector_product
from .attributions import Attribution, Model

__all__ = ["degenerate_reasons", "zero_jacobians"]

#: Seed of the probe direction ``v`` (fixed: resuming or batching never changes a record).
SEED = 0


def zero_jacobians(attribution: Attribution, model: Model, x: Tensor, target: Tensor,
                   g: Tensor, logits: Tensor, *, probe_all: bool,
                   points_per_pass: int | None = None) -> tuple[Tensor, Tensor]:
    """Which samples have ``J = 0`` (``(N,)`` bool), and the unit probe direction of each
    (``(N, d)`` float64; zeros where not probed).

    Probed where a zero ``J`` is plausible: every sample with ``probe_all`` (saliency of a
    model that is not twice differentiable), else those whose attribution is zero or whose
    logits are all equal. One ``J v`` over those rows (``points_per_pass``: the batch's
    :attr:`~attrcert.analysis.Analysis.batch_points_per_pass`).
    """
    n = x.shape[0]
    flat = g.reshape(n, -1)
    if probe_all:
        probe = torch.ones(n, dtype=torch.bool)
    else:
        equal = logits.amax(1) == logits.amin(1)
        probe = ((flat == 0).all(1) | equal).cpu()
    zero = torch.zeros(n, dtype=torch.bool)
    directions = torch.zeros(n, flat.shape[1], dtype=torch.float64)
    if not probe.any():
        return zero, directions
    rows = probe.nonzero().flatten()
    gen = torch.Generator().manual_seed(SEED)
    v = torch.randn(len(rows), flat.shape[1], generator=gen, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    index = rows.to(x.device)
    jv = jacobian_vector_product(model, x[index], attribution, target[index],
                                 v.to(x.dtype).to(x.device).view(len(rows), *x.shape[1:]),
                                 points_per_pass=points_per_pass)
    zero[rows] = (jv.reshape(len(rows), -1) == 0).all(1).cpu()
    directions[rows] = v
    return zero, directions


def degenerate_reasons(*, zero_jacobian: bool, attr_norm: float, logits: Tensor,
                       completeness_gap: float | None, method: str,
                       nonsmooth: tuple[str, ...]) -> list[str]:
    """The lines of one record's ``degenerate`` field (module docstring); empty when the
    numbers mean what they say."""
    reasons = []
    if zero_jacobian:
        if method == "saliency" and nonsmooth:
            reasons.append("saliency of a piecewise-linear model: its Jacobian (the "
                           "logit's Hessian) is zero almost everywhere, so T_e = 0 says "
                           "nothing about how the map can change; certify a smoothed "
                           "explanation with --beta-smooth BETA")
        else:
            reasons.append("the attribution's Jacobian is zero at this input: every bound "
                           "is 0 and says nothing")
    if attr_norm == 0.0:
        if bool(logits.amax() == logits.amin()):
            reasons.append("every logit is equal (e.g. a zero-initialised head): the "
                           "prediction is arbitrary and the attribution zero")
        else:
            reasons.append("the attribution is zero: there is nothing to explain and the "
                           "cosine bounds are undefined")
    if completeness_gap is not None and completeness_gap > attr_norm:
        reasons.append(f"integrated gradients' completeness gap ({completeness_gap:.3g}) "
                       f"exceeds ||g|| ({attr_norm:.3g}): too few steps for this model, "
                       "raise --steps")
    return reasons
