"""``attrcert report``, the numbers: what the report shows, computed and gathered into
view objects (:class:`ReportData` and its parts) that :mod:`attrcert.report.figures` draws
and :mod:`attrcert.report.html` lays out.

Everything is computed through the library's own API, so the report shows exactly what
``attrcert attack`` would print:

- :func:`attrcert.certify` with ``verify=True`` at ``eps``: the bounds (``T_e``, Theorem 1
  / Corollary 1 / Theorem 2; ``T'_e``, Eq. 11; ``T_c``, Corollary 2), the attack's
  ``T_e_hat`` / ``T_c_hat`` and the linearity gaps ``eta`` (Appendix B.1), per sample;
  its ``on_batch`` hook hands over each batch's :class:`~attrcert.analysis.Analysis`
  (``g``, ``xi_max``, ``v_max``);
- an eps sweep from that analysis (no second spectrum): ``T_e(eps) = slope * eps`` is
  linear in eps (:func:`attrcert.bounds.euclidean_bound`); ``c(eps)`` (Eq. 39) and
  ``T'_e(eps) = c(eps) xi_max eps`` (Eq. 11) need ``g(x +- eps u)`` at each eps, with ``u``
  the worst-case direction (:func:`~attrcert.analysis.worst_case_directions`); ``T_c(eps)``
  is Corollary 2 of each; ``eta(eps) = ||g(x + eps u) - g(x) - eps J u||_2`` (Appendix B.1,
  the paper's Fig. 3) with ``J u`` from one double-VJP
  (:func:`attrcert.attack.jacobian_vector_product`);
- the full Jacobian of the first sample (:func:`attrcert.attribution_jacobian`) for the
  ``|J|`` heatmap (the paper's Fig. 1b, 4-7), only up to ``jacobian_max_d``.

No matplotlib here: this module runs without the ``report`` extra.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import bounds
from ..analysis import Analysis, attribute_rows, worst_case_directions
from ..attack import jacobian_vector_product
from ..attributions import Model
from ..certify import certify_run
from ..document import Record, finite_or_none
from ..errors import OptionError
from ..jacobian import attribution_jacobian
from ..perturbation import NormLike, Perturbation, parse_norm
from ..run import Hooks, Run, RunInputs, prepare_run
from ..settings import (
    AttackOptions,
    AttributionSpec,
    LabelOptions,
    SolverOptions,
    resolve,
    resolve_attack,
)

#: eps values of the default sweep: ``eps * k / SWEEP_POINTS`` for ``k = 1..SWEEP_POINTS``.
SWEEP_POINTS = 6
#: Largest d for which the report forms the first sample's ``d x d`` Jacobian (d backward
#: passes, ``d^2`` floats); the same limit as ``spectral="auto"`` uses for l-inf.
JACOBIAN_MAX_D = 4096
#: Per-sample figures drawn by default (the table lists every sample).
FIGURES = 8

Log = Callable[[str], None]


def default_sweep(eps: float, points: int = SWEEP_POINTS) -> list[float]:
    """``points`` equally spaced radii up to ``eps``: ``eps * k / points``, ``k = 1..points``,
    rounded to 12 significant digits (the last is ``eps`` itself)."""
    return [float(f"{eps * k / points:.12g}") for k in range(1, points)] + [float(eps)]


def parse_sweep(text: str | None, eps: float) -> list[float]:
    """The sweep's radii from ``"0.01,0.05,0.1"`` (sorted, duplicates removed), or
    :func:`default_sweep` for ``None``. Every value must be a finite number > 0."""
    if text is None:
        return default_sweep(eps)
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise OptionError(f"--sweep {text!r}: give radii separated by commas, e.g. "
                          "0.02,0.05,0.1") from None
    if not values:
        raise OptionError("--sweep is empty: give at least one radius, e.g. 0.02,0.05,0.1")
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise OptionError(f"--sweep: every radius must be a finite number > 0, not {bad[0]}")
    return sorted(set(values))


# --- the data ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ReportView:
    """What the report shows beyond the records.

    Attributes:
        sweep: the radii of the eps sweep (``None``: :func:`default_sweep` of eps).
        figures: per-sample figures (the first ``figures`` samples).
        jacobian_max_d: form the first sample's ``d x d`` Jacobian only up to this ``d``.
    """

    sweep: tuple[float, ...] | None = None
    figures: int = FIGURES
    jacobian_max_d: int = JACOBIAN_MAX_D

    def __post_init__(self) -> None:
        if self.sweep is not None:
            radii = tuple(float(r) for r in self.sweep)
            if not radii or any(not (math.isfinite(r) and r > 0) for r in radii):
                raise OptionError("sweep radii must be finite numbers > 0")
            object.__setattr__(self, "sweep", radii)
        if isinstance(self.figures, bool) or int(self.figures) != self.figures \
                or self.figures < 0:
            raise OptionError(f"figures = {self.figures!r} must be an integer >= 0")

    def radii(self, eps: float) -> list[float]:
        return list(self.sweep) if self.sweep is not None else default_sweep(eps)


@dataclass
class SampleView:
    """What the per-sample figure shows; arrays ``(C, H, W)`` float64.

    Attributes:
        image: ``x``.
        attribution: ``g(x)``.
        direction: the unit worst-case direction ``u`` (``v_max`` for l2, ``sign(v_max)``
            for l-inf, ``v_max / ||v_max||_p`` otherwise).
        moved: ``g(x + eps u)``.
        record: the sample's :func:`~attrcert.certify` record (with ``source``).
    """

    image: np.ndarray
    attribution: np.ndarray
    direction: np.ndarray
    moved: np.ndarray
    record: Record


@dataclass
class Sweep:
    """Bounds and linearity gaps over a list of radii; arrays ``(K, N)`` float64, NaN where
    a value does not exist (``T'_e`` for norms other than l2, a vacuous ``T_c``).

    Attributes:
        eps: ``(K,)`` the radii.
        T_e: ``slope * eps`` (Theorem 1 / Corollary 1 / Theorem 2).
        T_e_prime: ``c(eps) xi_max eps`` (Eq. 11; l2 only).
        T_c_deg, T_c_prime_deg: Corollary 2's angle for ``T_e`` and ``T'_e`` (degrees).
        deviation: ``max_s ||g(x + s eps u) - g(x)||_2`` over ``s = +-1``.
        eta: ``||g(x + eps u) - g(x) - eps J u||_2`` (Appendix B.1).
    """

    eps: np.ndarray
    T_e: np.ndarray
    T_e_prime: np.ndarray
    T_c_deg: np.ndarray
    T_c_prime_deg: np.ndarray
    deviation: np.ndarray
    eta: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe: lists of lists, ``None`` for NaN."""
        def clean(a: np.ndarray) -> list[Any]:
            return [[finite_or_none(v) for v in row] for row in a.tolist()] if a.ndim == 2 \
                else [finite_or_none(v) for v in a.tolist()]

        return {k: clean(getattr(self, k)) for k in
                ("eps", "T_e", "T_e_prime", "T_c_deg", "T_c_prime_deg", "deviation", "eta")}


@dataclass
class JacobianView:
    """The first sample's ``J`` (``(d, d)`` float64), or why it was not formed.

    ``xi_max_full`` is its largest singular value (``torch.linalg.matrix_norm(J, 2)``),
    shown next to the record's ``xi_max`` as a cross-check of the spectral solver.
    """

    source: str
    d: int
    matrix: np.ndarray | None
    xi_max_full: float | None
    xi_max_record: float | None
    reason: str | None = None


@dataclass
class ReportData:
    """Everything the report shows."""

    eps: float
    norm: float
    method: str
    records: list[Record]
    samples: list[SampleView]
    sweep: Sweep
    jacobian: JacobianView
    nonsmooth: list[str] = field(default_factory=list)


def compute_report(
    model: Model,
    x: Tensor,
    *,
    eps: float,
    norm: NormLike = 2,
    sources: Sequence[str] | None = None,
    attribution: AttributionSpec | None = None,
    solver: SolverOptions | None = None,
    attack: AttackOptions | None = None,
    view: ReportView | None = None,
    log: Log | None = None,
    **shortcuts: Any,
) -> ReportData:
    """Certify and attack every sample at ``eps``, sweep the bounds over the view's radii
    (default :func:`default_sweep`), and form the first sample's Jacobian if ``d <=
    view.jacobian_max_d`` (:class:`ReportView`; its fields also by name).

    ``attribution``, ``solver``, ``attack`` (default :class:`~attrcert.settings.AttackOptions`)
    and ``**shortcuts`` as for :func:`attrcert.certify`. ``records`` are
    :func:`attrcert.certify`'s with the attack, each with its ``source`` (``sources``, else
    ``sample i``); ``samples`` holds the first ``figures`` samples' images and
    attributions. ``log`` gets one line per stage (progress, for stderr).
    """
    options = {"verify": True, **shortcuts}  # the report always attacks
    shown = {k: options.pop(k) for k in ("sweep", "figures", "jacobian_max_d") if k in options}
    view = dataclasses.replace(view or ReportView(), **shown)
    attack = resolve_attack(attack, options) or AttackOptions()
    spec, solver = resolve(attribution, solver, options, "compute_report")
    pert = Perturbation(parse_norm(norm), eps)
    names = list(sources) if sources is not None else None

    def head(index: int) -> Record:
        return {"source": names[index] if names is not None else f"sample {index}"}

    run = prepare_run(RunInputs(model, x, spec, solver, head=head), pert.norm)
    return report_run(run, pert, attack, view, log)


def report_run(run: Run, pert: Perturbation, attack: AttackOptions, view: ReportView,
               log: Log | None = None) -> ReportData:
    """:func:`compute_report` on a prepared run (its records start with what the run's
    head gives, ``source`` included)."""
    say = log or (lambda _msg: None)
    eps, x = pert.eps, run.x
    radii = view.radii(eps)
    n = x.shape[0]
    analyses: list[Analysis] = []

    def keep(batch: list[Record], analysis: object) -> None:
        # the sweep needs x, g, the targets and the spectrum
        assert isinstance(analysis, Analysis)
        analyses.append(analysis)
        done = sum(a.x.shape[0] for a in analyses)
        say(f"report: certified and attacked {done} of {n} samples")

    say(f"report: certifying and attacking {n} samples at eps = {eps} "
        f"({attack.steps} attack steps)")
    records = certify_run(run, pert, label=LabelOptions(), attack=attack,
                          hooks=Hooks(on_batch=keep))
    say(f"report: sweeping eps over {', '.join(f'{r:g}' for r in radii)}")
    parts = [_sweep_batch(run, a, pert.norm, radii, eps) for a in analyses]
    sweep_data = Sweep(
        eps=np.asarray(radii, dtype=np.float64),
        **{k: np.concatenate([p[0][k] for p in parts], axis=1)
           for k in ("T_e", "T_e_prime", "T_c_deg", "T_c_prime_deg", "deviation", "eta")})
    moved = torch.cat([p[1] for p in parts])
    units = torch.cat([worst_case_directions(a.spectrum.v_max, pert.norm) for a in analyses])
    attrs = torch.cat([a.attr for a in analyses])
    shape = tuple(x.shape[1:])
    samples = [SampleView(image=x[i].detach().double().cpu().numpy(),
                          attribution=attrs[i].reshape(shape).numpy(),
                          direction=units[i].reshape(shape).numpy(),
                          moved=moved[i].reshape(shape).numpy(), record=records[i])
               for i in range(min(int(view.figures), n))]
    jac = _jacobian_view(run, analyses[0].target[:1], records[0].get("source", "sample 0"),
                         records[0]["xi_max"], view.jacobian_max_d, say)
    return ReportData(eps=eps, norm=pert.norm, method=run.about.method, records=records,
                      samples=samples, sweep=sweep_data, jacobian=jac,
                      nonsmooth=list(run.about.nonsmooth))


def _sweep_batch(run: Run, a: Analysis, p: float, radii: Sequence[float],
                 eps: float) -> tuple[dict[str, np.ndarray], Tensor]:
    """The sweep's arrays ``(K, n)`` for one batch, and ``g(x + eps u)`` ``(n, d)``.

    One double-VJP gives ``J u`` (its graph in passes of the plan's
    :meth:`~attrcert.plan.RunPlan.points_per_second_order_pass`); each radius costs one
    attribution call on ``2n`` inputs (``x +- r u``), from which ``c(r)`` (Eq. 39) and
    ``eta(r)`` follow.
    """
    model, attribution = run.model, run.attribution
    n, d = a.attr.shape
    unit = worst_case_directions(a.spectrum.v_max, p)  # (n, d) float64, CPU
    x = a.x
    ju = jacobian_vector_product(model, x, attribution, a.target,
                                 unit.to(x.dtype).to(x.device).view_as(x),
                                 points_per_pass=run.plan.points_per_second_order_pass(n))
    ju = ju.reshape(n, d).double().cpu()
    out = {k: np.full((len(radii), n), np.nan) for k in
           ("T_e", "T_e_prime", "T_c_deg", "T_c_prime_deg", "deviation", "eta")}
    for k, r in enumerate(radii):
        plus, minus = _moved_attributions(run, a, r * unit)
        dev = torch.stack([(plus - a.attr).norm(dim=1), (minus - a.attr).norm(dim=1)])
        eta = (plus - a.attr - r * ju).norm(dim=1)
        for i in range(n):
            xi = float(a.spectrum.xi_max[i])
            gram = None if a.spectrum.abs_sum_gram is None else float(a.spectrum.abs_sum_gram[i])
            t_e = bounds.euclidean_bound(xi, gram, d, p).slope * r
            attr_norm = float(a.attr[i].norm())
            out["T_e"][k, i] = t_e
            out["T_c_deg"][k, i] = _degrees(bounds.cosine_bound(t_e, attr_norm))
            out["deviation"][k, i] = float(dev[:, i].max())
            out["eta"][k, i] = float(eta[i])
            if p == 2.0:
                c = bounds.modification_factor(dev[:, i].tolist(), xi, r)
                t_prime = bounds.modified_euclidean_bound(c, xi, r)
                out["T_e_prime"][k, i] = t_prime
                out["T_c_prime_deg"][k, i] = _degrees(bounds.cosine_bound(t_prime, attr_norm))
    moved, _ = _moved_attributions(run, a, eps * unit)
    return out, moved


def _degrees(cos: bounds.CosineBound) -> float:
    """Corollary 2's angle, NaN when vacuous or undefined (plotted as a gap)."""
    return math.nan if cos.vacuous or cos.degrees is None else cos.degrees


def _moved_attributions(run: Run, a: Analysis, delta: Tensor) -> tuple[Tensor, Tensor]:
    """``g(x + delta)`` and ``g(x - delta)``, each ``(n, d)`` float64 on the CPU; one call
    (its points within the plan's :attr:`~attrcert.plan.RunPlan.points_per_value_pass`)."""
    x = a.x
    n = x.shape[0]
    step = delta.to(x.dtype).to(x.device).view_as(x)
    g = attribute_rows(run.attribution, run.model, torch.cat([x + step, x - step]),
                       a.target.repeat(2), run.plan.points_per_value_pass)
    g = g.reshape(2, n, -1).detach().double().cpu()
    return g[0], g[1]


def _jacobian_view(run: Run, target: Tensor, source: str, xi_record: float | None,
                   max_d: int, say: Log) -> JacobianView:
    model, x, attribution = run.model, run.x, run.attribution
    d = x[0].numel()
    if d > max_d:
        return JacobianView(source, d, None, None, xi_record,
                            reason=f"J was not formed: d = {d} exceeds the limit of {max_d} "
                                   f"(d backward passes and d^2 = {d * d:,} entries); raise "
                                   "--jacobian-max-d to draw it")
    say(f"report: forming the {d} x {d} Jacobian of {source}")
    jac = attribution_jacobian(attribution, model, x[:1], target)[0].detach().double().cpu()
    finite = bool(torch.isfinite(jac).all())
    xi_full = (float(torch.linalg.matrix_norm(jac, ord=2)) if finite and bool(jac.any())
               else 0.0 if finite else None)  # LAPACK never sees a zero or non-finite J
    return JacobianView(source, d, jac.numpy(), xi_full, xi_record)
