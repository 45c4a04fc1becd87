"""Attacks on attributions: empirical lower bounds that check the upper bounds (docs/math.md §6).

The bounds of :mod:`attrcert.bounds` assume ``g`` is locally linear on the ball; an
attack searches the ball for a ``delta`` that moves the attribution further than the
bound allows, so that no certificate claims more than was shown. Every attack here
solves (approximately) the paper's Eq. 1 with its label constraint::

    max_{||delta||_p <= eps}  D(g(x + delta), g(x))   s.t.  argmax f(x + delta) = argmax f(x)

for a batch ``x`` of shape ``(N, C, H, W)``, ``g = attribution(model, x, target)`` of the
same shape, and ``D`` the objective of the attack. Objectives (per sample, maximised):

- ``"euclidean"``: ``||g(x + delta) - g(x)||_2`` (the gradient is taken of its square);
- ``"cosine"``: the cosine distance ``1 - cos(g(x + delta), g(x))``;
- IFIA's ``"topk"``: ``-sum_{i in topk(|g(x)|)} |g_i(x + delta)|`` (Ghorbani et al. 2019);
- IFIA's ``"center_of_mass"``: ``||CM(|g(x + delta)|) - CM(|g(x)|)||_2``, ``CM`` over ``(H, W)``.

Gradients go through the attribution (``create_graph=True``), so each step costs one
double-backward pass of the attribution. Samples are independent (eval mode): the
per-sample objectives are summed and differentiated once.

The label constraint: after each step, every sample whose prediction changed returns to
its previous iterate and halves its step size. Images are not clamped unless ``clamp`` is
given (the bounds hold over the whole ball). Every returned ``delta`` lies in the ball.

One small class per attack, in the style of torchattacks, each in its module:

- :mod:`~attrcert.attack.base`: :class:`AttackResult`, the loop :class:`AttributionAttack`,
  :func:`attribution_metrics`;
- :mod:`~attrcert.attack.pgd`: :class:`PGDL2`, :class:`PGDLinf`, :class:`PGD` (any ``p``);
- :mod:`~attrcert.attack.ifia`: :class:`IFIA` (l-inf), :func:`center_of_mass`;
- :mod:`~attrcert.attack.linearity`: :func:`linearity_gap`, how far ``g`` is from its
  linearisation (Appendix B.1), and :func:`jacobian_vector_product`.

:func:`attack` (here) runs them all and keeps the worst case per sample.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..attributions import Attribution, Model, resolve_target
from ..perturbation import Perturbation
from .base import (
    SCHEDULES,
    AttackResult,
    AttributionAttack,
    Target,
    angle_degrees,
    attribution_metrics,
    select_per_sample,
)
from .ifia import IFIA, IFIA_OBJECTIVES, center_of_mass
from .linearity import jacobian_vector_product, linearity_gap
from .pgd import OBJECTIVES, PGD, PGDL2, PGDLinf

__all__ = [
    "IFIA",
    "IFIA_OBJECTIVES",
    "OBJECTIVES",
    "PGD",
    "PGDL2",
    "SCHEDULES",
    "AttackResult",
    "AttributionAttack",
    "PGDLinf",
    "attack",
    "attribution_metrics",
    "center_of_mass",
    "jacobian_vector_product",
    "linearity_gap",
]


def attack(
    model: Model,
    x: Tensor,
    *,
    attribution: Attribution,
    target: Target = None,
    perturbation: Perturbation,
    objective: str = "euclidean",
    steps: int = 40,
    restarts: int = 1,
    seed: int = 0,
    label_constraint: bool = True,
    points_per_pass: int | None = None,
) -> AttackResult:
    """The strongest of several attacks on the attribution, per sample.

    Runs PGD in ``perturbation``'s ball (:class:`PGDL2`, :class:`PGDLinf` or :class:`PGD`)
    with the Euclidean and with the cosine objective and, for l-inf, :class:`IFIA` with the
    top-k and (for 4-d inputs) the centre-of-mass objectives (images are not clamped: the
    bounds hold over the whole ball; the attacks themselves take ``clamp``). Each
    run has ``steps`` steps and ``restarts`` restarts; run ``i`` is seeded ``seed + i``.

    Returns, per sample, ``deviation`` = ``T_e`` hat, the largest ``||g(x + delta) -
    g(x)||_2`` over all runs, and ``cosine_distance`` = ``T_c`` hat (``angle_deg`` with it),
    the largest cosine distance over all runs, each maximised separately. ``delta``
    ``(N, C, H, W)``, ``label_kept`` and ``norm`` (in ``perturbation``'s norm) are those of
    the run that attained the largest deviation (``objective="euclidean"``) or the largest
    cosine distance (``objective="cosine"``). ``runs`` holds every run's own result.
    ``points_per_pass`` caps the attribution's points whose graph is held at once for the
    batch (:meth:`AttributionAttack.__call__`; ``None``: all).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    eps, p = perturbation.eps, perturbation.norm
    common = {"steps": steps, "restarts": restarts, "label_constraint": label_constraint}
    n_runs = 0

    def seeded() -> dict:
        nonlocal n_runs
        n_runs += 1
        return {**common, "seed": seed + n_runs - 1}

    attacks: dict[str, AttributionAttack] = {}
    for name in OBJECTIVES:
        if perturbation.is_l2:
            attacks[f"pgd_{name}"] = PGDL2(eps, objective=name, **seeded())
        elif perturbation.is_linf:
            attacks[f"pgd_{name}"] = PGDLinf(eps, objective=name, **seeded())
        else:
            attacks[f"pgd_{name}"] = PGD(eps, p, objective=name, **seeded())
    if perturbation.is_linf:
        attacks["ifia_topk"] = IFIA(eps, objective="topk", **seeded())
        if x.ndim == 4:
            attacks["ifia_center_of_mass"] = IFIA(eps, objective="center_of_mass", **seeded())
    target = resolve_target(model, x.detach(), target)
    runs: dict[str, AttackResult] = {}
    for name, atk in attacks.items():
        runs[name] = atk(model, x, attribution, target, points_per_pass=points_per_pass)
    results = list(runs.values())
    key = "deviation" if objective == "euclidean" else "cosine_distance"
    best = replace(results[0], runs={})
    for res in results[1:]:
        best = select_per_sample(getattr(res, key) > getattr(best, key), res, best)
    best.deviation = torch.stack([r.deviation for r in results]).amax(0)
    best.cosine_distance = torch.stack([r.cosine_distance for r in results]).amax(0)
    best.angle_deg = angle_degrees(best.cosine_distance)
    best.runs = runs
    return best
