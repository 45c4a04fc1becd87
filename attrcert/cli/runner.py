"""Running a command over its images: resuming from ``--output FILE.jsonl``, streaming each
finished sample to it, shards and torchrun ranks (:mod:`attrcert.distributed`), the progress
bar, Ctrl-C, and ``--save-attributions``."""

from __future__ import annotations

import contextlib
import signal
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..analysis import Analysis
from ..distributed import (
    RankFailed,
    Shard,
    rank_device,
    rank_file,
    run_torchrun,
    select_shard,
    write_sidecar,
)
from ..errors import InputError, ModelOutputError, OptionError
from ..results import JsonlAppender, Record, dumps_strict, write_document
from ..resume import ResumeError, RunLock, config_hash, finished_records, tensor_sha256
from ..smoothness import NonSmoothModelWarning, nonsmooth_message
from ..writing import stdout_to_stderr, write_bytes
from . import interrupts
from .inputs import (
    Loaded,
    attribution_spec,
    load_inputs,
    nonfinite,
    run_config,
    smoothing_notes,
)
from .options import Common
from .output import err, terminal_safe

#: The progress bar's label per command, and its inner bar's where it is not Jacobian rows.
LABELS = {"bound": "certifying", "attack": "certifying", "smooth": "smoothing"}
INNER_LABELS = {"smoothing": "  noise samples"}
#: Commands whose guarantees hold for any model: no warning about non-smooth operations.
ANY_MODEL = {"smooth"}


class Reporter:
    """Progress bar with ETA on stderr (only on a terminal, not with --quiet), streaming
    of finished samples to JSONL, and collection of g / v_max for --save-attributions."""

    def __init__(self, opts: Common, loaded: Loaded, label: str, todo: list[int],
                 digest: str, pixels: Callable[[int], str]) -> None:
        self.opts, self.loaded, self.todo, self.digest = opts, loaded, todo, digest
        self.pixels = pixels  # the input_sha256 of image ``index``
        self.progress: Progress | None = None
        if not opts.quiet and err.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=err, transient=True)
            self.samples = self.progress.add_task(label, total=len(todo))
            self.rows = self.progress.add_task(INNER_LABELS.get(label, "  Jacobian rows"),
                                               total=1)
        self.appender = JsonlAppender(opts.output) if writes_jsonl(opts) else None
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
                       config_hash=self.digest, input_sha256=self.pixels(index))
            rec.update(fields)
            if self.loaded.smoothing is not None:
                self.loaded.smoothing.fields(rec)
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
        """First Ctrl-C: finish the sample in flight, then stop; a second one aborts (from
        :mod:`attrcert.cli.interrupts`' watchdog, even inside a long operator)."""
        self.stop_requested = True
        if not interrupts.active():  # no watchdog: the second Ctrl-C is Python's
            signal.signal(signal.SIGINT, signal.default_int_handler)
            err.print(STOPPING)

    def save_attributions(self, config: dict[str, Any]) -> None:
        if self.opts.save_attributions is None:
            return
        from safetensors.torch import save

        shape = (-1, *self.loaded.images.tensor.shape[1:])
        data = save({"attributions": torch.cat(self.attrs).reshape(shape).contiguous(),
                     "v_max": torch.cat(self.directions).reshape(shape).contiguous()},
                    metadata={"sources": dumps_strict(self.loaded.images.sources),
                              "config": dumps_strict(config)})
        write_bytes(self.opts.save_attributions, data)


STOPPING = "stopping after the current sample (Ctrl-C again to abort now)"


class Interrupted(Exception):
    """Ctrl-C was pressed; ``finished`` samples were completed before stopping (and are in
    ``output`` when that is a JSONL file)."""

    def __init__(self, finished: int, output: Path | None = None) -> None:
        super().__init__(finished)
        self.finished, self.output = finished, output


def writes_jsonl(opts: Common) -> bool:
    return opts.output is not None and opts.output.suffix.lower() == ".jsonl"


def run_command(opts: Common, command: str, func: Callable[..., list[Record]],
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
    if shard is not None and not shard.torchrun and not writes_jsonl(opts):
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
    Returns the configuration, its hash and the records.

    Whatever the model prints while it is loaded and run goes to stderr
    (:func:`attrcert.writing.stdout_to_stderr`); a JSONL output is locked for the run
    (:class:`attrcert.resume.RunLock`)."""
    with stdout_to_stderr():
        loaded = load_inputs(opts, shard)
    config = run_config(opts, command, loaded)
    digest = config_hash(config, loaded.images.sources)
    local = opts  # where this process streams its records: torchrun ranks, a file each
    if shard is not None and shard.torchrun and opts.output is not None:
        local = replace(opts, output=rank_file(opts.output, shard))
    lock = RunLock(local.output) if writes_jsonl(local) and local.output is not None \
        else contextlib.nullcontext()
    try:
        with lock:
            return _resume_and_run(opts, local, command, func, shard, device, loaded, config,
                                   digest, **kwargs)
    except ResumeError as exc:
        raise InputError(str(exc)) from None


def _resume_and_run(opts: Common, local: Common, command: str,
                    func: Callable[..., list[Record]], shard: Shard | None, device: str,
                    loaded: Loaded, config: dict[str, Any], digest: str,
                    **kwargs: Any) -> tuple[dict[str, Any], str, list[Record]]:
    """Resume from ``local.output`` (a JSONL file) and certify the samples it lacks."""
    n = len(loaded.images.sources)
    done = finished_records(local.output, digest) if writes_jsonl(local) else {}
    mine = range(n) if shard is None else shard.indices(n)
    foreign = sorted(set(done) - set(mine))
    if foreign:
        raise InputError(f"{local.output} holds sample {foreign[0]}, which is not in shard "
                         f"{shard.label if shard else ''}: use another --output file per shard")
    position = {index: row for row, index in enumerate(loaded.rows or range(n))}

    def pixels(index: int) -> str:
        return tensor_sha256(loaded.images.tensor[position[index]])

    for index, rec in done.items():
        if rec.get("input_sha256") != pixels(index):
            raise InputError(f"image {loaded.images.sources[index]} changed since it was "
                             f"certified into {local.output} (its pixels' SHA-256 differs): "
                             "restore it, or delete that file to start over")
    todo = [i for i in mine if i not in done]
    if shard is not None and writes_jsonl(local):
        write_sidecar(local.output, config, digest, shard)
    if shard is not None and not shard.torchrun:
        config = {**config, "shard": shard.label}  # after hashing: the hash is the whole run's
    if done:
        if opts.save_attributions is not None:
            raise OptionError(f"{opts.output} already holds {len(done)} samples and "
                              "--save-attributions needs all of them: delete it to start over")
        err.print(f"resuming: {len(done)} of {len(mine)} samples already in {local.output}")
    if loaded.nonsmooth and command not in ANY_MODEL:
        err.print(f"warning: {nonsmooth_message(loaded.nonsmooth)}")
    for note in ([] if command in ANY_MODEL else smoothing_notes(opts, loaded)):
        err.print(note)  # smooth certifies any model: no first-order caveat to note
    label = LABELS.get(command, "solving eps_max")
    new: list[Record] = []
    rows = [position[i] for i in todo]  # the rows of loaded.images.tensor to certify
    with Reporter(local, loaded, label, todo, digest, pixels) as reporter, \
            warnings.catch_warnings(), stdout_to_stderr():
        warnings.simplefilter("ignore", NonSmoothModelWarning)  # reported once, above
        interrupts.set_stage(STOPPING, lambda: _abort_message(local, len(done) + reporter.finished))
        previous_handler = signal.signal(signal.SIGINT, reporter.request_stop)
        try:
            if todo:
                new = func(loaded.model, loaded.images.tensor[rows],
                           attribution=attribution_spec(opts, loaded, todo),
                           solver=opts.solver(device), progress=reporter.rows_done,
                           on_batch=reporter.batch_done, **kwargs)
        except Interrupted as exc:
            exc.finished += len(done)
            exc.output = local.output
            raise
        except ModelOutputError as exc:
            raise nonfinite(opts.model, loaded.images.sources[todo[exc.index]],
                            exc.what) from None
        finally:
            signal.signal(signal.SIGINT, previous_handler)
            interrupts.set_stage(None)
    records = sorted([*done.values(), *new], key=lambda r: r["index"])
    reporter.save_attributions(config)
    if local.output is not None and not writes_jsonl(local):
        write_document(local.output, config, records)
    return config, digest, records


def _abort_message(local: Common, finished: int) -> str:
    """What a second Ctrl-C says before it aborts."""
    if writes_jsonl(local):
        return (f"interrupted: {finished} finished samples are in "
                f"{terminal_safe(str(local.output))}; run the same command again to resume")
    return (f"interrupted after {finished} samples, which were not saved: use --output "
            "FILE.jsonl to keep finished samples and resume")
