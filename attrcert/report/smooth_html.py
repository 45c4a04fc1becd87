"""``attrcert smooth --report DIR``: the page. :func:`write_smoothing_report` draws the
figures (:mod:`attrcert.report.smooth_figures`, matplotlib, imported only here), writes
``report.json`` and a self-contained ``report.html`` (PNGs as data URIs, CSS inline, no
scripts), as ``attrcert report`` does for the bounds.

The page says what the numbers are: a probabilistic certificate of the smoothed
attribution, not of ``g``, at the stated confidence.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..document import Record, dumps_strict, format_value, summarize
from ..smoothing import PIXEL_ASSUMPTION, SMOOTHING_ASSUMPTION, SmoothedSample
from ..writing import cannot_write, write_text
from .html import CSS, require_matplotlib

__all__ = ["write_smoothing_report"]

COLUMNS = [("source", "source"), ("predicted", "pred"), ("target", "y"),
           ("h_norm", "||h^||"), ("estimate_error", "error"), ("h_norm_lower", "||h||_low"),
           ("volume_ratio", "V_U/V_S"), ("deviation_bound", "dev"),
           ("cos_sim_lower", "cos_lower"), ("angle_deg", "deg"),
           ("cos_to_estimate_lower", "cos to h^"), ("eps_max", "eps_max"),
           ("radius_min", "r_min"), ("certified_fraction", "pixels cert.")]


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def _table(records: Sequence[Record]) -> str:
    shown = [(k, h) for k, h in COLUMNS if any(r.get(k) is not None for r in records)]
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in shown)
    rows = []
    for r in records:
        cells = "".join(f'<td class="{"l" if k == "source" else ""}">'
                        f"{html.escape(format_value(r.get(k), 4))}</td>" for k, _ in shown)
        cls = ' class="violated"' if r.get("vacuous") else ""
        rows.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _summary(records: Sequence[Record]) -> str:
    summary = summarize(records)
    keys = [("cos_sim_lower", "cos_lower"), ("angle_deg", "angle (deg)"),
            ("h_norm", "||h^||"), ("h_norm_lower", "||h||_low"),
            ("deviation_bound", "dev = M V_U/V_S"), ("eps_max", "eps_max"),
            ("radius_min", "r_min"), ("certified_fraction", "pixels certified"),
            ("certified_top_fraction", "certified in the top bin"), ("seconds", "seconds")]
    rows = "".join(
        f'<tr><td class="l">{html.escape(h)}</td>'
        + "".join(f"<td>{format_value(summary[k][s], 4)}</td>" for s in ("mean", "median", "max"))
        + "</tr>" for k, h in keys if isinstance(summary.get(k), dict))
    return ('<table><tr><th class="l"></th><th>mean</th><th>median</th><th>max</th></tr>'
            f"{rows}</table>")


def write_smoothing_report(out: Path, config: dict[str, Any], records: Sequence[Record],
                           samples: Sequence[SmoothedSample | None], *,
                           figures: int = 8) -> Path:
    """Draw the figures into ``out``, write ``out/report.json`` and ``out/report.html``;
    ``samples[i]`` are the tensors of ``records[i]`` (``None``: resumed from a file, no
    figure). Returns the page's path."""
    require_matplotlib()
    from .smooth_figures import (
        certified_fraction_figure,
        cosine_curve_figure,
        smoothed_sample_figure,
    )

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(out, exc) from None
    drawn: list[tuple[str, Path, str]] = []
    pairs = [(r, s) for r, s in zip(records, samples, strict=True) if s is not None]
    for i, (rec, sample) in enumerate(pairs[:figures]):
        path = out / f"smoothed_{i:03d}.png"
        smoothed_sample_figure(sample, rec, path)
        drawn.append(("samples", path, f"{rec['source']}: the image, its attribution g, the "
                      f"smoothed attribution h^ from {rec['samples']} noise samples"
                      + (", the top-k bins of g and the certified bins (grey: abstain)"
                         if sample.certified is not None else "") + "."))
    if records:
        path = out / "cosine_vs_eps.png"
        cosine_curve_figure(records, path)
        drawn.append(("curve", path, "The certified lower bound on cos(h(x + delta), h(x)) "
                      "over eps, from the same estimate (one line per sample): valid for "
                      "every eps at once, at the run's confidence."))
    if records and all(r.get("certified_counts") is not None for r in records):
        path = out / "certified_pixels.png"
        certified_fraction_figure(records, path)
        drawn.append(("pixels", path, "The share of each image's pixels certified in each "
                      "top-k bin, and the share that abstain."))
    document = {"config": config, "samples": list(records), "summary": summarize(records),
                "figures": [p.name for _, p, _ in drawn]}
    write_text(out / "report.json", dumps_strict(document, indent=2) + "\n")
    page = out / "report.html"
    write_text(page, _page(config, records, drawn))
    return page


def _page(config: dict[str, Any], records: Sequence[Record],
          drawn: list[tuple[str, Path, str]]) -> str:
    esc = html.escape

    def section(name: str) -> str:
        return "".join(f"<figure>{_img(p)}<figcaption>{esc(c)}</figcaption></figure>"
                       for s, p, c in drawn if s == name)

    vacuous = sum(1 for r in records if r.get("vacuous"))
    pixels = ""
    if "sigma" in config:
        pixels = (f'<p class="note"><b>Pixels.</b> {esc(PIXEL_ASSUMPTION)}. Gaussian '
                  f"sigma = {config['sigma']:g}, bins: top {esc(str(config['top_k']))}%, "
                  f"{esc(str(config['correction']))} correction.</p>")
    vac = (f'<p class="warn">{vacuous} of {len(records)} certificates are vacuous (the '
           "smoothed attribution could turn by any angle): raise --radius or --samples, or "
           "lower --eps.</p>") if vacuous else ""
    config_rows = "".join(f'<tr><td class="l">{esc(str(k))}</td><td class="l">'
                          f"{esc(v if isinstance(v, str) else dumps_strict(v))}</td></tr>"
                          for k, v in config.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>attrcert smooth: {esc(str(config.get('model', '')))}</title>
<style>{CSS}</style></head><body>
<h1>attrcert smooth</h1>
<p>{esc(str(config.get('model', '')))} on {esc(str(config.get('images', '')))}:
{len(records)} samples, {esc(str(config.get('method', '')))} attributions, smoothed over
n = {config.get('samples_per_image')} noise samples uniform in the l2 ball of radius
r = {config.get('radius')}; certified at eps = {config.get('eps')} with confidence
{1 - float(config.get('alpha', 0)):g} (pixel units of the images as loaded, [0, 1]).</p>
<h2>What the numbers mean</h2>
<p class="note"><b>Certificate.</b> {esc(SMOOTHING_ASSUMPTION)}. For every
||delta||_2 &lt;= eps: ||h(x + delta) - h(x)|| &lt;= dev = M V_U/V_S (surely) and
cos(h(x + delta), h(x)) &gt;= cos_lower (with probability &gt;= 1 - alpha, through
||h(x)|| &gt;= ||h||_low). It says nothing about g itself, whose first-order bounds are
<code>attrcert bound</code>'s.</p>
{pixels}{vac}
<h2>Summary</h2>
{_summary(records)}
<h2>Attributions, smoothed attributions and certified pixels</h2>
{section("samples")}
<h2>The certificate over eps</h2>
{section("curve")}
{section("pixels")}
<h2>Every sample</h2>
{_table(records)}
<h2>Configuration</h2>
<table>{config_rows}</table>
<p>Written by attrcert {esc(str(config.get('attrcert', '')))}; the numbers are in
<code>report.json</code>.</p>
</body></html>
"""
