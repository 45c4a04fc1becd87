"""``attrcert report``: the numbers a report shows, and the self-contained HTML page.

Everything is computed through the library's own API, so the report shows exactly what
``attrcert attack`` would print:

- :func:`attrcert.certify` with ``verify=True`` at ``eps``: the bounds (``T_e``, Theorem 1
  / Corollary 1 / Theorem 2; ``T'_e``, Eq. 11; ``T_c``, Corollary 2), the attack's
  ``T_e_hat`` / ``T_c_hat`` and the linearity gaps ``eta`` (Appendix B.1), per sample;
  its ``on_batch`` hook hands over each batch's :class:`~attrcert.certify.Analysis`
  (``g``, ``xi_max``, ``v_max``);
- an eps sweep from that analysis (no second spectrum): ``T_e(eps) = slope * eps`` is
  linear in eps (:func:`attrcert.bounds.euclidean_bound`); ``c(eps)`` (Eq. 39) and
  ``T'_e(eps) = c(eps) xi_max eps`` (Eq. 11) need ``g(x +- eps u)`` at each eps, with ``u``
  the worst-case direction (:func:`~attrcert.certify.worst_case_directions`); ``T_c(eps)``
  is Corollary 2 of each; ``eta(eps) = ||g(x + eps u) - g(x) - eps J u||_2`` (Appendix B.1,
  the paper's Fig. 3) with ``J u`` from one double-VJP
  (:func:`attrcert.attack.jacobian_vector_product`);
- the full Jacobian of the first sample (:func:`attrcert.attribution_jacobian`) for the
  ``|J|`` heatmap (the paper's Fig. 1b, 4-7), only up to ``jacobian_max_d``.

The figures are drawn by :mod:`attrcert.plots` (matplotlib, an optional extra, imported
only here and only when a report is written).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import bounds
from .attack import jacobian_vector_product
from .attributions import Attribution, Model, get_method
from .certify import Analysis, certify, prepare, worst_case_directions
from .errors import OptionError
from .jacobian import attribution_jacobian
from .perturbation import NormLike, Perturbation, norm_label, parse_norm
from .results import (
    ASSUMPTION,
    Record,
    dumps_strict,
    finite_or_none,
    format_value,
    summarize,
)

#: What to run when matplotlib is missing.
INSTALL_HINT = 'pip install "attrcert[report]"'
#: eps values of the default sweep: ``eps * k / SWEEP_POINTS`` for ``k = 1..SWEEP_POINTS``.
SWEEP_POINTS = 6
#: Largest d for which the report forms the first sample's ``d x d`` Jacobian (d backward
#: passes, ``d^2`` floats); the same limit as ``spectral="auto"`` uses for l-inf.
JACOBIAN_MAX_D = 4096
#: Per-sample figures drawn by default (the table lists every sample).
FIGURES = 8

Log = Callable[[str], None]


def require_matplotlib() -> None:
    """Raise :class:`OptionError` (exit 2 in the CLI) with the install command when
    matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OptionError(f"attrcert report draws its figures with matplotlib, which is not "
                          f"installed: run {INSTALL_HINT}") from None


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
    method: str = "integrated_gradients",
    steps: int = 50,
    baseline: Tensor | None = None,
    target: int | Tensor | list[int] | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    spectral: str = "auto",
    tol: float = 1e-4,
    memory_budget: int | str | None = None,
    attack_steps: int = 40,
    attack_restarts: int = 1,
    seed: int = 0,
    sweep: Sequence[float] | None = None,
    figures: int = FIGURES,
    jacobian_max_d: int = JACOBIAN_MAX_D,
    log: Log | None = None,
) -> ReportData:
    """Certify and attack every sample at ``eps``, sweep the bounds over ``sweep`` (default
    :func:`default_sweep`), and form the first sample's Jacobian if ``d <= jacobian_max_d``.

    ``records`` are :func:`attrcert.certify`'s with ``verify=True`` (plus ``source``);
    ``samples`` holds the first ``figures`` samples' images and attributions. ``log`` gets
    one line per stage (progress, for stderr).
    """
    say = log or (lambda _msg: None)
    pert = Perturbation(parse_norm(norm), eps)
    radii = list(sweep) if sweep is not None else default_sweep(eps)
    if not radii or any(not (math.isfinite(r) and r > 0) for r in radii):
        raise OptionError("sweep radii must be finite numbers > 0")
    if isinstance(figures, bool) or int(figures) != figures or figures < 0:
        raise OptionError(f"figures = {figures!r} must be an integer >= 0")
    model, x = prepare(model, x, dtype=dtype, device=device)
    if baseline is not None:
        baseline = torch.as_tensor(baseline).to(dtype=x.dtype, device=x.device)
    n = x.shape[0]
    names = list(sources) if sources is not None else [f"sample {i}" for i in range(n)]
    analyses: list[tuple[int, Analysis]] = []

    def keep(batch: list[Record], analysis: Analysis) -> None:
        # the sweep needs x, g, the targets and the spectrum; Proposition 1's (n, k, d)
        # class gradients are dropped (k d floats per sample: large for ImageNet models)
        analyses.append((batch[0]["index"],
                         replace(analysis, label_grads=analysis.label_grads[:0])))
        say(f"report: certified and attacked {batch[-1]['index'] + 1} of {n} samples")

    say(f"report: certifying and attacking {n} samples at eps = {eps} "
        f"({attack_steps} attack steps)")
    records = certify(model, x, eps=eps, norm=pert.norm, method=method, steps=steps,
                      baseline=baseline, target=target, chunk_size=chunk_size,
                      batch_size=batch_size, spectral=spectral, tol=tol,
                      memory_budget=memory_budget, verify=True,
                      attack_steps=attack_steps, attack_restarts=attack_restarts, seed=seed,
                      on_batch=keep)
    for rec in records:
        fields = [(k, v) for k, v in rec.items() if k != "index"]
        index = rec["index"]
        rec.clear()
        rec.update(index=index, source=names[index])
        rec.update(fields)
    attribution = get_method(method, steps=steps, baseline=baseline)
    say(f"report: sweeping eps over {', '.join(f'{r:g}' for r in radii)}")
    parts = [_sweep_batch(model, a, attribution, pert.norm, radii, eps) for _, a in analyses]
    sweep_data = Sweep(
        eps=np.asarray(radii, dtype=np.float64),
        **{k: np.concatenate([p[0][k] for p in parts], axis=1)
           for k in ("T_e", "T_e_prime", "T_c_deg", "T_c_prime_deg", "deviation", "eta")})
    moved = torch.cat([p[1] for p in parts])
    units = torch.cat([worst_case_directions(a.spectrum.v_max, pert.norm) for _, a in analyses])
    attrs = torch.cat([a.attr for _, a in analyses])
    shape = tuple(x.shape[1:])
    samples = [SampleView(image=x[i].detach().double().cpu().numpy(),
                          attribution=attrs[i].reshape(shape).numpy(),
                          direction=units[i].reshape(shape).numpy(),
                          moved=moved[i].reshape(shape).numpy(), record=records[i])
               for i in range(min(int(figures), n))]
    jac = _jacobian_view(model, x, attribution, analyses[0][1].target[:1], names[0],
                         records[0]["xi_max"], jacobian_max_d, say)
    return ReportData(eps=eps, norm=pert.norm, method=method, records=records,
                      samples=samples, sweep=sweep_data, jacobian=jac,
                      nonsmooth=list(records[0]["nonsmooth_ops"]) if records else [])


def _sweep_batch(model: Model, a: Analysis, attribution: Attribution, p: float,
                 radii: Sequence[float], eps: float) -> tuple[dict[str, np.ndarray], Tensor]:
    """The sweep's arrays ``(K, n)`` for one batch, and ``g(x + eps u)`` ``(n, d)``.

    One double-VJP gives ``J u``; each radius costs one attribution call on ``2n`` inputs
    (``x +- r u``), from which ``c(r)`` (Eq. 39) and ``eta(r)`` follow.
    """
    n, d = a.attr.shape
    unit = worst_case_directions(a.spectrum.v_max, p)  # (n, d) float64, CPU
    x = a.x
    ju = jacobian_vector_product(model, x, attribution, a.target,
                                 unit.to(x.dtype).to(x.device).view_as(x))
    ju = ju.reshape(n, d).double().cpu()
    out = {k: np.full((len(radii), n), np.nan) for k in
           ("T_e", "T_e_prime", "T_c_deg", "T_c_prime_deg", "deviation", "eta")}
    for k, r in enumerate(radii):
        plus, minus = _moved_attributions(model, a, attribution, r * unit)
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
    moved, _ = _moved_attributions(model, a, attribution, eps * unit)
    return out, moved


def _degrees(cos: bounds.CosineBound) -> float:
    """Corollary 2's angle, NaN when vacuous or undefined (plotted as a gap)."""
    return math.nan if cos.vacuous or cos.degrees is None else cos.degrees


def _moved_attributions(model: Model, a: Analysis, attribution: Attribution,
                        delta: Tensor) -> tuple[Tensor, Tensor]:
    """``g(x + delta)`` and ``g(x - delta)``, each ``(n, d)`` float64 on the CPU; one call."""
    x = a.x
    n = x.shape[0]
    step = delta.to(x.dtype).to(x.device).view_as(x)
    g = attribution(model, torch.cat([x + step, x - step]), a.target.repeat(2))
    g = g.reshape(2, n, -1).detach().double().cpu()
    return g[0], g[1]


def _jacobian_view(model: Model, x: Tensor, attribution: Attribution, target: Tensor,
                   source: str, xi_record: float | None, max_d: int, say: Log) -> JacobianView:
    d = x[0].numel()
    if d > max_d:
        return JacobianView(source, d, None, None, xi_record,
                            reason=f"J was not formed: d = {d} exceeds the limit of {max_d} "
                                   f"(d backward passes and d^2 = {d * d:,} entries); raise "
                                   "--jacobian-max-d to draw it")
    say(f"report: forming the {d} x {d} Jacobian of {source}")
    jac = attribution_jacobian(attribution, model, x[:1], target)[0].detach().double().cpu()
    xi_full = float(torch.linalg.matrix_norm(jac, ord=2))
    return JacobianView(source, d, jac.numpy(), xi_full, xi_record)


# --- the HTML page -------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #1a1a1a; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
.note { background: #f4f6fa; border-left: 4px solid #4a6fa5; padding: 0.6em 1em; }
.warn { background: #fff4e5; border-left: 4px solid #d9822b; padding: 0.6em 1em; }
.bad { background: #fdecea; border-left: 4px solid #c0392b; padding: 0.6em 1em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.92em; color: #333; margin-top: 0.3em; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eef1f5; } td.l, th.l { text-align: left; }
tr.violated td { background: #fdecea; }
code { background: #f1f1f1; padding: 0 3px; }
"""

TABLE_COLUMNS = [("source", "source"), ("predicted", "pred"), ("target", "y"),
                 ("attr_norm", "||g||"), ("xi_max", "xi_max"), ("T_e", "T_e"),
                 ("T_e_prime", "T'_e"), ("T_c_deg", "T_c (deg)"), ("T_e_hat", "T_e^ (attack)"),
                 ("T_c_hat_deg", "T_c^ (deg, attack)"), ("eta_vmax", "eta (eps v)"),
                 ("eta_attack", "eta (attack)"), ("label_preserved", "Prop. 1"),
                 ("verified", "attack")]


def _fmt(value: Any) -> str:
    return format_value(value, digits=4)


def _which_bound(p: float) -> str:
    if p == 2.0:
        return ("T_e = xi_max eps (Theorem 1, Eq. 6); T'_e = c xi_max eps with the measured "
                "nonlinearity c along v_max (Eq. 11, 39), the bound the attack is checked "
                "against; T_c: Corollary 2 (Eq. 10)")
    if math.isinf(p):
        return ("T_e = eps sqrt(sum_ij |P_ij|), P = J^T J (Theorem 2, Eq. 7), or Corollary 1 "
                "when J was not formed (see T_e_method); T_c: Corollary 2 (Eq. 10); the attack "
                "is checked against T_e")
    return ("T_e = d^(1/2 - 1/p) xi_max eps (Corollary 1) for p > 2, xi_max eps for p < 2; "
            "T_c: Corollary 2 (Eq. 10); the attack is checked against T_e")


def _verdict(data: ReportData, config: dict[str, Any]) -> tuple[str, str]:
    """(CSS class, text): what the attack showed, without claiming more."""
    n = len(data.records)
    summary = summarize(data.records)
    beaten = summary.get("violations", 0)
    cos_beaten = summary.get("cosine_violations", 0)
    attack = "PGD" + (" and IFIA" if math.isinf(data.norm) else "")
    budget = (f"{config.get('attack_steps', '?')} steps, {config.get('attack_restarts', '?')} "
              f"restart(s), seed {config.get('seed', '?')}")
    checked = "T'_e" if data.norm == 2.0 else "T_e"
    if beaten or cos_beaten:
        return "bad", (f"The attack ({attack}, {budget}) exceeded the Euclidean bound {checked} "
                       f"on {beaten} of {n} samples and the cosine bound on {cos_beaten}: on "
                       "those samples the attribution is not locally linear on this ball and "
                       "the bound is no certificate. Use a smaller eps or a smoother model.")
    return "note", (f"The attack ({attack}, {budget}) did not exceed {checked} or the cosine "
                    f"bound on any of the {n} samples. That shows only that this attack did "
                    "not beat the bounds, not that no perturbation can.")


def _png_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _table(records: Sequence[Record]) -> str:
    head = "".join(f'<th class="{"l" if k == "source" else ""}">{html.escape(h)}</th>'
                   for k, h in TABLE_COLUMNS)
    rows = []
    for r in records:
        cells = []
        for key, _ in TABLE_COLUMNS:
            value = r.get(key)
            if key == "verified":
                text = "held" if value else "VIOLATED"
            else:
                text = _fmt(value)
            cells.append(f'<td class="{"l" if key == "source" else ""}">{html.escape(text)}</td>')
        cls = ' class="violated"' if r.get("verified") is False else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _summary_table(records: Sequence[Record]) -> str:
    summary = summarize(records)
    keys = [("T_e", "T_e"), ("T_e_prime", "T'_e"), ("T_e_hat", "T_e^ (attack)"),
            ("T_c_deg", "T_c (deg)"), ("T_c_hat_deg", "T_c^ (deg, attack)"),
            ("eta_vmax", "eta (eps v)"), ("eta_attack", "eta (attack)"), ("xi_max", "xi_max"),
            ("attr_norm", "||g||")]
    rows = "".join(
        f'<tr><td class="l">{html.escape(h)}</td>'
        + "".join(f"<td>{_fmt(summary[k][s])}</td>" for s in ("mean", "median", "max"))
        + "</tr>" for k, h in keys if isinstance(summary.get(k), dict))
    return ('<table><tr><th class="l"></th><th>mean</th><th>median</th><th>max</th></tr>'
            f"{rows}</table>")


def _config_table(config: dict[str, Any]) -> str:
    rows = "".join(f'<tr><td class="l">{html.escape(str(k))}</td><td class="l">'
                   f"{html.escape(dumps_strict(v) if not isinstance(v, str) else v)}</td></tr>"
                   for k, v in config.items())
    return f"<table>{rows}</table>"


def write_report(out: Path, data: ReportData, config: dict[str, Any]) -> Path:
    """Draw the figures into ``out`` (PNG files), write ``out/report.json`` (config,
    records, summary and the sweep) and ``out/report.html``, self-contained (each PNG
    embedded as a base64 data URI, CSS inline, no scripts). Returns the HTML's path."""
    require_matplotlib()
    from . import plots  # matplotlib is imported here, and only here

    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, Path, str]] = []  # (section, file, caption)
    for i, view in enumerate(data.samples):
        path = out / f"sample_{i:03d}.png"
        plots.sample_figure(view, data.eps, data.norm, data.method, path)
        figures.append(("samples", path, _sample_caption(view, data)))
    if data.jacobian.matrix is not None:
        path = out / "jacobian.png"
        plots.jacobian_figure(data.jacobian, path)
        figures.append(("jacobian", path, _jacobian_caption(data.jacobian)))
    path = out / "bound_minus_attack.png"
    plots.deviation_histogram(data.records, data.eps, data.norm, path)
    figures.append(("attack", path, _histogram_caption(data)))
    path = out / "sweep.png"
    plots.sweep_figure(data.sweep, data.records, data.eps, data.norm, path)
    figures.append(("sweep", path, _sweep_caption(data)))
    document = {"config": config, "samples": data.records, "summary": summarize(data.records),
                "sweep": data.sweep.as_dict(),
                "jacobian": {"source": data.jacobian.source, "d": data.jacobian.d,
                             "formed": data.jacobian.matrix is not None,
                             "xi_max_full": finite_or_none(data.jacobian.xi_max_full),
                             "xi_max_record": data.jacobian.xi_max_record,
                             "reason": data.jacobian.reason},
                "figures": [p.name for _, p, _ in figures]}
    (out / "report.json").write_text(dumps_strict(document, indent=2) + "\n")
    page = out / "report.html"
    page.write_text(_html(data, config, figures))
    return page


def _sample_caption(view: SampleView, data: ReportData) -> str:
    r = view.record
    direction = "v_max" if data.norm == 2.0 else (
        "sign(v_max)" if math.isinf(data.norm) else "v_max / ||v_max||_p")
    return (f"{r['source']}: the image, its attribution g ({data.method}), the worst-case "
            f"direction u = {direction} (unit l{norm_label(data.norm)} norm), the attribution "
            f"at x + eps u, eps = {data.eps:g}, on the same colour scale as g, and the change "
            "g(x + eps u) - g(x) on its own scale. "
            f"T_e = {_fmt(r['T_e'])}, T'_e = {_fmt(r.get('T_e_prime'))}, "
            f"the attack reached {_fmt(r.get('T_e_hat'))}.")


def _jacobian_caption(jac: JacobianView) -> str:
    return (f"|J| = |dg_i/dx_j| of {jac.source} (d = {jac.d}), log colour scale: the first 100 "
            f"dimensions and the full matrix (the paper's Fig. 1b, 4-7). Largest singular "
            f"value of this J: {_fmt(jac.xi_max_full)}; xi_max in the table (spectral "
            f"solver): {_fmt(jac.xi_max_record)}.")


def _histogram_caption(data: ReportData) -> str:
    which = "T_e and T'_e" if data.norm == 2.0 else "T_e"
    return (f"Bound minus the deviation the attack reached, over the {len(data.records)} "
            f"samples, at eps = {data.eps:g} ({which}; the paper's Fig. 8). Left of 0: the "
            "attack beat the bound.")


def _sweep_caption(data: ReportData) -> str:
    radii = ", ".join(f"{r:g}" for r in data.sweep.eps)
    return (f"Bounds and the linearity gap over eps = {radii} (lines: the mean over the "
            f"{len(data.records)} samples; bands: min to max). T_e is linear in eps; T'_e "
            "uses c(eps) measured at each eps (Eq. 11, 39); markers at eps = "
            f"{data.eps:g}: what the attack reached. eta = ||g(x + eps u) - g(x) - eps J u|| "
            "(Appendix B.1, the paper's Fig. 3): how far g is from linear along u.")


def _html(data: ReportData, config: dict[str, Any],
          figures: list[tuple[str, Path, str]]) -> str:
    esc = html.escape
    cls, verdict = _verdict(data, config)
    smooth = ("<p class=\"warn\"><b>Non-smooth model.</b> " + esc(
        f"The model contains {', '.join(data.nonsmooth)}: it is not twice differentiable, so "
        "the bounds are estimates, not certificates (SPEC §6); the attack below checks them.")
        + "</p>") if data.nonsmooth else (
        '<p class="note">No non-smooth operation was found in the model; local linearity '
        "still depends on eps (see the sweep's eta).</p>")
    jac_note = "" if data.jacobian.reason is None else \
        f'<p class="warn">{esc(data.jacobian.reason)}.</p>'

    def section(name: str) -> str:
        return "".join(f"<figure>{_png_tag(p, p.name)}<figcaption>{esc(c)}</figcaption>"
                       "</figure>" for s, p, c in figures if s == name)

    shown = len(data.samples)
    n = len(data.records)
    samples_note = ("<p>No per-sample figures (<code>--figures 0</code>).</p>" if shown == 0
                    else f"<p>The first {shown} of {n} samples (<code>--figures</code> sets "
                    "how many).</p>" if shown < n else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>attrcert report: {esc(str(config.get('model', '')))}</title>
<style>{CSS}</style></head><body>
<h1>attrcert report</h1>
<p>{esc(str(config.get('model', '')))} on {esc(str(config.get('images', '')))}:
{n} samples, {esc(data.method)} attributions, l{esc(norm_label(data.norm))} ball of radius
eps = {data.eps:g} (pixel units of the images as loaded, [0, 1]).</p>
<h2>What the numbers mean</h2>
<p class="note"><b>Bounds.</b> {esc(_which_bound(data.norm))}.<br>
<b>Assumption.</b> The bounds assume a {esc(ASSUMPTION)}: every bound is exact for an
attribution that is linear on the ball and a tight estimate for a smooth one at small eps, not
a guarantee.</p>
{smooth}
<p class="{cls}"><b>Attack.</b> {esc(verdict)}</p>
<h2>Summary</h2>
{_summary_table(data.records)}
<h2>Attributions and worst-case directions</h2>
{samples_note}{section("samples")}
<h2>The attribution Jacobian</h2>
{jac_note}{section("jacobian")}
<h2>Bounds against the attack</h2>
{section("attack")}
<h2>Bounds and linearity over eps</h2>
{section("sweep")}
<h2>Every sample</h2>
<p>T_e^, T_c^: the largest deviation and angle the attack reached; eta: the linearity gap
along eps u and along the attack's delta; Prop. 1: the label provably stays (to first
order); attack: VIOLATED where the attack beat {"T'_e" if data.norm == 2.0 else "T_e"} or the
cosine bound.</p>
{_table(data.records)}
<h2>Configuration</h2>
{_config_table(config)}
<p>Written by attrcert {esc(str(config.get('attrcert', '')))}. The figures are also in this
folder as PNG files; the numbers in <code>report.json</code>.</p>
</body></html>
"""
