"""``attrcert smooth``: certified smoothed attributions of any model (docs/smoothing.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from ..distributed import select_shard
from ..document import Record, dumps_strict, format_value
from ..errors import OptionError
from ..run import Hooks, RunInputs, prepare_run
from ..smoothing import (
    CORRECTIONS,
    LimitOptions,
    PixelOptions,
    SmoothedSample,
    SmoothingOptions,
    parse_top_k,
    smooth_run,
)
from ..smoothing.options import check_selection
from ..writing import write_bytes
from .options import (
    MAX_INT,
    OUTPUTS,
    SHARED,
    CommandOptions,
    EpsOpt,
    Format,
    ImagesArg,
    Metric,
    ModelArg,
    common_options,
    finite,
    fraction,
)
from .output import emit, err, finish, gate
from .runner import run_command, writes_jsonl


def _correction(value: str) -> str:
    if value not in CORRECTIONS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(CORRECTIONS)}")
    return value

#: The shared options that smoothing uses: no Jacobian, so no spectral solver, tolerance,
#: rows per pass or samples per batch (images go one at a time; --samples-per-pass sizes
#: the passes).
SMOOTH_SHARED = {name: spec for name, spec in SHARED.items()
                 if name not in {"spectral", "tol", "chunk_size", "batch_size"}}
FOOTER = (
    "cos_lower: probabilistic certificate of the smoothed attribution h(x) = E g(x + eta), "
    "eta uniform in the l2 ball of radius r, not of g: with probability >= 1 - alpha over the "
    "noise, cos(h(x + delta), h(x)) >= cos_lower for every ||delta||_2 <= eps, any model. "
    "||h||_low: Bernstein / bounded-differences bound on the Monte Carlo estimate; dev: "
    "M V_U/V_S, a sure bound on ||h(x + delta) - h(x)|| (docs/smoothing.md).")


@dataclass(frozen=True)
class SmoothJob:
    """``smooth``: the smoothed attribution's certificate (``options``), with ``pixels`` the
    pixel certificate and with ``limits`` its tolerance forms; ``collect`` keeps each
    image's tensors."""

    options: SmoothingOptions
    pixels: PixelOptions | None
    limits: LimitOptions | None
    collect: Collector
    command: str = "smooth"

    def config(self) -> dict[str, Any]:
        options, pixels, limits = self.options, self.pixels, self.limits
        return {
            "eps": options.eps, "norm": "2", "radius": options.radius,
            "samples_per_image": options.samples, "alpha": options.alpha, "M": options.bound,
            "normalization": options.normalization, "noise_seed": options.seed,
            "spectral": None, "tol": None,
            "assumption": "probabilistic certificate of the smoothed attribution "
                          "(docs/smoothing.md)",
            **({"omega": limits.omega, "metric": limits.metric} if limits is not None
               else {}),
            **({"sigma": pixels.sigma, "top_k": list(pixels.top_k), "selection_samples":
                pixels.selection, "correction": pixels.correction} if pixels is not None
               else {}),
        }

    def run(self, inputs: RunInputs, hooks: Hooks) -> list[Record]:
        return smooth_run(prepare_run(inputs, None), self.options, pixels=self.pixels,
                          limits=self.limits, hooks=hooks, collect=self.collect)


class Collector:
    """Keeps each image's tensors (for --save-attributions and --report) by index."""

    def __init__(self) -> None:
        self.samples: dict[int, SmoothedSample] = {}

    def __call__(self, records: list[Record], sample: SmoothedSample) -> None:
        self.samples[int(records[0]["index"])] = sample


def _save(path: Path, collector: Collector, records: list[Record],
          config: dict[str, Any]) -> None:
    from safetensors.torch import save

    order = [int(r["index"]) for r in records]
    views = [collector.samples[i] for i in order]
    tensors = {"attributions": torch.stack([v.attribution for v in views]).contiguous(),
               "smoothed": torch.stack([v.smoothed for v in views]).contiguous()}
    maps = [v.certified for v in views]
    if all(m is not None for m in maps):
        tensors["certified_bins"] = torch.stack(maps).contiguous()  # type: ignore[arg-type]
    data = save(tensors, metadata={"sources": dumps_strict([r["source"] for r in records]),
                                   "config": dumps_strict(config)})
    write_bytes(path, data)


def _check_outputs(opts: CommandOptions, report: Path | None) -> None:
    """What the runner would refuse for --save-attributions (handled here), and --report."""
    if opts.save_attributions is not None:
        if select_shard(opts.shard) is not None:
            raise OptionError("--save-attributions does not work with --shard or torchrun "
                              "yet: run without them to save attributions")
        if writes_jsonl(opts) and opts.output is not None and opts.output.is_file() \
                and opts.output.stat().st_size > 0:
            raise OptionError(f"{opts.output} already holds samples and --save-attributions "
                              "needs all of them: delete it to start over")
    if report is not None:
        from ..report import require_matplotlib

        require_matplotlib()
        if report.exists() and not report.is_dir():
            raise OptionError(f"--report {report} is a file: give a folder")
        parent = report if report.exists() else report.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise OptionError(f"--report {report}: {parent} is not a writable folder")
        if select_shard(opts.shard) is not None:
            raise OptionError("--report needs every image: run without --shard or torchrun")


@common_options(SMOOTH_SHARED, OUTPUTS)
def smooth_command(
    model: ModelArg,
    images: ImagesArg,
    opts: CommandOptions,
    radius: Annotated[float, typer.Option(
        callback=finite, help="r: the noise is uniform in the l2 ball of this radius (pixel "
        "units). The certificate needs eps well below r / sqrt(d).", show_default=False)],
    samples: Annotated[int, typer.Option(
        min=2, max=10_000_000, help="n: noise samples per image (and as many again with "
        "--sigma).")] = 100,
    eps: EpsOpt = 0.1,
    alpha: Annotated[float, typer.Option(
        callback=fraction, help="Each certificate fails with probability at most alpha.")
    ] = 0.001,
    clip: Annotated[float | None, typer.Option(
        callback=finite, help="M: clip each attribution to norm M instead of scaling it to "
        "norm 1 (the default).", show_default=False)] = None,
    omega: Annotated[float | None, typer.Option(
        callback=finite, help="Also report eps_max (the largest eps) and radius_min (the "
        "smallest r) whose certificate meets this tolerance.", show_default=False)] = None,
    metric: Annotated[Metric, typer.Option(
        help="What omega bounds: a cosine distance in (0, 1], degrees, or ||h(x+delta) - "
        "h(x)||.")] = Metric.cosine,
    sigma: Annotated[float | None, typer.Option(
        callback=finite, help="Also certify each pixel's top-k bin under Gaussian noise of "
        "this standard deviation (Anani et al. 2025).", show_default=False)] = None,
    top_k: Annotated[str, typer.Option(
        help="The bins' percents for --sigma, e.g. 50,25,5.")] = "50,25,5",
    selection_samples: Annotated[int, typer.Option(
        min=1, max=MAX_INT, help="Of the --sigma samples, how many choose each pixel's "
        "bin (the rest test it).")] = 10,
    correction: Annotated[str, typer.Option(
        callback=_correction, help="Multiple-testing correction over the pixels of an image: "
        "holm or bonferroni.")] = "holm",
    seed: Annotated[int, typer.Option(min=0, max=2**63 - 1, help="Seed of the noise.")] = 0,
    samples_per_pass: Annotated[int | None, typer.Option(
        min=1, max=MAX_INT, help="Noisy copies per pass (default: from the memory "
        "budget).", show_default=False)] = None,
    report: Annotated[Path | None, typer.Option(
        help="Also write an HTML report with figures to this folder.",
        show_default=False)] = None,
    figures: Annotated[int, typer.Option(
        min=0, max=MAX_INT, help="Per-sample figures in --report.")] = 8,
    require_cos_above: Annotated[float | None, typer.Option(
        callback=finite, help="Exit 1 if any sample's cos_sim_lower is below this.",
        show_default=False)] = None,
    require_certified_fraction: Annotated[float | None, typer.Option(
        callback=finite, help="Exit 1 if any sample certifies fewer pixels than this "
        "fraction (needs --sigma).", show_default=False)] = None,
) -> None:
    """Certify smoothed attributions of any model (ReLU too), with probability 1 - alpha.

    h(x) = E g(x + eta), eta uniform in the l2 ball of radius r, each g scaled to norm 1:
    for every ||delta||_2 <= eps, cos(h(x + delta), h(x)) >= cos_sim_lower (Wang & Kong
    2024, with a concentration bound on the Monte Carlo estimate). With --sigma, also
    each pixel's certified top-k bin (Anani et al. 2025). A guarantee about the smoothed
    attribution, not about g: see docs/smoothing.md. --save-attributions writes g(x)
    (attributions), h_hat(x) (smoothed) and, with --sigma, the certified bin map
    (certified_bins, -1 = abstain).

    Example: attrcert smooth sample_models/digits_relu_maxpool.pt2 sample_models/digits
    --method saliency --radius 4 --eps 0.02 --samples 200 --sigma 0.25
    """
    options = SmoothingOptions(radius=radius, samples=samples, eps=eps, alpha=alpha, clip=clip,
                               seed=seed, samples_per_pass=samples_per_pass)
    pixels = None if sigma is None else PixelOptions(
        sigma=sigma, top_k=parse_top_k(top_k), selection=selection_samples,
        correction=correction)
    limits = None if omega is None else LimitOptions(omega, metric.value)
    check_selection(options, pixels)
    if require_certified_fraction is not None and pixels is None:
        raise OptionError("--require-certified-fraction needs --sigma (the pixel certificate)")
    _check_outputs(opts, report)
    collector = Collector()
    job = SmoothJob(options, pixels, limits, collector)
    config, records = run_command(replace(opts, save_attributions=None), job)
    if opts.save_attributions is not None:
        _save(opts.save_attributions, collector, records, config)
    if report is not None:
        from ..report.smooth_html import write_smoothing_report

        page = write_smoothing_report(report, config, records,
                                      [collector.samples.get(int(r["index"])) for r in records],
                                      figures=figures)
        if not opts.quiet:
            err.print(f"wrote {page}")
    _emit(opts, config, records, limits, pixels)
    finish([
        gate([f"{r['source']} ({format_value(r['cos_sim_lower'])})" for r in records
              if require_cos_above is not None and r["cos_sim_lower"] < require_cos_above],
             f"cos_sim_lower < {require_cos_above}"),
        gate([f"{r['source']} ({format_value(r.get('certified_fraction'))})" for r in records
              if require_certified_fraction is not None
              and r.get("certified_fraction", 0.0) < require_certified_fraction],
             f"certified pixel fraction < {require_certified_fraction}"),
    ])


def _emit(opts: CommandOptions, config: dict[str, Any], records: list[Record],
          limits: LimitOptions | None, pixels: PixelOptions | None) -> None:
    columns = [("source", "source"), ("predicted", "pred"), ("target", "y"),
               ("h_norm", "||h^||"), ("h_norm_lower", "||h||_low"),
               ("deviation_bound", "dev"), ("cos_sim_lower", "cos_lower"),
               ("angle_deg", "deg")]
    summary = [("cos_sim_lower", "cos_lower"), ("angle_deg", "angle (deg)"),
               ("h_norm_lower", "||h||_low"), ("h_norm", "||h^||")]
    if limits is not None:
        columns += [("eps_max", "eps_max"), ("radius_min", "r_min")]
        summary += [("eps_max", "eps_max"), ("radius_min", "r_min")]
    if pixels is not None:
        columns += [("certified_fraction", "pixels cert."),
                    ("certified_top_fraction", f"cert. top {pixels.top_k[-1]:g}%")]
        summary += [("certified_fraction", "pixels certified"),
                    ("certified_top_fraction", f"certified in top {pixels.top_k[-1]:g}%")]
    first = records[0] if records else {}
    title = (f"smoothed attributions, l2 ball, eps = {config['eps']}, r = {config['radius']}, "
             f"n = {config['samples_per_image']}, confidence {1 - config['alpha']:g}")
    footer = FOOTER
    if first.get("volume_ratio") is not None:
        footer += f" V_U/V_S = {first['volume_ratio']:.4g} (d = {first['d']})."
    if limits is not None:
        footer += (" eps_max: certified for every smaller eps too; r_min: the r that would "
                   "meet the tolerance if ||h||_low stayed the same (a plan: rerun with it).")
    if pixels is not None:
        tops = "/".join(f"{k:g}" for k in pixels.top_k)
        footer += (f"\npixels: Gaussian sigma = {pixels.sigma:g}, bins top {tops} %, "
                   f"{pixels.correction} over the pixels; a certified pixel keeps its bin of "
                   "the smoothed map for every ||delta||_2 <= eps (Anani et al. 2025).")
    emit(opts.format is Format.json, config, records, columns, title, summary, footer)
