"""The command line: ``attrcert bound`` and ``attrcert max-eps`` (SPEC §7). No math here."""

from __future__ import annotations

import json
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from . import __version__
from .certify import certify, max_eps
from .errors import AttrcertError
from .loading import load_images, load_labels, load_model
from .results import Record, summarize
from .smoothness import NonSmoothModelWarning

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Upper bounds on how far a gradient attribution can move within an eps-ball "
    "(Wang & Kong, CVPR 2023). The bounds assume a locally linear attribution.",
)
err = Console(stderr=True, soft_wrap=True)


class Method(str, Enum):
    integrated_gradients = "integrated_gradients"
    saliency = "saliency"
    input_x_gradient = "input_x_gradient"


class Format(str, Enum):
    table = "table"
    json = "json"


class Metric(str, Enum):
    euclidean = "euclidean"
    cosine = "cosine"
    angle = "angle"


ModelArg = Annotated[Path, typer.Argument(help="torch.export .pt2 or TorchScript model file.")]
ImagesArg = Annotated[Path, typer.Argument(help="Folder of PNG/JPEG images or a tensor file.")]
NormOpt = Annotated[str, typer.Option(help="Norm of the perturbation: 2, inf, or any p >= 1.")]
MethodOpt = Annotated[Method, typer.Option(help="Attribution method.")]
StepsOpt = Annotated[int, typer.Option(help="Integrated-gradients steps m.")]
LabelsOpt = Annotated[Path | None, typer.Option(help="CSV name,label: targets instead of "
                                                     "the predictions.")]
ChunkOpt = Annotated[int | None, typer.Option(help="Jacobian rows per autograd pass.")]
BatchOpt = Annotated[int | None, typer.Option(help="Samples per batch.")]
FormatOpt = Annotated[Format, typer.Option(help="table for people, json for machines.")]


def _version(value: bool) -> None:
    if value:
        print(f"attrcert {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """attrcert: certify how far gradient attributions can move."""


def _run(func, model_path: Path, images_path: Path, labels: Path | None,
         **kwargs: Any) -> list[Record]:
    model = load_model(model_path)
    images = load_images(images_path)
    target = load_labels(labels, images.sources) if labels else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonSmoothModelWarning)
        records = func(model, images.tensor, target=target, **kwargs)
    for w in caught:
        if issubclass(w.category, NonSmoothModelWarning):
            err.print(f"[yellow]warning:[/yellow] {w.message}")
    for rec in records:
        rec["source"] = images.sources[rec["index"]]
    return records


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _emit(fmt: Format, config: dict[str, Any], records: list[Record],
          columns: list[tuple[str, str]], title: str) -> None:
    summary = summarize(records)
    if fmt is Format.json:
        json.dump({"config": config, "samples": records, "summary": summary}, sys.stdout,
                  allow_nan=False, indent=2)
        sys.stdout.write("\n")
        return
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for key, header in columns:
        table.add_column(header, justify="left" if key == "source" else "right", no_wrap=True)
    for rec in records:
        table.add_row(*(_fmt(rec.get(key)) for key, _ in columns))
    out = Console()
    if not out.is_terminal:  # piped or captured: no terminal to fit, keep columns whole
        out = Console(width=120)
    out.print(table)
    means = ", ".join(f"{header} {summary[key]['mean']:.3g}" for key, header in columns
                      if isinstance(summary.get(key), dict))
    out.print(f"{len(records)} samples; mean {means}.", highlight=False)
    out.print("Bounds assume a locally linear attribution (SPEC §6); no attack checked them.",
              highlight=False)


def _fail(exc: AttrcertError) -> None:
    err.print(f"error: {exc}", markup=False, highlight=False)
    raise typer.Exit(2)


@app.command()
def bound(
    model: ModelArg,
    images: ImagesArg,
    eps: Annotated[float, typer.Option(help="Radius of the perturbation ball (pixel units).")]
    = 0.1,
    norm: NormOpt = "2",
    method: MethodOpt = Method.integrated_gradients,
    steps: StepsOpt = 50,
    labels: LabelsOpt = None,
    chunk_size: ChunkOpt = None,
    batch_size: BatchOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Bound the attribution deviation of every image.

    Example: attrcert bound sample_models/digits_softplus.pt2 sample_models/digits --eps 0.1
    """
    try:
        records = _run(certify, model, images, labels, eps=eps, norm=norm,
                       method=method.value, steps=steps, chunk_size=chunk_size,
                       batch_size=batch_size)
    except AttrcertError as exc:
        _fail(exc)
    config = {"command": "bound", "model": str(model), "images": str(images), "eps": eps,
              "norm": norm, "method": method.value, "steps": steps}
    columns = [("source", "source"), ("predicted", "pred"), ("target", "y"),
               ("attr_norm", "||g||"), ("xi_max", "xi_max"), ("T_e", "T_e"),
               ("T_e_prime", "T'_e"), ("T_c_deg", "T_c deg"),
               ("label_preserved", "Prop.1"), ("label_radius", "radius")]
    _emit(format, config, records, columns, f"attribution bounds, l{norm} eps={eps}")


@app.command("max-eps")
def max_eps_command(
    model: ModelArg,
    images: ImagesArg,
    omega: Annotated[float, typer.Option(help="Tolerance on the attribution deviation.")],
    metric: Annotated[Metric, typer.Option(help="euclidean, cosine distance, or angle "
                                                "in degrees.")] = Metric.euclidean,
    norm: NormOpt = "2",
    modified: Annotated[bool, typer.Option(help="Use T'_e (l2 only), solved by "
                                                "bisection.")] = False,
    method: MethodOpt = Method.integrated_gradients,
    steps: StepsOpt = 50,
    labels: LabelsOpt = None,
    chunk_size: ChunkOpt = None,
    batch_size: BatchOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """The largest eps whose bound stays within --omega, per image.

    Example: attrcert max-eps sample_models/digits_softplus.pt2 sample_models/digits --omega 0.1
    """
    try:
        records = _run(max_eps, model, images, labels, omega=omega, metric=metric.value,
                       norm=norm, modified=modified, method=method.value, steps=steps,
                       chunk_size=chunk_size, batch_size=batch_size)
    except AttrcertError as exc:
        _fail(exc)
    config = {"command": "max-eps", "model": str(model), "images": str(images),
              "omega": omega, "metric": metric.value, "norm": norm, "modified": modified,
              "method": method.value, "steps": steps}
    columns = [("source", "source"), ("predicted", "pred"), ("attr_norm", "||g||"),
               ("xi_max", "xi_max"), ("eps_max", "eps_max")]
    _emit(format, config, records, columns, f"largest eps for {metric.value} <= {omega}")
