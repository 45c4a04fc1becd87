"""Records: one dict per sample, built from a batch's :class:`~attrcert.analysis.Analysis`
and the bounds of :mod:`attrcert.bounds` (the fields are SPEC §7's)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import bounds
from .analysis import Analysis, attribution_deviations, worst_case_directions
from .attributions import Attribution, Model
from .config import AttackOptions
from .degenerate import degenerate_reasons
from .perturbation import Perturbation, norm_label
from .results import ASSUMPTION, Record, finite_or_none

__all__ = ["Provenance", "abs_sum_gram", "add_attack_fields", "certificate_records",
           "common_fields", "label_fields"]


def abs_sum_gram(a: Analysis, i: int) -> float | None:
    """Theorem 2's ``sum_ij |P_ij|`` of sample ``i`` (``None`` where it was not computed)."""
    return None if a.spectrum.abs_sum_gram is None else float(a.spectrum.abs_sum_gram[i])


@dataclass(frozen=True)
class Provenance:
    """What every record of a run says about what its numbers rest on.

    Attributes:
        method: the attribution method.
        nonsmooth: the operations that break twice-differentiability (SPEC §6).
        notes: warnings every record carries.
    """

    method: str
    nonsmooth: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def common_fields(a: Analysis, i: int, p: float, about: Provenance) -> Record:
    """The fields every record has (SPEC §7): the sample, ``attr_norm``, ``xi_max`` (Theorem
    1), IG's completeness gap (SPEC §4), what the numbers rest on, and ``degenerate``: why
    they mean nothing, if they do not (:mod:`attrcert.degenerate`)."""
    method, nonsmooth, notes = about.method, about.nonsmooth, about.notes
    return {
        "index": i,
        "target": int(a.target[i]),
        "predicted": int(a.predicted[i]),
        "method": method,
        "norm": norm_label(p),
        "attr_norm": finite_or_none(a.attr[i].norm().item()),
        "xi_max": finite_or_none(a.spectrum.xi_max[i].item()),
        "completeness_gap": None if a.completeness_gap is None
        else finite_or_none(a.completeness_gap[i].item()),
        "assumption": ASSUMPTION,
        "smooth": not nonsmooth,
        "nonsmooth_ops": list(nonsmooth),
        "attack_checked": False,
        "warnings": list(notes),
        "degenerate": degenerate_reasons(
            zero_jacobian=a.zero_jacobian is not None and bool(a.zero_jacobian[i]),
            attr_norm=float(a.attr[i].norm()), logits=a.logits[i],
            completeness_gap=None if a.completeness_gap is None
            else float(a.completeness_gap[i]), method=method, nonsmooth=tuple(nonsmooth)),
    }


def certificate_records(model: Model, a: Analysis, attribution: Attribution,
                        pert: Perturbation, about: Provenance) -> list[Record]:
    """The records of one batch at ``pert``: ``T_e`` (Theorem 1 / Corollary 1 / Theorem 2),
    ``c`` (Eq. 39) and ``T_e_prime`` (Eq. 11, l2 only), the cosine bounds (Corollary 2) and
    Proposition 1's label fields at the perturbations ``+-eps`` times the worst-case
    direction."""
    n, d = a.attr.shape
    eps, p = pert.eps, pert.norm
    unit = worst_case_directions(a.spectrum.v_max, p)  # (N, d)
    deltas = torch.stack([eps * unit, -eps * unit])  # (2, N, d)
    deviations = (attribution_deviations(model, a, attribution, deltas)
                  if pert.is_l2 else None)
    with torch.no_grad():
        moved = a.x.unsqueeze(0) + deltas.to(a.x.dtype).to(a.x.device).view(2, *a.x.shape)
        kept_pred = model(moved.reshape(2 * n, *a.x.shape[1:])).argmax(1).view(2, n).cpu()
    records = []
    for i in range(n):
        xi = float(a.spectrum.xi_max[i])
        attr_norm = float(a.attr[i].norm())
        te = bounds.euclidean_bound(xi, abs_sum_gram(a, i), d, p)
        t_e = te.slope * eps
        cos = bounds.cosine_bound(t_e, attr_norm)
        rec = common_fields(a, i, p, about)
        rec.update({
            "eps": eps,
            "T_e": finite_or_none(t_e),
            "T_e_method": te.method,
            "T_e_min": finite_or_none(te.slope_min * eps),
            "c": None,
            "T_e_prime": None,
            "T_c": finite_or_none(cos.distance),
            "T_c_deg": finite_or_none(cos.degrees),
            "vacuous": cos.vacuous,
            "T_c_prime": None,
            "T_c_prime_deg": None,
            "vacuous_prime": None,
        })
        if deviations is not None:
            c = bounds.modification_factor(deviations[:, i].tolist(), xi, eps)
            t_prime = bounds.modified_euclidean_bound(c, xi, eps)
            cos_p = bounds.cosine_bound(t_prime, attr_norm)
            rec.update({
                "c": finite_or_none(c),
                "T_e_prime": finite_or_none(t_prime),
                "T_c_prime": finite_or_none(cos_p.distance),
                "T_c_prime_deg": finite_or_none(cos_p.degrees),
                "vacuous_prime": cos_p.vacuous,
            })
        rec.update(label_fields(a, i, pert, deltas[:, i], kept_pred[:, i]))
        records.append(rec)
    return records


def add_attack_fields(model: Model, a: Analysis, attribution: Attribution,
                      pert: Perturbation, records: list[Record], options: AttackOptions) -> None:
    """Attack the attributions of one batch and record whether any bound was exceeded.

    The Euclidean bound checked is ``T_e_prime`` for l2 (Eq. 11, the tight estimate) and
    ``T_e`` otherwise; the cosine bound likewise (a vacuous cosine bound cannot be exceeded).
    ``eta`` is Appendix B.1's ``||g(x + delta) - g(x) - J delta||_2`` along ``+eps`` times
    the worst-case direction and along the attack's ``delta``; their graphs hold the
    batch's :attr:`~attrcert.analysis.Analysis.batch_points_per_pass`.
    """
    from .attack import attack, linearity_gap

    per_pass = a.batch_points_per_pass
    found = attack(model, a.x, attribution=attribution, target=a.target, perturbation=pert,
                   steps=options.steps, restarts=options.restarts, seed=options.seed,
                   points_per_pass=per_pass)
    unit = worst_case_directions(a.spectrum.v_max, pert.norm).to(a.x.dtype).to(a.x.device)
    eta_v = linearity_gap(model, a.x, attribution, a.target, pert.eps * unit.view_as(a.x),
                          points_per_pass=per_pass)
    eta_a = linearity_gap(model, a.x, attribution, a.target, found.delta,
                          points_per_pass=per_pass)
    for i, rec in enumerate(records):
        t_hat = float(found.deviation[i])
        c_hat = float(found.cosine_distance[i])
        bound = rec["T_e_prime"] if rec["T_e_prime"] is not None else rec["T_e"]
        cos_bound, cos_vacuous = ((rec["T_c_prime"], rec["vacuous_prime"])
                                  if rec["T_c_prime"] is not None
                                  else (rec["T_c"], rec["vacuous"]))
        violation = bound is not None and t_hat > bound
        violation_cos = (not cos_vacuous and cos_bound is not None and c_hat > cos_bound)
        rec.update({
            "T_e_hat": finite_or_none(t_hat),
            "T_c_hat": finite_or_none(c_hat),
            "T_c_hat_deg": finite_or_none(float(found.angle_deg[i])),
            "attack_label_kept": bool(found.label_kept[i]),
            "violation": violation,
            "violation_cosine": violation_cos,
            "verified": not (violation or violation_cos),
            "eta_vmax": finite_or_none(float(eta_v[i])),
            "eta_attack": finite_or_none(float(eta_a[i])),
            "attack_checked": True,
        })
        if violation or violation_cos:
            rec["warnings"].append(
                "an attack exceeded the bound: the attribution is not locally linear on this "
                "ball; use a smaller eps or a smoother model, and do not report this bound "
                "as a certificate")


def label_fields(a: Analysis, i: int, pert: Perturbation, deltas: Tensor,
                 kept_pred: Tensor) -> Record:
    """Proposition 1 (SPEC §4): ``label_preserved`` (Eq. 8 at ``deltas``), ``label_radius``
    (``min_y' b_y' / ||a_y'||_q``) and ``label_kept`` (the model's argmax at ``deltas``)."""
    y = int(a.target[i])
    b = bounds.label_margins(a.logits[i].numpy(), y)
    av = bounds.label_directions(a.label_grads[i].numpy(), y)
    radius = bounds.label_radius(av, b, pert.dual)
    return {
        "label_preserved": bounds.label_preserved(av, b, [dl.numpy() for dl in deltas]),
        "label_radius": finite_or_none(radius),
        "label_radius_unbounded": radius is None,
        "label_kept": bool((kept_pred == y).all()),
    }
