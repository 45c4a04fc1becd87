"""The certificate's records: one dict per sample, built from a batch's
:class:`~attrcert.analysis.Analysis` and the bounds of :mod:`attrcert.bounds`, each field
written once (the fields are docs/cli.md's)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import bounds
from .analysis import Analysis, attribution_deviations, worst_case_directions
from .attributions import Model
from .degenerate import degenerate_reasons
from .document import ASSUMPTION, Record, finite_or_none
from .perturbation import Perturbation, norm_label
from .progress import LABEL, Progress, tick
from .proposition1 import LabelTest, label_test
from .run import Run
from .settings import AttackOptions, LabelOptions

#: How Proposition 1's label fields are obtained: Eq. 8 linearises the logits at ``x``.
LABEL_METHOD = "first_order"

__all__ = ["LABEL_METHOD", "abs_sum_gram", "add_attack_fields", "add_label_attack_fields",
           "certificate_records", "common_fields", "label_fields"]


def abs_sum_gram(a: Analysis, i: int) -> float | None:
    """Theorem 2's ``sum_ij |P_ij|`` of sample ``i`` (``None`` where it was not computed)."""
    return None if a.spectrum.abs_sum_gram is None else float(a.spectrum.abs_sum_gram[i])


def common_fields(run: Run, a: Analysis, i: int, p: float) -> Record:
    """The fields every record has (docs/cli.md): the sample (:meth:`attrcert.run.Run.sample`),
    ``attr_norm``, ``xi_max`` (Theorem 1), IG's completeness gap, what the numbers rest on,
    and ``degenerate``: why they mean nothing, if they do not (:mod:`attrcert.degenerate`)."""
    about = run.about
    method, nonsmooth, notes = about.method, about.nonsmooth, about.notes
    return {
        **run.sample(a.indices[i], int(a.target[i]), int(a.predicted[i])),
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


def certificate_records(run: Run, a: Analysis, pert: Perturbation, label: LabelOptions,
                        progress: Progress | None = None) -> list[Record]:
    """The records of one batch at ``pert``: ``T_e`` (Theorem 1 / Corollary 1 / Theorem 2),
    ``c`` (Eq. 39) and ``T_e_prime`` (Eq. 11, l2 only), the cosine bounds (Corollary 2) and
    Proposition 1's label fields at the perturbations ``+-eps`` times the worst-case
    direction (its passes sized by the run's plan; ``progress`` hears of
    :data:`~attrcert.progress.LABEL`)."""
    model, attribution, plan = run.model, run.attribution, run.plan
    n, d = a.attr.shape
    eps, p = pert.eps, pert.norm
    unit = worst_case_directions(a.spectrum.v_max, p)  # (N, d)
    deltas = torch.stack([eps * unit, -eps * unit])  # (2, N, d)
    deviations = (attribution_deviations(model, a, attribution, deltas,
                                         plan.points_per_value_pass)
                  if pert.is_l2 else None)
    with torch.no_grad():
        moved = a.x.unsqueeze(0) + deltas.to(a.x.dtype).to(a.x.device).view(2, *a.x.shape)
        kept_pred = model(moved.reshape(2 * n, *a.x.shape[1:])).argmax(1).view(2, n).cpu()
    test = label_test(model, a.x, a.target, a.logits, deltas, q=pert.dual,
                      attribution=attribution, how=label.how,
                      classes_per_pass=plan.classes_per_label_pass(label.how),
                      progress=tick(progress, LABEL))
    records = []
    for i in range(n):
        xi = float(a.spectrum.xi_max[i])
        attr_norm = float(a.attr[i].norm())
        te = bounds.euclidean_bound(xi, abs_sum_gram(a, i), d, p)
        t_e = te.slope * eps
        cos = bounds.cosine_bound(t_e, attr_norm)
        rec = common_fields(run, a, i, p)
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
        rec.update(label_fields(test, i, int(a.target[i]), kept_pred[:, i]))
        records.append(rec)
    return records


def add_attack_fields(run: Run, a: Analysis, pert: Perturbation, records: list[Record],
                      options: AttackOptions) -> None:
    """Attack the attributions of one batch and record whether any bound was exceeded.

    The Euclidean bound checked is ``T_e_prime`` for l2 (Eq. 11, the tight estimate) and
    ``T_e`` otherwise; the cosine bound likewise (a vacuous cosine bound cannot be exceeded).
    ``eta`` is Appendix B.1's ``||g(x + delta) - g(x) - J delta||_2`` along ``+eps`` times
    the worst-case direction and along the attack's ``delta``; their graphs hold the
    plan's :meth:`~attrcert.plan.RunPlan.points_per_second_order_pass` of the batch.
    """
    from .attack import attack, linearity_gap

    model, attribution = run.model, run.attribution
    per_pass = run.plan.points_per_second_order_pass(a.x.shape[0])
    found = attack(model, a.x, attribution=attribution, target=a.target, perturbation=pert,
                   steps=options.steps, restarts=options.restarts, seed=options.seed,
                   points_per_pass=per_pass)
    unit = worst_case_directions(a.spectrum.v_max, pert.norm).to(a.x.dtype).to(a.x.device)
    eta_v = linearity_gap(model, a.x, attribution, a.target, pert.eps * unit.view_as(a.x),
                          points_per_pass=per_pass)
    eta_a = linearity_gap(model, a.x, attribution, a.target, found.delta,
                          points_per_pass=per_pass)
    add_label_attack_fields(model, a, pert, records, options)
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
            "verified": not (violation or violation_cos or rec["label_radius_violated"]
                             or rec["label_preserved_violated"]),
            "eta_vmax": finite_or_none(float(eta_v[i])),
            "eta_attack": finite_or_none(float(eta_a[i])),
            "attack_checked": True,
        })
        if violation or violation_cos:
            rec["warnings"].append(
                "an attack exceeded the bound: the attribution is not locally linear on this "
                "ball; use a smaller eps or a smoother model, and do not report this bound "
                "as a certificate")


def label_fields(test: LabelTest, i: int, target: int, kept_pred: Tensor) -> Record:
    """Proposition 1's fields of sample ``i``: ``label_preserved`` (Eq. 8 at the worst-case
    perturbations), ``label_radius`` (``min_{y'} b_{y'} / ||a_{y'}||_q``) and ``label_kept``
    (the model's argmax there). Eq. 8 linearises the logits at ``x``, so both are
    first-order (``label_method``), as ``T_e`` is: an attack checks them
    (:func:`add_label_attack_fields`), ``--sound`` proves ``label_certified``."""
    radius = finite_or_none(float(test.radius[i]))
    return {
        "label_preserved": bool(test.preserved[i]),
        "label_radius": radius,
        "label_radius_unbounded": radius is None,
        "label_kept": bool((kept_pred == target).all()),
        "label_method": LABEL_METHOD,
    }


def add_label_attack_fields(model: Model, a: Analysis, pert: Perturbation,
                            records: list[Record], options: AttackOptions) -> None:
    """Check Proposition 1 with a label attack (:func:`attrcert.attack.margin.margin_attack`)
    inside ``min(eps, label_radius)`` and inside eps: ``margin_hat``, the smallest margin
    ``f_y - max_{y' != y} f_y'`` it found in the ball; ``label_flip_distance``, the distance of
    the closest point where the label changed (``None``: none found);
    ``label_radius_violated`` (it changed closer than ``label_radius``) and
    ``label_preserved_violated`` (``label_preserved`` but it changed inside the ball)."""
    from .attack.margin import margin_attack

    eps = pert.eps
    radii = torch.tensor([eps if r["label_radius"] is None else min(eps, r["label_radius"])
                          for r in records], dtype=torch.float64)
    common = {"steps": options.steps, "restarts": options.restarts}
    found = margin_attack(model, a.x, a.target, pert.norm, torch.full_like(radii, eps),
                          seed=options.seed, **common)
    margin, dist = found.margin, found.distance
    if bool((radii < eps).any()):
        inner = margin_attack(model, a.x, a.target, pert.norm, radii, seed=options.seed + 1,
                              **common)
        margin, dist = torch.minimum(margin, inner.margin), torch.minimum(dist, inner.distance)
    for i, rec in enumerate(records):
        d, radius = float(dist[i]), rec["label_radius"]
        in_radius = radius is not None and radius > 0 and d < radius
        in_ball = rec["label_preserved"] and d <= eps
        rec.update({
            "margin_hat": finite_or_none(float(margin[i])),
            "label_flip_distance": finite_or_none(d),
            "label_radius_violated": bool(in_radius),
            "label_preserved_violated": bool(in_ball),
        })
        if in_radius or in_ball:
            rec["warnings"].append(
                f"an attack changed the label at distance {d:.4g}, inside "
                + (f"label_radius {radius:.4g}" if in_radius else "the ball where Proposition 1 "
                   "said it is preserved")
                + ": Proposition 1 is first-order, not a certificate (--sound proves "
                "label_certified)")
