"""The command line (SPEC §7): ``bound``, ``max-eps`` and ``inspect``. No math here.

Exit status: 0 all fine; 1 a ``--fail-*`` / ``--require-*`` gate failed; 2 bad usage or
bad input (one line on stderr, no traceback); 130 interrupted.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from . import __version__
from .certify import Analysis, certify, check_tolerance, max_eps
from .distributed import (
    RankFailed,
    Shard,
    load_shard_images,
    merge_shards,
    rank_device,
    rank_file,
    run_torchrun,
    secondary_rank,
    select_shard,
    shard_image_size,
    write_sidecar,
)
from .errors import AttrcertError, InputError, OptionError
from .loading import (
    Images,
    UntrustedPickleWarning,
    first_image_size,
    infer_input_channels,
    load_images,
    load_labels,
    load_model,
    sniff_model,
    with_normalization,
)
from .memory import parse_size
from .perturbation import Perturbation, parse_norm
from .results import (
    ASSUMPTION,
    OUTPUT_SUFFIXES,
    JsonlAppender,
    Record,
    ResumeError,
    config_hash,
    document,
    dumps_strict,
    finished_records,
    format_value,
    summarize,
    write_document,
)
from .smoothness import NonSmoothModelWarning, find_nonsmooth, nonsmooth_message

try:  # typer < 0.20 uses click itself; later releases vendor it as TyperException
    from click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - depends on the installed typer
    _ClickException = typer.exceptions.TyperException  # type: ignore[misc,assignment]
USAGE_ERRORS: tuple[type[Exception], ...] = (_ClickException,
                                             typer.exceptions.TyperException)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Upper bounds on how far a gradient attribution can move when the input is "
    "perturbed within an eps-ball (Wang & Kong, CVPR 2023). The bounds assume a locally "
    "linear attribution: they are estimates, not guarantees, for non-smooth models.",
)
err = Console(stderr=True, soft_wrap=True, highlight=False)


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


class DType(str, Enum):
    float32 = "float32"
    float64 = "float64"


class LabelGradient(str, Enum):
    completeness = "completeness"
    attribution = "attribution"


# --- shared options --------------------------------------------------------------------------

ModelArg = Annotated[Path, typer.Argument(
    help="Model: torch.export .pt2, TorchScript .pt, or weights (safetensors / state dict) "
    "with --arch.", show_default=False)]
ImagesArg = Annotated[Path, typer.Argument(
    help="Images: a folder of PNG/JPEG (sorted by name) or one tensor file (.pt, .npy, "
    ".safetensors) of shape (N, C, H, W) or (C, H, W), values in [0, 1].",
    show_default=False)]
NormOpt = Annotated[str, typer.Option(help="Norm of the perturbation: 2, inf, or any p >= 1.")]
MethodOpt = Annotated[Method, typer.Option(help="Attribution method.")]
StepsOpt = Annotated[int, typer.Option(min=1, help="Integrated-gradients steps m (Eq. 40).")]
BaselineOpt = Annotated[str, typer.Option(
    help="Integrated-gradients baseline: zero, or a tensor file of one image.")]
LabelsOpt = Annotated[Path | None, typer.Option(
    help="CSV with columns name,label: target classes instead of the predictions.")]
DeviceOpt = Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, "
                                             "cuda:N or mps.")]
DTypeOpt = Annotated[DType, typer.Option(help="Computation precision.")]
ChunkOpt = Annotated[int | None, typer.Option(
    min=1, help="Jacobian rows per autograd pass (memory cap; GPU strategy).")]
BatchOpt = Annotated[int | None, typer.Option(
    min=1, help="Samples per batch (default: 1 on CPU, 16 on GPU).")]
OutputOpt = Annotated[Path | None, typer.Option(
    help="Also write the results to FILE.json, FILE.jsonl (a record per line as each "
    "sample finishes) or FILE.csv.")]
FormatOpt = Annotated[Format, typer.Option(
    help="table for people; json prints one JSON document on stdout and nothing else.")]
SaveAttrOpt = Annotated[Path | None, typer.Option(
    help="Save each sample's attribution g and worst-case direction v_max to "
    "FILE.safetensors.")]
MeanOpt = Annotated[str | None, typer.Option(
    help="Per-channel mean, e.g. 0.485,0.456,0.406: folded into the model so eps stays in "
    "pixel units.")]
StdOpt = Annotated[str | None, typer.Option(help="Per-channel std, e.g. 0.229,0.224,0.225.")]
SizeOpt = Annotated[tuple[int, int] | None, typer.Option(
    help="Resize images to H W.", show_default=False)]
ArchOpt = Annotated[str | None, typer.Option(
    help="module:factory (or file.py:factory) building the model for a weights file.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-pickle", help="Allow a pickled model: loading it RUNS CODE from the file.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
ShardOpt = Annotated[str | None, typer.Option(
    help="I/N: certify only shard I of N (the images i with i % N == I) into --output "
    "FILE.jsonl, for job arrays; join the shards with 'attrcert merge'. Under torchrun each "
    "rank takes its shard by itself.", show_default=False)]


class Spectral(str, Enum):
    auto = "auto"
    full = "full"
    iterative = "iterative"


SpectralOpt = Annotated[Spectral, typer.Option(
    help="full: form each Jacobian (needed for Theorem 2's l-inf bound); iterative: "
    "xi_max and v_max matrix-free (l-inf then uses Corollary 1); auto: iterative except "
    "l-inf up to d = 4096.")]
TolOpt = Annotated[float, typer.Option(help="Relative tolerance of the iterative solver.")]
MemoryOpt = Annotated[str | None, typer.Option(
    help="Memory the autograd passes may use, e.g. 4GB or 512MiB (default: half of the "
    "device's free memory). Picks batch and chunk sizes; on a GPU an out-of-memory pass is "
    "retried with half the size.", show_default=False)]
ThreadsOpt = Annotated[int, typer.Option(
    min=1, help="CPU threads for torch. 1 costs little for small models and avoids a "
    "3-5x slowdown when other processes share the cores (BENCHMARKS.md); raise it for "
    "large models on a quiet machine.")]
LabelGradOpt = Annotated[LabelGradient, typer.Option(
    help="Proposition 1's a_y': from class gradients (completeness, SPEC §4) or through the "
    "attribution (one second-order pass per class).")]


@dataclass
class Common:
    """The options every command shares, gathered once."""

    model: Path
    images: Path
    method: Method = Method.integrated_gradients
    steps: int = 50
    baseline: str = "zero"
    labels: Path | None = None
    device: str = "auto"
    dtype: DType = DType.float32
    chunk_size: int | None = None
    batch_size: int | None = None
    output: Path | None = None
    format: Format = Format.table
    save_attributions: Path | None = None
    mean: str | None = None
    std: str | None = None
    size: tuple[int, int] | None = None
    arch: str | None = None
    trust_pickle: bool = False
    quiet: bool = False
    spectral: Spectral = Spectral.auto
    tol: float = 1e-4
    threads: int = 1
    memory_budget: str | None = None
    extra_config: dict[str, Any] = field(default_factory=dict)
    shard: str | None = None

    def __post_init__(self) -> None:
        if self.memory_budget is not None:
            parse_size(self.memory_budget)  # a bad size fails before anything is loaded


@dataclass
class Loaded:
    model: torch.nn.Module
    images: Images
    target: torch.Tensor | None
    baseline: torch.Tensor | None
    nonsmooth: list[str]
    #: With a shard (``--shard``, torchrun): the indices among all images of the rows of
    #: ``images.tensor``, which holds only the shard; ``images.sources`` still names all.
    rows: list[int] | None = None


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise OptionError(f"--{name} {text!r}: give numbers separated by commas") from None
    if not values:
        raise OptionError(f"--{name} is empty: give one number per channel")
    return values


def _check_output_paths(opts: Common) -> None:
    if opts.output is not None:
        _check_writable(opts.output, "--output")
        if opts.output.suffix.lower() not in OUTPUT_SUFFIXES:
            raise OptionError(f"--output {opts.output}: use a .json, .jsonl or .csv file")
    if opts.save_attributions is not None:
        _check_writable(opts.save_attributions, "--save-attributions")
        if opts.save_attributions.suffix.lower() != ".safetensors":
            raise OptionError("--save-attributions needs a .safetensors file name")


def _check_writable(path: Path, flag: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OptionError(f"{flag} {path} is a folder: give a file name")
    if not parent.is_dir():
        raise OptionError(f"{flag} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OptionError(f"{flag} {path} is not writable")


def _folder_channels(model: torch.nn.Module, images: Path,
                     size: tuple[int, int] | None, shard: Shard | None = None) -> int | None:
    """For a folder of images, the channel count the model accepts (1 or 3, by a trial
    forward at the images' size, read from the shard's first image with a shard);
    ``None`` for tensor files, which keep their own."""
    if not images.is_dir():
        return None
    height, width = size or (first_image_size(images) if shard is None
                             else shard_image_size(images, shard))
    channels = infer_input_channels(model, height, width)
    if channels is None:
        raise InputError(f"the model accepts neither 1- nor 3-channel images of "
                         f"{height}x{width}: pass --size H W or a tensor file")
    return channels


def _load_model(path: Path, arch: str | None, trust_pickle: bool) -> torch.nn.Module:
    """:func:`load_model`, with its warnings (``--trust-pickle``) as one line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UntrustedPickleWarning)
        model = load_model(path, arch=arch, trust_pickle=trust_pickle)
    for w in caught:
        err.print(f"warning: {w.message}")
    return model


def _load(opts: Common, shard: Shard | None = None) -> Loaded:
    """Model, images, labels and baseline, checked against each other; with ``shard``,
    only the shard's images (:func:`attrcert.distributed.load_shard_images`)."""
    _check_output_paths(opts)
    model = _load_model(opts.model, opts.arch, opts.trust_pickle)
    mean, std = _floats(opts.mean, "mean"), _floats(opts.std, "std")
    if (mean is None) != (std is None):
        raise OptionError("give --mean and --std together")
    if mean is not None and std is not None:
        model = with_normalization(model, mean, std)
    channels = _folder_channels(model, opts.images, opts.size, shard)
    rows = None
    if shard is None:
        images = load_images(opts.images, channels=channels, size=opts.size)
    else:
        images, rows = load_shard_images(opts.images, shard, channels=channels, size=opts.size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = model(images.tensor[:1])
        except Exception as exc:  # the model's own error: say which shape it was given
            raise InputError(f"the model fails on images of shape "
                             f"{tuple(images.tensor.shape[1:])}: {exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if out.ndim != 2 or out.shape[0] != 1:
        raise InputError(f"the model returned shape {tuple(out.shape)} for one image: "
                         "attrcert needs logits of shape (N, k)")
    target = (load_labels(opts.labels, images.sources, num_classes=int(out.shape[1]))
              if opts.labels else None)
    baseline = None
    if opts.baseline != "zero":
        if opts.method is not Method.integrated_gradients:
            raise OptionError("--baseline applies only to --method integrated_gradients")
        base = load_images(Path(opts.baseline), size=opts.size, channels=channels).tensor
        if base.shape[0] != 1 or base.shape[1:] != images.tensor.shape[1:]:
            raise InputError(f"--baseline {opts.baseline} has shape {tuple(base.shape)}: "
                             f"need one image of shape {tuple(images.tensor.shape[1:])}")
        baseline = base[0]
    nonsmooth = find_nonsmooth(model, images.tensor[:1])
    return Loaded(model, images, target, baseline, nonsmooth, rows)


def _config(opts: Common, command: str, loaded: Loaded) -> dict[str, Any]:
    return {
        "command": command,
        "attrcert": __version__,
        "torch": torch.__version__,
        "model": str(opts.model),
        "model_format": sniff_model(opts.model),
        "images": str(opts.images),
        "samples": len(loaded.images.sources),
        "input_shape": list(loaded.images.tensor.shape[1:]),
        "method": opts.method.value,
        "steps": opts.steps if opts.method is Method.integrated_gradients else None,
        "baseline": opts.baseline if opts.method is Method.integrated_gradients else None,
        "labels": str(opts.labels) if opts.labels else None,
        "mean": _floats(opts.mean, "mean"),
        "std": _floats(opts.std, "std"),
        "device": opts.device,
        "dtype": opts.dtype.value,
        "spectral": opts.spectral.value,
        "tol": opts.tol,
        "smooth": not loaded.nonsmooth,
        "nonsmooth_ops": loaded.nonsmooth,
        "assumption": ASSUMPTION,
        "attack_checked": False,
        **opts.extra_config,
    }


class Reporter:
    """Progress bar with ETA on stderr (only on a terminal, not with --quiet), streaming
    of finished samples to JSONL, and collection of g / v_max for --save-attributions."""

    def __init__(self, opts: Common, loaded: Loaded, label: str, todo: list[int],
                 digest: str) -> None:
        self.opts, self.loaded, self.todo, self.digest = opts, loaded, todo, digest
        self.progress: Progress | None = None
        if not opts.quiet and err.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=err, transient=True)
            self.samples = self.progress.add_task(label, total=len(todo))
            self.rows = self.progress.add_task("  Jacobian rows", total=1)
        self.appender = JsonlAppender(opts.output) if _jsonl(opts) else None
        self.attrs: list[torch.Tensor] = []
        self.directions: list[torch.Tensor] = []
        self.finished = 0
        self.stop_requested = False

    def __enter__(self) -> Reporter:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.appender is not None:
            self.appender.close()

    def rows_done(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.rows, completed=done, total=total)

    def batch_done(self, records: list[Record], analysis: Analysis) -> None:
        for rec in records:  # the index among all images, "source" right after it
            fields = [(k, v) for k, v in rec.items() if k != "index"]
            index = self.todo[rec["index"]]
            rec.clear()
            rec.update(index=index, source=self.loaded.images.sources[index],
                       config_hash=self.digest)
            rec.update(fields)
            if self.appender is not None:
                self.appender.append(rec)
        self.finished += len(records)
        if self.opts.save_attributions is not None:
            self.attrs.append(analysis.attr.float())
            self.directions.append(analysis.spectrum.v_max.float())
        if self.progress is not None:
            self.progress.advance(self.samples, len(records))
        if self.stop_requested:
            raise Interrupted(self.finished)

    def request_stop(self, signum: int, frame: object) -> None:
        """First Ctrl-C: finish the sample in flight, then stop; a second one aborts."""
        self.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        err.print("stopping after the current sample (Ctrl-C again to abort now)")

    def save_attributions(self, config: dict[str, Any]) -> None:
        if self.opts.save_attributions is None:
            return
        from safetensors.torch import save_file

        shape = (-1, *self.loaded.images.tensor.shape[1:])
        save_file({"attributions": torch.cat(self.attrs).reshape(shape).contiguous(),
                   "v_max": torch.cat(self.directions).reshape(shape).contiguous()},
                  str(self.opts.save_attributions),
                  metadata={"sources": dumps_strict(self.loaded.images.sources),
                            "config": dumps_strict(config)})


class Interrupted(Exception):
    """Ctrl-C was pressed; ``finished`` samples were completed before stopping (and are in
    ``output`` when that is a JSONL file)."""

    def __init__(self, finished: int, output: Path | None = None) -> None:
        super().__init__(finished)
        self.finished, self.output = finished, output


def _jsonl(opts: Common) -> bool:
    return opts.output is not None and opts.output.suffix.lower() == ".jsonl"


def _run(opts: Common, command: str, func: Callable[..., list[Record]],
         **kwargs: Any) -> tuple[dict[str, Any], list[Record]]:
    """Load, resume from ``--output FILE.jsonl`` if it holds finished samples of the same
    configuration, certify the rest (each appended and fsynced as it finishes), write.

    With ``--shard I/N`` only that shard (into its ``--output FILE.jsonl``); under torchrun
    each rank its shard, gathered on every rank, rank 0 writing ``--output``
    (:mod:`attrcert.distributed`)."""
    torch.set_num_threads(opts.threads)
    shard = select_shard(opts.shard)
    if shard is not None and opts.save_attributions is not None:
        raise OptionError("--save-attributions does not work with --shard or torchrun yet: "
                          "run without them to save attributions")
    if shard is not None and not shard.torchrun and not _jsonl(opts):
        raise OptionError("--shard needs --output FILE.jsonl: the shard file that "
                          "'attrcert merge' joins")
    if shard is None or not shard.torchrun:
        config, _, records = _run_shard(opts, command, func, shard, opts.device, **kwargs)
        return config, records
    device = rank_device(opts.device, shard)
    try:
        config, records = run_torchrun(
            shard, device,
            lambda: _run_shard(opts, command, func, shard, device, **kwargs), Interrupted)
    except RankFailed as exc:
        if exc.exit_code != 130:
            err.print(f"error: {exc.message}")
        elif opts.output is not None:
            err.print(f"interrupted: finished samples are in the per-rank files beside "
                      f"{opts.output}; run the same command again to resume")
        else:
            err.print("interrupted: finished samples were not saved: use --output FILE to "
                      "keep them and resume")
        raise typer.Exit(exc.exit_code) from None
    if shard.index == 0 and opts.output is not None:
        write_document(opts.output, config, records)
    return config, records


def _run_shard(opts: Common, command: str, func: Callable[..., list[Record]],
               shard: Shard | None, device: str,
               **kwargs: Any) -> tuple[dict[str, Any], str, list[Record]]:
    """:func:`_run` for one process: all images, or one shard of them (its records only).
    Returns the configuration, its hash and the records."""
    loaded = _load(opts, shard)
    config = _config(opts, command, loaded)
    digest = config_hash(config, loaded.images.sources)
    n = len(loaded.images.sources)
    local = opts  # where this process streams its records: torchrun ranks, a file each
    if shard is not None and shard.torchrun and opts.output is not None:
        local = replace(opts, output=rank_file(opts.output, shard))
    try:
        done = finished_records(local.output, digest) if _jsonl(local) else {}
    except ResumeError as exc:
        raise InputError(str(exc)) from None
    mine = range(n) if shard is None else shard.indices(n)
    foreign = sorted(set(done) - set(mine))
    if foreign:
        raise InputError(f"{local.output} holds sample {foreign[0]}, which is not in shard "
                         f"{shard.label if shard else ''}: use another --output file per shard")
    todo = [i for i in mine if i not in done]
    if shard is not None and _jsonl(local):
        write_sidecar(local.output, config, digest, shard)
    if shard is not None and not shard.torchrun:
        config = {**config, "shard": shard.label}  # after hashing: the hash is the whole run's
    if done:
        if opts.save_attributions is not None:
            raise OptionError(f"{opts.output} already holds {len(done)} samples and "
                              "--save-attributions needs all of them: delete it to start over")
        err.print(f"resuming: {len(done)} of {len(mine)} samples already in {local.output}")
    if loaded.nonsmooth:
        err.print(f"warning: {nonsmooth_message(loaded.nonsmooth)}")
    label = "certifying" if command in {"bound", "attack"} else "solving eps_max"
    new: list[Record] = []
    rows = todo  # the rows of loaded.images.tensor to certify
    if loaded.rows is not None:
        position = {index: row for row, index in enumerate(loaded.rows)}
        rows = [position[i] for i in todo]
    with Reporter(local, loaded, label, todo, digest) as reporter, warnings.catch_warnings():
        warnings.simplefilter("ignore", NonSmoothModelWarning)  # reported once, above
        previous_handler = signal.signal(signal.SIGINT, reporter.request_stop)
        try:
            if todo:
                target = loaded.target[todo] if loaded.target is not None else None
                new = func(
                    loaded.model, loaded.images.tensor[rows], method=opts.method.value,
                    steps=opts.steps, baseline=loaded.baseline, target=target,
                    chunk_size=opts.chunk_size, batch_size=opts.batch_size,
                    dtype=opts.dtype.value, device=device, spectral=opts.spectral.value,
                    tol=opts.tol, memory_budget=opts.memory_budget,
                    progress=reporter.rows_done,
                    on_batch=reporter.batch_done, **kwargs)
        except Interrupted as exc:
            exc.finished += len(done)
            exc.output = local.output
            raise
        finally:
            signal.signal(signal.SIGINT, previous_handler)
    records = sorted([*done.values(), *new], key=lambda r: r["index"])
    reporter.save_attributions(config)
    if local.output is not None and not _jsonl(local):
        write_document(local.output, config, records)
    return config, digest, records


# --- output ---------------------------------------------------------------------------------

def _stdout_console() -> Console:
    """The terminal as it is; 120 columns when piped, so that tables keep whole numbers."""
    out = Console(highlight=False, soft_wrap=True)
    return out if out.is_terminal else Console(width=120, highlight=False, soft_wrap=True)


def _emit(opts: Common, config: dict[str, Any], records: list[Record],
          columns: Sequence[tuple[str, str]], title: str,
          summary_keys: Sequence[tuple[str, str]], footer: str) -> None:
    if secondary_rank():  # torchrun: rank 0 prints the whole run
        return
    if opts.format is Format.json:
        sys.stdout.write(dumps_strict(document(config, records), indent=2) + "\n")
        return
    out = _stdout_console()
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for key, header in columns:
        table.add_column(header, justify="left" if key == "source" else "right", no_wrap=True)
    for rec in records:
        table.add_row(*(format_value(rec.get(key)) for key, _ in columns))
    out.print(table)
    summary = summarize(records)
    stats = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("", "mean", "median", "max"):
        stats.add_column(header, justify="right")
    for key, header in summary_keys:
        if isinstance(summary.get(key), dict):
            s = summary[key]
            stats.add_row(header, *(format_value(s[stat], 4) for stat in ("mean", "median", "max")))
    lines = [f"{summary['samples']} samples"]
    if "vacuous_cosine" in summary:
        lines.append(f"vacuous cosine bounds: {summary['vacuous_cosine']}")
    if "label_preserved_fraction" in summary:
        lines.append(f"label preserved (Prop. 1): {100 * summary['label_preserved_fraction']:.0f}%")
    if "violations" in summary:
        lines.append(f"attack exceeded the Euclidean bound: {summary['violations']} "
                     f"({100 * summary['violation_fraction']:.0f}%); the cosine bound: "
                     f"{summary['cosine_violations']}")
    wrong = sum(1 for r in records if r["target"] != r["predicted"])
    if wrong:
        lines.append(f"target != prediction: {wrong} (label radius 0)")
    out.print(Panel(Group(stats, Text("\n".join(lines))), title="summary", expand=False))
    out.print(footer)


def _gate(failures: list[str], what: str) -> str | None:
    if not failures:
        return None
    shown = ", ".join(failures[:8]) + (f" and {len(failures) - 8} more" if len(failures) > 8
                                       else "")
    return f"gate failed: {what} for {len(failures)} sample(s): {shown}"


def _finish(messages: list[str | None]) -> None:
    failed = [m for m in messages if m]
    for message in failed:
        err.print(message)
    if failed:
        raise typer.Exit(1)


# --- commands ---------------------------------------------------------------------------------

def _version(value: bool) -> None:
    if value:
        print(f"attrcert {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """attrcert: certify how far gradient attributions can move."""


EpsOpt = Annotated[float, typer.Option(help="Radius of the perturbation ball, in pixel units "
                                             "of the images as loaded ([0, 1]).")]
AttackStepsOpt = Annotated[int, typer.Option(min=1, help="Steps of each attack run.")]
RestartsOpt = Annotated[int, typer.Option(min=1, help="Random restarts of each attack run.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the attacks' random starts.")]
RequireVerifiedOpt = Annotated[bool, typer.Option(
    help="Exit 1 if the attack exceeded a bound on any sample.")]
LABEL_COLUMNS = [("label_preserved", "Prop.1"), ("label_radius", "radius")]
ATTACK_COLUMNS = [("T_e_hat", "T_e^"), ("attack_ratio", "T_e^/bound"),
                  ("T_c_hat_deg", "T_c^ deg"), ("eta_attack", "eta"), ("verdict", "attack")]


def _attack_fields(records: list[Record]) -> None:
    """Table-only helpers: the attacked deviation over the bound it was checked against."""
    for r in records:
        if r.get("attack_checked"):
            bound = r["T_e_prime"] if r["T_e_prime"] is not None else r["T_e"]
            r["attack_ratio"] = r["T_e_hat"] / bound if bound else None
            r["verdict"] = "VIOLATED" if not r["verified"] else "held"


def _certify_command(opts: Common, command: str, *, eps: float, norm: str,
                     label_gradient: LabelGradient, verify: bool, attack_steps: int,
                     restarts: int, seed: int, sound: bool = False) -> list[Record]:
    Perturbation(parse_norm(norm), eps)  # checks eps and p before anything is loaded
    opts.extra_config.update({"eps": eps, "norm": norm, "label_gradient": label_gradient.value})
    if sound:
        opts.extra_config["sound"] = True
    if verify:
        opts.extra_config.update({"attack_checked": True, "attack_steps": attack_steps,
                                  "attack_restarts": restarts, "seed": seed})
    config, records = _run(opts, command, certify, eps=eps, norm=norm,
                           label_gradient=label_gradient.value, verify=verify,
                           attack_steps=attack_steps, attack_restarts=restarts, seed=seed,
                           sound=sound)
    base = [("source", "source"), ("predicted", "pred"), ("target", "y"),
            *([] if verify else [("attr_norm", "||g||"), ("xi_max", "xi_max")]),
            ("T_e", "T_e"), ("T_e_prime", "T'_e"), ("T_c_deg", "T_c deg"),
            *([("T_e_sound", "T_e sound")] if sound else [])]
    summary_keys = [("T_e", "T_e"), ("T_e_prime", "T'_e"), ("T_c_deg", "T_c (deg)"),
                    ("xi_max", "xi_max"), ("attr_norm", "||g||"),
                    ("label_radius", "label radius")]
    if verify:
        summary_keys = [("T_e_hat", "T_e^ (attack)"), *summary_keys[:3],
                        ("T_c_hat_deg", "T_c^ (deg, attack)"), ("eta_vmax", "eta (v_max)"),
                        ("eta_attack", "eta (attack)")]
    if sound:
        summary_keys = [*summary_keys[:3], ("T_e_sound", "T_e sound"), *summary_keys[3:]]
    if opts.format is Format.table:
        _attack_fields(records)
    which = "Theorem 1" if parse_norm(norm) == 2 else \
        "Theorem 2 (l-inf) / Corollary 1 (lp)"
    checked = ("an attack (PGD" + (", IFIA" if parse_norm(norm) == math.inf else "")
               + ") checked them: 'VIOLATED' means it beat the bound" if verify
               else "no attack checked them (add --verify)")
    _emit(opts, config, records,
          base + (ATTACK_COLUMNS if verify else LABEL_COLUMNS),
          f"attribution bounds, l{norm} ball, eps = {eps}", summary_keys,
          f"T_e: {which}; T'_e: Eq. 11 (l2 only); T_c: Corollary 2. All assume a locally "
          f"linear attribution (SPEC §6); {checked}."
          + ("\nT_e sound: proved for every x' in the ball, in float64 with outward rounding, "
             "no linearity assumption (interval arithmetic / mean-value theorem, "
             "attrcert.sound)." if sound else ""))
    for r in records:
        r.pop("attack_ratio", None)
        r.pop("verdict", None)
    return records


@app.command()
def bound(
    model: ModelArg,
    images: ImagesArg,
    eps: EpsOpt = 0.1,
    norm: NormOpt = "2",
    method: MethodOpt = Method.integrated_gradients,
    steps: StepsOpt = 50,
    baseline: BaselineOpt = "zero",
    labels: LabelsOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = DType.float32,
    chunk_size: ChunkOpt = None,
    batch_size: BatchOpt = None,
    output: OutputOpt = None,
    format: FormatOpt = Format.table,
    save_attributions: SaveAttrOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    size: SizeOpt = None,
    arch: ArchOpt = None,
    trust_pickle: TrustOpt = False,
    spectral: SpectralOpt = Spectral.auto,
    tol: TolOpt = 1e-4,
    threads: ThreadsOpt = 1,
    memory_budget: MemoryOpt = None,
    label_gradient: LabelGradOpt = LabelGradient.completeness,
    verify: Annotated[bool, typer.Option(
        help="Also attack each attribution and mark bounds the attack exceeded.")] = False,
    attack_steps: AttackStepsOpt = 40,
    restarts: RestartsOpt = 1,
    seed: SeedOpt = 0,
    fail_above_te: Annotated[float | None, typer.Option(
        help="Exit 1 if any sample's T_e exceeds this.")] = None,
    fail_above_tc_deg: Annotated[float | None, typer.Option(
        help="Exit 1 if any sample's cosine bound exceeds this many degrees.")] = None,
    require_label_preserved: Annotated[bool, typer.Option(
        help="Exit 1 if Proposition 1 cannot show the label is preserved for every "
        "sample.")] = False,
    require_verified: RequireVerifiedOpt = False,
    quiet: QuietOpt = False,
    shard: ShardOpt = None,
    sound: Annotated[bool, typer.Option(
        help="Also prove T_e_sound, a bound with no linearity assumption (interval "
        "arithmetic and the mean-value theorem in float64, plus torch's rounding in the "
        "model's precision); needs a graph of Linear, Conv2d, average pooling/means, "
        "Flatten, BatchNorm, residual adds, products, concatenation and "
        "Tanh/Sigmoid/Softplus/SiLU/GELU.")] = False,
) -> None:
    """Bound how far each image's attribution can move within the eps-ball.

    Example: attrcert bound sample_models/digits_softplus.pt2 sample_models/digits --eps 0.1
    """
    if require_verified and not verify:
        raise OptionError("--require-verified needs --verify (the attack that checks)")
    opts = Common(model=model, images=images, method=method, steps=steps, baseline=baseline,
                  labels=labels, device=device, dtype=dtype, chunk_size=chunk_size,
                  batch_size=batch_size, output=output, format=format,
                  save_attributions=save_attributions, mean=mean, std=std, size=size,
                  arch=arch, trust_pickle=trust_pickle, quiet=quiet, spectral=spectral,
                  tol=tol, threads=threads, memory_budget=memory_budget, shard=shard)
    records = _certify_command(opts, "bound", eps=eps, norm=norm,
                               label_gradient=label_gradient, verify=verify,
                               attack_steps=attack_steps, restarts=restarts, seed=seed,
                               sound=sound)
    _finish([
        _gate([f"{r['source']} ({format_value(r['T_e'])})" for r in records
               if fail_above_te is not None and (r["T_e"] or 0) > fail_above_te],
              f"T_e > {fail_above_te}"),
        _gate([f"{r['source']} ({format_value(r['T_c_deg'])})" for r in records
               if fail_above_tc_deg is not None
               and (r["T_c_deg"] is None or r["T_c_deg"] > fail_above_tc_deg)],
              f"T_c > {fail_above_tc_deg} degrees"),
        _gate([r["source"] for r in records
               if require_label_preserved and not r["label_preserved"]],
              "label not shown to be preserved (Proposition 1)"),
        _verified_gate(records, require_verified),
    ])


def _verified_gate(records: list[Record], required: bool) -> str | None:
    return _gate([f"{r['source']} (T_e^ {format_value(r['T_e_hat'])})" for r in records
                  if required and not r.get("verified", True)],
                 "an attack exceeded the bound")


@app.command()
def attack(
    model: ModelArg,
    images: ImagesArg,
    eps: EpsOpt = 0.1,
    norm: NormOpt = "2",
    method: MethodOpt = Method.integrated_gradients,
    steps: StepsOpt = 50,
    baseline: BaselineOpt = "zero",
    labels: LabelsOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = DType.float32,
    chunk_size: ChunkOpt = None,
    batch_size: BatchOpt = None,
    output: OutputOpt = None,
    format: FormatOpt = Format.table,
    save_attributions: SaveAttrOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    size: SizeOpt = None,
    arch: ArchOpt = None,
    trust_pickle: TrustOpt = False,
    spectral: SpectralOpt = Spectral.auto,
    tol: TolOpt = 1e-4,
    threads: ThreadsOpt = 1,
    memory_budget: MemoryOpt = None,
    attack_steps: AttackStepsOpt = 40,
    restarts: RestartsOpt = 1,
    seed: SeedOpt = 0,
    require_verified: RequireVerifiedOpt = False,
    quiet: QuietOpt = False,
    shard: ShardOpt = None,
) -> None:
    """Attack each attribution inside the eps-ball and compare with the bounds.

    PGD on the Euclidean and on the cosine distance (l2, l-inf, lp), plus IFIA for l-inf,
    keeping the predicted label. Reports T_e^ and T_c^ (what the attack reached) next to
    T_e, T'_e and T_c, the linearity gap eta (Appendix B.1) and every violation.

    Example: attrcert attack sample_models/digits_relu_maxpool.pt2 sample_models/digits
    """
    opts = Common(model=model, images=images, method=method, steps=steps, baseline=baseline,
                  labels=labels, device=device, dtype=dtype, chunk_size=chunk_size,
                  batch_size=batch_size, output=output, format=format,
                  save_attributions=save_attributions, mean=mean, std=std, size=size,
                  arch=arch, trust_pickle=trust_pickle, quiet=quiet, spectral=spectral,
                  tol=tol, threads=threads, memory_budget=memory_budget, shard=shard)
    records = _certify_command(opts, "attack", eps=eps, norm=norm,
                               label_gradient=LabelGradient.completeness, verify=True,
                               attack_steps=attack_steps, restarts=restarts, seed=seed)
    _finish([_verified_gate(records, require_verified)])


@app.command()
def report(
    model: ModelArg,
    images: ImagesArg,
    out: Annotated[Path, typer.Option(
        help="Folder for report.html (self-contained), its PNG figures and report.json; "
        "created if missing.", show_default=False)],
    eps: EpsOpt = 0.1,
    norm: NormOpt = "2",
    method: MethodOpt = Method.integrated_gradients,
    steps: StepsOpt = 50,
    baseline: BaselineOpt = "zero",
    labels: LabelsOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = DType.float32,
    chunk_size: ChunkOpt = None,
    batch_size: BatchOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    size: SizeOpt = None,
    arch: ArchOpt = None,
    trust_pickle: TrustOpt = False,
    spectral: SpectralOpt = Spectral.auto,
    tol: TolOpt = 1e-4,
    threads: ThreadsOpt = 1,
    memory_budget: MemoryOpt = None,
    attack_steps: AttackStepsOpt = 40,
    restarts: RestartsOpt = 1,
    seed: SeedOpt = 0,
    sweep: Annotated[str | None, typer.Option(
        help="Radii of the eps sweep, e.g. 0.02,0.05,0.1 (default: 6 equally spaced values "
        "up to --eps).", show_default=False)] = None,
    figures: Annotated[int, typer.Option(
        min=0, help="Per-sample figures (the first N samples; the table lists all).")] = 8,
    jacobian_max_d: Annotated[int, typer.Option(
        min=0, help="Form the first sample's d x d Jacobian for the |J| heatmap only up to "
        "this d.")] = 4096,
    quiet: QuietOpt = False,
) -> None:
    """Write an HTML report: attributions, worst-case directions, |J|, bounds against an
    attack, and the bounds over an eps sweep. Needs matplotlib (pip install
    "attrcert[report]").

    Example: attrcert report sample_models/digits_softplus.pt2 sample_models/digits
    --eps 0.1 --out report
    """
    from .report import compute_report, parse_sweep, require_matplotlib, write_report

    require_matplotlib()
    Perturbation(parse_norm(norm), eps)
    radii = parse_sweep(sweep, eps)
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file: give a folder")
    parent = out if out.exists() else out.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OptionError(f"--out {out}: {parent} is not a writable folder")
    opts = Common(model=model, images=images, method=method, steps=steps, baseline=baseline,
                  labels=labels, device=device, dtype=dtype, chunk_size=chunk_size,
                  batch_size=batch_size, mean=mean, std=std, size=size, arch=arch,
                  trust_pickle=trust_pickle, quiet=quiet, spectral=spectral, tol=tol,
                  threads=threads, memory_budget=memory_budget,
                  extra_config={"eps": eps, "norm": norm, "label_gradient": "completeness",
                                "attack_checked": True, "attack_steps": attack_steps,
                                "attack_restarts": restarts, "seed": seed, "sweep": radii})
    torch.set_num_threads(threads)
    loaded = _load(opts)
    config = _config(opts, "report", loaded)
    if loaded.nonsmooth:
        err.print(f"warning: {nonsmooth_message(loaded.nonsmooth)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonSmoothModelWarning)  # reported once, above
        data = compute_report(
            loaded.model, loaded.images.tensor, eps=eps, norm=norm,
            sources=loaded.images.sources, method=method.value, steps=steps,
            baseline=loaded.baseline, target=loaded.target, dtype=dtype.value, device=device,
            chunk_size=chunk_size, batch_size=batch_size, spectral=spectral.value, tol=tol,
            memory_budget=memory_budget, attack_steps=attack_steps, attack_restarts=restarts,
            seed=seed, sweep=radii,
            figures=figures, jacobian_max_d=jacobian_max_d,
            log=None if quiet else err.print)
    page = write_report(out, data, config)
    print(f"wrote {page}")


@app.command("max-eps")
def max_eps_command(
    model: ModelArg,
    images: ImagesArg,
    omega: Annotated[float, typer.Option(
        help="Tolerance: a distance (euclidean), a cosine distance in (0, 1], or degrees "
        "in (0, 90] (angle).", show_default=False)],
    metric: Annotated[Metric, typer.Option(help="What omega bounds.")] = Metric.euclidean,
    norm: NormOpt = "2",
    modified: Annotated[bool, typer.Option(
        help="Use T'_e = c(eps) xi_max eps (l2 only), solved by bisection.")] = False,
    method: MethodOpt = Method.integrated_gradients,
    steps: StepsOpt = 50,
    baseline: BaselineOpt = "zero",
    labels: LabelsOpt = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = DType.float32,
    chunk_size: ChunkOpt = None,
    batch_size: BatchOpt = None,
    output: OutputOpt = None,
    format: FormatOpt = Format.table,
    save_attributions: SaveAttrOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    size: SizeOpt = None,
    arch: ArchOpt = None,
    trust_pickle: TrustOpt = False,
    spectral: SpectralOpt = Spectral.auto,
    tol: TolOpt = 1e-4,
    threads: ThreadsOpt = 1,
    memory_budget: MemoryOpt = None,
    require_eps_above: Annotated[float | None, typer.Option(
        help="Exit 1 if any sample's eps_max is below this.")] = None,
    quiet: QuietOpt = False,
    shard: ShardOpt = None,
) -> None:
    """The largest eps whose bound stays within --omega, for each image (Appendix E).

    Example: attrcert max-eps sample_models/digits_softplus.pt2 sample_models/digits
    --omega 5 --metric angle
    """
    opts = Common(model=model, images=images, method=method, steps=steps, baseline=baseline,
                   labels=labels, device=device, dtype=dtype, chunk_size=chunk_size,
                   batch_size=batch_size, output=output, format=format,
                   save_attributions=save_attributions, mean=mean, std=std, size=size,
                   arch=arch, trust_pickle=trust_pickle, quiet=quiet, spectral=spectral,
                   tol=tol, threads=threads, memory_budget=memory_budget, shard=shard,
                   extra_config={"omega": omega, "metric": metric.value, "norm": norm,
                                 "modified": modified})
    check_tolerance(omega, metric.value)
    if modified and parse_norm(norm) != 2:
        raise OptionError("--modified (T'_e) is defined for the l2 norm only: use --norm 2")
    config, records = _run(opts, "max-eps", max_eps, omega=omega, metric=metric.value,
                           norm=norm, modified=modified)
    columns = [("source", "source"), ("predicted", "pred"), ("target", "y"),
               ("attr_norm", "||g||"), ("xi_max", "xi_max"), ("eps_max_linear", "eps (T_e)"),
               ("eps_max", "eps_max")]
    unit = {"euclidean": "", "cosine": " (cosine distance)", "angle": " degrees"}[metric.value]
    _emit(opts, config, records, columns,
          f"largest eps with {'T_e_prime' if modified else 'T_e'} within {omega}{unit}, "
          f"l{norm} ball", [("eps_max", "eps_max"), ("xi_max", "xi_max")],
          "eps_max: Appendix E (Eq. 50, and Eq. 52 as corrected in SPEC §5); assumes a "
          "locally linear attribution; '-' means no eps exceeds the tolerance.")
    _finish([_gate([f"{r['source']} ({format_value(r['eps_max'])})" for r in records
                    if require_eps_above is not None and r["eps_max"] is not None
                    and r["eps_max"] < require_eps_above],
                   f"eps_max < {require_eps_above}")])


@app.command()
def inspect(
    model: ModelArg,
    images: Annotated[Path | None, typer.Argument(
        help="Optional images, to know the input shape of a TorchScript model.",
        show_default=False)] = None,
    size: SizeOpt = None,
    arch: ArchOpt = None,
    trust_pickle: TrustOpt = False,
    format: FormatOpt = Format.table,
) -> None:
    """Describe a model: format, input shape, classes, and the smoothness report.

    Example: attrcert inspect sample_models/digits_relu_maxpool.pt2
    """
    net = _load_model(model, arch, trust_pickle)
    shape = _input_shape(net, images, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = torch.zeros(1, *shape)
        out = net(example)
    ops = find_nonsmooth(net, example)
    info = {
        "model": str(model),
        "format": sniff_model(model),
        "input_shape": list(shape),
        "classes": int(out.shape[-1]),
        "parameters": sum(p.numel() for p in net.parameters()),
        "smooth": not ops,
        "nonsmooth_ops": ops,
    }
    if format is Format.json:
        sys.stdout.write(dumps_strict(info, indent=2) + "\n")
        return
    out_console = _stdout_console()
    for key, value in info.items():
        if key == "nonsmooth_ops":
            value = ", ".join(value) or "none"
        out_console.print(f"{key:>14}: {value}")
    if ops:
        out_console.print(f"warning: {nonsmooth_message(ops)}")
    else:
        out_console.print("no non-smooth operations found: the bounds' smoothness assumption "
                          "can hold (local linearity still depends on eps)")


@app.command()
def merge(
    out: Annotated[Path, typer.Argument(
        help="The merged results: FILE.json, FILE.jsonl or FILE.csv, as --output.",
        show_default=False)],
    files: Annotated[list[Path], typer.Argument(
        help="The shard files (FILE.jsonl, each with its FILE.config.json) of one run.",
        show_default=False)],
) -> None:
    """Join the shard files of a '--shard I/N' job array (or torchrun's per-rank files).

    Refuses (exit 2) shards of different configurations and any sample missing or repeated.

    Example: attrcert merge results.json shard-*.jsonl
    """
    _check_writable(out, "OUT")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OptionError(f"OUT {out}: use a .json, .jsonl or .csv file")
    if any(out.resolve() == f.resolve() for f in files):
        raise OptionError(f"OUT {out} is one of the shard files: write the merge elsewhere")
    config, records = merge_shards(files)
    write_document(out, config, records)
    err.print(f"merged {len(records)} samples from {len(files)} shard files into {out}")


def _input_shape(net: torch.nn.Module, images: Path | None,
                 size: tuple[int, int] | None) -> tuple[int, ...]:
    if images is not None:
        channels = _folder_channels(net, images, size)
        return tuple(load_images(images, channels=channels, size=size).tensor.shape[1:])
    for node in getattr(getattr(net, "graph", None), "nodes", []):
        val = node.meta.get("val") if hasattr(node, "meta") else None
        if node.op == "placeholder" and isinstance(val, torch.Tensor) and val.ndim == 4:
            return tuple(int(s) for s in val.shape[1:])
    if size is not None:
        channels = infer_input_channels(net, *size)
        if channels is not None:
            return (channels, *size)
    raise OptionError("cannot tell this model's input shape: pass IMAGES or --size H W")


# --- entry point --------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI: usage and input errors become one line on stderr and exit status 2."""
    if secondary_rank():  # torchrun: rank 0 reports for all ranks (their errors included)
        err.quiet = True
    try:
        code = app(args=list(argv) if argv is not None else None, prog_name="attrcert",
                   standalone_mode=False)
    except USAGE_ERRORS as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        err.print(f"error: {exc.format_message()}{hint}")  # type: ignore[attr-defined]
        sys.exit(2)
    except Interrupted as exc:
        where = exc.output
        if where is not None and where.suffix.lower() == ".jsonl":
            err.print(f"interrupted: {exc.finished} finished samples are in {where}; run the "
                      "same command again to resume")
        else:
            err.print(f"interrupted after {exc.finished} samples, which were not saved: "
                      "use --output FILE.jsonl to keep finished samples and resume")
        sys.exit(130)
    except typer.Abort:
        err.print("interrupted")
        sys.exit(130)
    except AttrcertError as exc:
        err.print(f"error: {exc}", markup=False)  # messages may hold [brackets]
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug or an incompatible model: still one line, no traceback
        if os.environ.get("ATTRCERT_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        err.print(f"error: unexpected {exc.__class__.__name__}: {first} "
                  "(set ATTRCERT_DEBUG=1 for the traceback)")
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)

