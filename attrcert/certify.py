"""The library's entry points and the work they share.

:func:`certify` gives the bounds (Theorems 1-2, Corollaries 1-2, Eq. 11) and Proposition
1's label test for a fixed eps; :func:`max_eps` the largest eps for a tolerance (Appendix
E, :mod:`attrcert.tolerance`). Each builds the value objects from its keywords, prepares
the run once (:func:`attrcert.run.prepare_run`: placed, checked, planned) and hands it to
:func:`certify_run` / :func:`max_eps_run`, which the CLI calls with the objects it built at
its boundary. Each batch is analysed once (the attribution Jacobian and its spectrum,
:mod:`attrcert.analysis`) and its records built once (:mod:`attrcert.records`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from torch import Tensor

from .analysis import Analysis
from .attributions import Model
from .document import Record
from .errors import OptionError
from .kinks import add_kink_fields
from .perturbation import NormLike, Perturbation, parse_norm
from .progress import ATTACK, ATTRIBUTION, LABEL, SOUND, SPECTRUM, as_progress, tick
from .records import add_attack_fields, certificate_records
from .run import NO_HOOKS, Hooks, OnBatch, Run, RunInputs, prepare_run
from .settings import (
    AttackOptions,
    AttributionSpec,
    LabelOptions,
    SolverOptions,
    resolve,
    resolve_attack,
)
from .tolerance import Tolerance, check_modified, eps_max_records

__all__ = ["certify", "certify_run", "max_eps", "max_eps_run"]

#: ``progress(phase, done, total)`` (:mod:`attrcert.progress`), or ``(rows done, d)``
#: as the API took it before phases.
Progress = Callable[..., None]
#: Proposition 1 from class gradients (the default).
COMPLETENESS = LabelOptions()


def _seconds(records: list[Record], start: float) -> None:
    """Each record's share of the batch's wall time, its last field."""
    elapsed = (time.perf_counter() - start) / len(records)
    for rec in records:
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

    Each record is one sample's ``xi_max`` (Theorem 1), ``T_e`` (Theorem 1, Corollary 1 or
    Theorem 2), ``c`` and ``T_e_prime`` (Eq. 39, 11), ``T_c`` (Corollary 2), Proposition 1's
    label test and what they rest on; every key is listed in docs/cli.md. The bounds assume
    a locally linear attribution (docs/math.md §6): estimates, not guarantees, with
    ``T_e_prime`` the tight one.

    Args:
        model: classifier returning logits ``(N, k)``; put in eval mode.
        x: images ``(N, C, H, W)`` in the units eps is measured in.
        eps: radius of the ball (> 0).
        norm: ``p``: 2, ``"inf"`` / ``float("inf")``, or any ``p >= 1``.
        attribution: which attribution of which class (:class:`~attrcert.settings.AttributionSpec`).
        solver: how ``J`` and its spectrum are computed, batching, memory budget, device
            and dtype (:class:`~attrcert.settings.SolverOptions`).
        attack: also attack each attribution (:class:`~attrcert.settings.AttackOptions`;
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
        progress: called with ``(phase, done, total)`` as each phase of a sample goes
            (:mod:`attrcert.progress`; a callable of two arguments gets ``(rows done, d)``
            while Jacobians are formed, as before).
        on_batch: called with each batch's records and its :class:`~attrcert.analysis.Analysis`
            as soon as the batch is done (streaming output, progress).
        **shortcuts: the fields of :class:`~attrcert.settings.AttributionSpec` (``method``,
            ``steps``, ``baseline``, ``target``) and :class:`~attrcert.settings.SolverOptions`
            (``spectral``, ``tol``, ``chunk_size``, ``batch_size``, ``memory_budget``,
            ``device``, ``dtype``) by name, and ``verify=True`` / ``attack_steps``,
            ``attack_restarts``, ``seed`` for the attack.
    """
    pert = Perturbation(parse_norm(norm), eps)
    options = dict(shortcuts)
    attack = resolve_attack(attack, options)
    spec, solver = resolve(attribution, solver, options, "certify")
    label = LabelOptions(label_gradient)
    run = prepare_run(RunInputs(model, x, spec, solver), pert.norm)
    return certify_run(run, pert, label=label, attack=attack, sound=sound,
                       hooks=Hooks(as_progress(progress), on_batch))


def certify_run(run: Run, pert: Perturbation, *, label: LabelOptions = COMPLETENESS,
                attack: AttackOptions | None = None, sound: bool = False,
                hooks: Hooks = NO_HOOKS) -> list[Record]:
    """:func:`certify` on a prepared run, with the value objects it takes.

    Raises:
        MemoryBudgetError: before the work, when one sample does not fit the budget.
    """
    run.plan.require((SPECTRUM, ATTRIBUTION, LABEL, *((ATTACK,) if attack else ())),
                     label.how)
    bounder = None
    if sound:
        import torch

        from .sound import SoundBounder
        if not isinstance(run.model, torch.nn.Module):
            raise OptionError("sound=True needs the model as a torch.nn.Module (its graph is "
                              "read): pass the module, not a function")
        bounder = SoundBounder(run.model, run.x[:1], run.attribution, pert,
                               budget=run.plan.budget)
    progress = hooks.progress

    def work(sl: slice) -> tuple[list[Record], Analysis]:
        start = time.perf_counter()
        a = run.analyse(sl, progress)
        records = certificate_records(run, a, pert, label, progress)
        add_kink_fields(run.model, a, pert, records)
        for rec in records:
            rec["spectral"] = run.plan.spectral
        if bounder is not None:
            _phase(progress, SOUND, lambda: bounder.update(
                a.x, a.target, [float(v) for v in a.attr.norm(dim=1)], records))
        if attack is not None:
            _phase(progress, ATTACK,
                   lambda: add_attack_fields(run, a, pert, records, attack))
            if bounder is not None:
                bounder.check_attack(records)
        _seconds(records, start)
        return records, a

    return run.batches(work, hooks.on_batch)


def _phase(progress: Progress | None, phase: str, work: Callable[[], None]) -> None:
    """``work``, told to ``progress`` as ``phase`` (0 of 1, then 1 of 1)."""
    step = tick(progress, phase)
    if step is not None:
        step(0, 1)
    work()
    if step is not None:
        step(1, 1)


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
    """The largest eps whose bound stays within a tolerance ``omega`` (Appendix E).

    ``metric="euclidean"``: ``T_e(eps) <= omega`` (Eq. 50); ``"cosine"`` (``0 < omega <=
    1``): Corollary 2 inverted (Eq. 51-52 as corrected in docs/math.md); ``"angle"``
    (degrees, ``0 < omega <= 90``): ``T_e(eps) <= ||g|| sin(omega)``. With ``modified=True``
    (l2 only) the bound is ``T'_e = c(eps) xi_max eps``, solved by bisection
    (``bisection_steps`` halvings; the reported eps satisfies the tolerance).
    ``attribution``, ``solver``, ``progress``, ``on_batch`` and ``**shortcuts`` as for
    :func:`certify`.

    Records: the common fields of :func:`certify` plus ``omega``, ``metric``,
    ``eps_max`` (``None`` with ``eps_max_unbounded`` when no eps is too large),
    ``eps_max_linear`` (the unmodified value) and ``T_e_method``
    (:func:`attrcert.tolerance.eps_max_records`).
    """
    p = parse_norm(norm)
    tolerance = Tolerance(omega, metric, modified, bisection_steps)
    check_modified(tolerance, p)
    spec, solver = resolve(attribution, solver, shortcuts, "max_eps")
    run = prepare_run(RunInputs(model, x, spec, solver), p)
    return max_eps_run(run, p, tolerance, Hooks(as_progress(progress), on_batch))


def max_eps_run(run: Run, p: float, tolerance: Tolerance, hooks: Hooks = NO_HOOKS
                ) -> list[Record]:
    """:func:`max_eps` on a prepared run for the norm ``p`` and ``tolerance``."""
    run.plan.require((SPECTRUM, ATTRIBUTION))

    def work(sl: slice) -> tuple[list[Record], Analysis]:
        start = time.perf_counter()
        a = run.analyse(sl, hooks.progress)
        records = eps_max_records(run, a, p, tolerance)
        for rec in records:
            rec["spectral"] = run.plan.spectral
        _seconds(records, start)
        return records, a

    return run.batches(work, hooks.on_batch)
