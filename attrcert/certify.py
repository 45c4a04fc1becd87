"""Orchestration: batches of samples -> :func:`~attrcert.analysis.analyse` -> records.

:func:`certify` gives the bounds of docs/math.md §2 and the label test of §4 for a fixed eps;
:func:`max_eps` the largest eps for a tolerance (§3, :mod:`attrcert.tolerance`). Both size
the run to the memory budget (:mod:`attrcert.sizing`), analyse each batch once (the
attribution Jacobian and its spectrum, :mod:`attrcert.analysis`) and build the records
(:mod:`attrcert.records`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .analysis import Analysis, analyse, prepare
from .attributions import Attribution, Model, get_method, resolve_target
from .config import AttackOptions, AttributionSpec, SolverOptions, resolve, resolve_attack
from .errors import OptionError
from .kinks import add_kink_fields
from .perturbation import NormLike, Perturbation, parse_norm
from .records import LabelOptions, Provenance, add_attack_fields, certificate_records
from .results import Record
from .sizing import Sizing, fitted_batches, size_run
from .smoothness import NonSmoothModelWarning, find_nonsmooth, nonsmooth_message
from .tolerance import Tolerance, eps_max_records

__all__ = ["certify", "max_eps"]

Progress = Callable[[int, int], None]
OnBatch = Callable[[list[Record], Analysis], None]


@dataclass(frozen=True)
class _Run:
    """A run made ready: the model and inputs where they compute, the attribution, the
    targets, what every record says about smoothness, and the sizing."""

    model: Model
    x: Tensor
    attribution: Attribution
    targets: Tensor
    about: Provenance
    sizing: Sizing
    solver: SolverOptions

    def batches(self, work: Callable[[slice], tuple[list[Record], Analysis]],
                on_batch: OnBatch | None) -> list[Record]:
        """``work`` on each batch (retried smaller on out-of-memory), records in order."""
        records: list[Record] = []
        for batch, a in fitted_batches(self.x.shape[0], self.sizing.batch_size, self.x.device,
                                       work):
            records.extend(batch)
            if on_batch is not None:
                on_batch(batch, a)
        return records

    def analyse(self, sl: slice, progress: Progress | None) -> Analysis:
        return analyse(self.model, self.x[sl], self.attribution, self.targets[sl],
                       chunk_size=self.sizing.chunk_size,
                       spectral=self.sizing.spectral, tol=self.solver.tol, progress=progress,
                       abs_sum_blocked=self.sizing.abs_sum_blocked, first_index=sl.start,
                       points_per_pass=self.sizing.points_per_pass,
                       value_points=self.sizing.value_points,
                       probe_all=self.about.method == "saliency" and bool(self.about.nonsmooth))


def _prepare_run(model: Model, x: Tensor, spec: AttributionSpec, solver: SolverOptions,
                 p: float) -> _Run:
    """Checked options, the model and inputs where they compute, the attribution, the
    targets, the smoothness findings (warned once) shared by every record, the sizing."""
    model, x = prepare(model, x, dtype=solver.dtype, device=solver.device)
    baseline = spec.baseline
    if baseline is not None:
        baseline = torch.as_tensor(baseline).to(dtype=x.dtype, device=x.device)
    attribution = get_method(spec.method, steps=spec.steps, baseline=baseline)
    targets = resolve_target(model, x, spec.target)
    with torch.no_grad():
        out = model(x[:1])
    if out.ndim != 2:
        raise OptionError(f"the model returned shape {tuple(out.shape)}: expected logits (N, k)")
    k = int(out.shape[1])
    if targets.numel() and (targets.min() < 0 or targets.max() >= k):
        raise OptionError(f"target classes must lie in 0..{k - 1}")
    nonsmooth = find_nonsmooth(model, x)
    notes = []
    if nonsmooth:
        notes.append(nonsmooth_message(nonsmooth))
        warnings.warn(notes[-1], NonSmoothModelWarning, stacklevel=3)
    sizing = size_run(model, x, attribution, spectral=solver.spectral, p=p,
                      memory_budget=solver.memory_budget, batch_size=solver.batch_size,
                      chunk_size=solver.chunk_size, target=targets)
    about = Provenance(spec.method, tuple(nonsmooth), tuple(notes))
    return _Run(model, x, attribution, targets, about, sizing, solver)


def _stamp(records: list[Record], sl: slice, spectral: str, start: float) -> None:
    """Each record's index among all samples and its share of the batch's wall time."""
    elapsed = (time.perf_counter() - start) / len(records)
    for offset, rec in enumerate(records):
        rec["index"] = sl.start + offset
        rec["spectral"] = spectral
        rec["seconds"] = elapsed


def certify(
    model: Model,
    x: Tensor,
    *,
    eps: float,
    norm: NormLike = 2,
    attribution: AttributionSpec | None = None,
    solver: SolverOptions | None = None,
    attack: AttackOptions | None = None,
    label_gradient: str = "completeness",
    sound: bool = False,
    progress: Progress | None = None,
    on_batch: OnBatch | None = None,
    **shortcuts: Any,
) -> list[Record]:
    """Upper bounds on ``||g(x + delta) - g(x)||`` over ``||delta||_p <= eps``, per sample.

    Each record holds (docs/math.md §2, §4): ``xi_max`` (Theorem 1); ``T_e`` (Theorem 1 for l2,
    Corollary 1 for lp, Theorem 2 for l-inf; ``T_e_method`` says which) and for l-inf
    ``T_e_min``, the smallest valid bound; ``c`` (Eq. 39) and ``T_e_prime = c xi_max eps``
    (Eq. 11, l2 only); ``T_c``, ``T_c_deg`` (Corollary 2) with ``vacuous`` when
    ``T_e >= ||g||``; ``T_c_prime``/``T_c_prime_deg``/``vacuous_prime`` from ``T_e_prime``;
    Proposition 1's ``label_preserved`` (Eq. 8 at ``+-`` the worst-case perturbation),
    ``label_radius`` and ``label_kept`` (the real model's argmax there), first-order
    (``label_method``); ``target``, ``predicted``, ``attr_norm``, ``eps``, ``norm``,
    ``method``, ``seconds``; and what the numbers rest on: ``assumption``, ``smooth``,
    ``nonsmooth_ops``, ``softplus_kink`` (a Softplus threshold within first-order reach of
    the ball, :mod:`attrcert.kinks`), ``attack_checked``.

    The bounds assume a locally linear attribution (docs/math.md §6): they are estimates, not
    guarantees, and ``T_e_prime`` is the tight estimate.

    Args:
        model: classifier returning logits ``(N, k)``; put in eval mode.
        x: images ``(N, C, H, W)`` in the units eps is measured in.
        eps: radius of the ball (> 0).
        norm: ``p``: 2, ``"inf"`` / ``float("inf")``, or any ``p >= 1``.
        attribution: which attribution of which class (:class:`~attrcert.config.AttributionSpec`).
        solver: how ``J`` and its spectrum are computed, batching, memory budget, device
            and dtype (:class:`~attrcert.config.SolverOptions`).
        attack: also attack each attribution (:class:`~attrcert.config.AttackOptions`;
            PGD on the Euclidean and cosine objectives, plus IFIA for l-inf) and add
            ``T_e_hat``, ``T_c_hat``, ``T_c_hat_deg``, ``violation`` (``T_e_hat >
            T_e_prime`` for l2, ``> T_e`` otherwise), ``violation_cosine``, ``verified`` and
            the linearity gaps ``eta_vmax`` / ``eta_attack`` (Appendix B.1); and a label
            attack on Proposition 1: ``margin_hat``, ``label_flip_distance``,
            ``label_radius_violated``, ``label_preserved_violated`` (which make ``verified``
            false).
        label_gradient: ``"completeness"`` (``a = grad f_y' - grad f_y``) or ``"attribution"``.
        sound: also add proved bounds, with no linearity assumption (:mod:`attrcert.sound`):
            ``T_e_sound`` (``T_e_sound_method`` says how), ``T_c_sound``, ``T_c_sound_deg``
            (Corollary 2), the proved label certificate ``margin_lower`` /
            ``label_certified``, and with an attack ``violation_sound`` (a bug, never
            expected).
        progress: called with ``(rows_done, d)`` while Jacobians are built.
        on_batch: called with each batch's records and its :class:`~attrcert.analysis.Analysis`
            as soon as the batch is done (streaming output, progress).
        **shortcuts: the fields of :class:`~attrcert.config.AttributionSpec` (``method``,
            ``steps``, ``baseline``, ``target``) and :class:`~attrcert.config.SolverOptions`
            (``spectral``, ``tol``, ``chunk_size``, ``batch_size``, ``memory_budget``,
            ``device``, ``dtype``) by name, and ``verify=True`` / ``attack_steps``,
            ``attack_restarts``, ``seed`` for the attack.
    """
    pert = Perturbation(parse_norm(norm), eps)
    options = dict(shortcuts)
    attack = resolve_attack(attack, options)
    spec, solver = resolve(attribution, solver, options, "certify")
    run = _prepare_run(model, x, spec, solver, pert.norm)
    bounder = None
    if sound:
        from .sound import SoundBounder
        bounder = SoundBounder(run.model, run.x[:1], run.attribution, pert)

    def work(sl: slice) -> tuple[list[Record], Analysis]:
        start = time.perf_counter()
        a = run.analyse(sl, progress)
        label = LabelOptions(label_gradient, run.sizing.classes_per_pass(
            a.x.shape[0], label_gradient, run.attribution.points))
        records = certificate_records(run.model, a, run.attribution, pert, run.about, label)
        add_kink_fields(run.model, a, pert, records)
        for rec in records:
            rec["spectral"] = run.sizing.spectral
        if bounder is not None:
            bounder.update(a.x, a.target, [float(v) for v in a.attr.norm(dim=1)], records)
        if attack is not None:
            add_attack_fields(run.model, a, run.attribution, pert, records, attack)
            if bounder is not None:
                bounder.check_attack(records)
        _stamp(records, sl, run.sizing.spectral, start)
        return records, a

    return run.batches(work, on_batch)


def max_eps(
    model: Model,
    x: Tensor,
    *,
    omega: float,
    metric: str = "euclidean",
    norm: NormLike = 2,
    modified: bool = False,
    attribution: AttributionSpec | None = None,
    solver: SolverOptions | None = None,
    bisection_steps: int = 30,
    progress: Progress | None = None,
    on_batch: OnBatch | None = None,
    **shortcuts: Any,
) -> list[Record]:
    """The largest eps whose bound stays within a tolerance ``omega`` (Appendix E, docs/math.md §3).

    ``metric="euclidean"``: ``T_e(eps) <= omega`` (Eq. 50); ``"cosine"`` (``0 < omega <=
    1``): Corollary 2 inverted (Eq. 51-52 as corrected in docs/math.md §5); ``"angle"`` (degrees,
    ``0 < omega <= 90``): ``T_e(eps) <= ||g|| sin(omega)``. With ``modified=True`` (l2 only)
    the bound is ``T'_e = c(eps) xi_max eps``, solved by bisection (``bisection_steps``
    halvings; the reported eps satisfies the tolerance). ``attribution``, ``solver``,
    ``progress``, ``on_batch`` and ``**shortcuts`` as for :func:`certify`.

    Records: the common fields of :func:`certify` plus ``omega``, ``metric``,
    ``eps_max`` (``None`` with ``eps_max_unbounded`` when no eps is too large),
    ``eps_max_linear`` (the unmodified value) and ``T_e_method``
    (:func:`attrcert.tolerance.eps_max_records`).
    """
    p = parse_norm(norm)
    tolerance = Tolerance(omega, metric, modified, bisection_steps)
    if modified and p != 2.0:
        raise OptionError("modified (T'_e) is defined for the l2 norm only: use norm=2")
    spec, solver = resolve(attribution, solver, shortcuts, "max_eps")
    run = _prepare_run(model, x, spec, solver, p)

    def work(sl: slice) -> tuple[list[Record], Analysis]:
        start = time.perf_counter()
        a = run.analyse(sl, progress)
        records = eps_max_records(run.model, a, run.attribution, p, tolerance, run.about)
        _stamp(records, sl, run.sizing.spectral, start)
        return records, a

    return run.batches(work, on_batch)
