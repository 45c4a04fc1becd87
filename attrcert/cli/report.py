"""``attrcert report``: an HTML report with figures (:mod:`attrcert.report`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import torch
import typer

from ..errors import OptionError
from ..perturbation import Perturbation, parse_norm
from ..run import Checked, RunInputs
from ..settings import LabelOptions
from ..smoothness import nonsmooth_message
from ..writing import stdout_to_stderr, write_stdout
from .bound import CertifyJob
from .collisions import refuse_collisions
from .files import input_files
from .inputs import attribution_spec, load_inputs, run_config, smoothing_notes
from .options import (
    ATTACK,
    MAX_INT,
    SHARED,
    CommandOptions,
    EpsOpt,
    ImagesArg,
    ModelArg,
    NormOpt,
    common_options,
)
from .output import err


@common_options(SHARED, ATTACK)
def report(
    model: ModelArg,
    images: ImagesArg,
    opts: CommandOptions,
    out: Annotated[Path, typer.Option(
        help="Folder for report.html (self-contained), its PNG figures and report.json; "
        "created if missing.", show_default=False)],
    eps: EpsOpt = 0.1,
    norm: NormOpt = "2",
    sweep: Annotated[str | None, typer.Option(
        help="Radii of the eps sweep, e.g. 0.02,0.05,0.1 (default: 6 equally spaced values "
        "up to --eps).", show_default=False)] = None,
    figures: Annotated[int, typer.Option(
        min=0, max=MAX_INT,
        help="Per-sample figures (the first N samples; the table lists all).")] = 8,
    jacobian_max_d: Annotated[int, typer.Option(
        min=0, max=MAX_INT, help="Form the first sample's d x d Jacobian for the |J| heatmap "
        "only up to this d.")] = 4096,
) -> None:
    """Write an HTML report: attributions, worst-case directions, |J|, bounds against an
    attack, and the bounds over an eps sweep. Needs matplotlib (pip install
    "attrcert[report]").

    Example: attrcert report sample_models/digits_softplus.pt2 sample_models/digits
    --eps 0.1 --out report
    """
    from ..report import ReportView, parse_sweep, report_run, require_matplotlib, write_report
    from ..run import prepare_run

    require_matplotlib()
    pert = Perturbation(parse_norm(norm), eps)
    view = ReportView(tuple(parse_sweep(sweep, eps)), figures, jacobian_max_d)
    entries = {**CertifyJob("report", pert, LabelOptions(), opts.attack).config(),
               "sweep": list(view.radii(eps))}
    solver = opts.solver()
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file: give a folder")
    parent = out if out.exists() else out.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OptionError(f"--out {out}: {parent} is not a writable folder")
    torch.set_num_threads(opts.threads)
    with stdout_to_stderr():  # what the model prints must not mix with the results
        loaded = load_inputs(opts)
    shown = min(figures, len(loaded.images.sources))
    written = ["report.html", "report.json", "jacobian.png", "bound_minus_attack.png",
               "sweep.png", *(f"sample_{i:03d}.png" for i in range(shown))]
    refuse_collisions([(f"--out's {name}", out / name) for name in written], input_files(opts))
    config = run_config(opts, loaded, solver, "report", entries)
    if loaded.nonsmooth:
        err.print(f"warning: {nonsmooth_message(loaded.nonsmooth)}")
    for note in smoothing_notes(opts, loaded):
        err.print(note)
    sources = loaded.images.sources
    inputs = RunInputs(loaded.model, loaded.images.tensor, attribution_spec(opts, loaded),
                       solver, checked=Checked(loaded.classes, tuple(loaded.nonsmooth)),
                       head=lambda index: {"source": sources[index]},
                       smoothed=loaded.smoothing.smoothed() if loaded.smoothing else None)
    with stdout_to_stderr():
        data = report_run(prepare_run(inputs, pert.norm), pert, opts.attack, view,
                          log=None if opts.quiet else err.print)
    page = write_report(out, data, config)
    write_stdout(f"wrote {page}\n")
