"""``attrcert report``, the page: :func:`write_report` draws the figures
(:mod:`attrcert.report.figures`, matplotlib, imported only when a report is written),
writes ``report.json`` and the self-contained ``report.html`` (PNGs as data URIs, CSS
inline, no scripts) from a :class:`~attrcert.report.compute.ReportData`.

The page says what was shown and no more: the bounds' assumption (a locally linear
attribution, docs/math.md §6), the non-smooth operations found, and whether the attack beat a
bound, with the attack's budget.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..document import ASSUMPTION, Record, dumps_strict, finite_or_none, format_value, summarize
from ..errors import OptionError
from ..perturbation import norm_label
from ..writing import cannot_write, write_text
from .compute import JacobianView, ReportData, SampleView

#: What to run when matplotlib is missing.
INSTALL_HINT = 'pip install "attrcert[report]"'


def require_matplotlib() -> None:
    """Raise :class:`OptionError` (exit 2 in the CLI) with the install command when
    matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OptionError(f"attrcert report draws its figures with matplotlib, which is not "
                          f"installed: run {INSTALL_HINT}") from None


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
    flips = sum(1 for r in data.records if r.get("label_radius_violated")
                or r.get("label_preserved_violated"))
    label = (f" The label attack also changed the label where Proposition 1 (first-order) "
             f"said it could not on {flips} of {n} samples." if flips else "")
    if beaten or cos_beaten:
        return "bad", (f"The attack ({attack}, {budget}) exceeded the Euclidean bound {checked} "
                       f"on {beaten} of {n} samples and the cosine bound on {cos_beaten}: on "
                       "those samples the attribution is not locally linear on this ball and "
                       "the bound is no certificate. Use a smaller eps or a smoother model."
                       + label)
    return "bad" if flips else "note", (
        f"The attack ({attack}, {budget}) did not exceed {checked} or the cosine bound on "
        f"any of the {n} samples. That shows only that this attack did not beat the bounds, "
        "not that no perturbation can." + label)


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
                text = "held" if value else "VIOLATED" if r.get("violation") \
                    or r.get("violation_cosine") else "label changed"
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
    # matplotlib is imported here, and only here
    from .figures import deviation_histogram, jacobian_figure, sample_figure, sweep_figure

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(out, exc) from None
    figures: list[tuple[str, Path, str]] = []  # (section, file, caption)
    for i, view in enumerate(data.samples):
        path = out / f"sample_{i:03d}.png"
        sample_figure(view, data.eps, data.norm, data.method, path)
        figures.append(("samples", path, _sample_caption(view, data)))
    if data.jacobian.matrix is not None:
        path = out / "jacobian.png"
        jacobian_figure(data.jacobian, path)
        figures.append(("jacobian", path, _jacobian_caption(data.jacobian)))
    path = out / "bound_minus_attack.png"
    deviation_histogram(data.records, data.eps, data.norm, path)
    figures.append(("attack", path, _histogram_caption(data)))
    path = out / "sweep.png"
    sweep_figure(data.sweep, data.records, data.eps, data.norm, path)
    figures.append(("sweep", path, _sweep_caption(data)))
    document = {"config": config, "samples": data.records, "summary": summarize(data.records),
                "sweep": data.sweep.as_dict(),
                "jacobian": {"source": data.jacobian.source, "d": data.jacobian.d,
                             "formed": data.jacobian.matrix is not None,
                             "xi_max_full": finite_or_none(data.jacobian.xi_max_full),
                             "xi_max_record": data.jacobian.xi_max_record,
                             "reason": data.jacobian.reason},
                "figures": [p.name for _, p, _ in figures]}
    write_text(out / "report.json", dumps_strict(document, indent=2) + "\n")
    page = out / "report.html"
    write_text(page, _html(data, config, figures))
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
        "the bounds are estimates, not certificates (docs/math.md §6); the attack below "
        "checks them.")
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
