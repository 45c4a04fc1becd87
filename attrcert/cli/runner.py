"""Running a command's job over its images: resuming from ``--output FILE.jsonl``, streaming
each finished sample to it, shards and torchrun ranks (:mod:`attrcert.distributed`), the
progress (:mod:`attrcert.cli.reporter`), Ctrl-C, and ``--save-attributions``.

A command builds its value objects once, at the boundary, into a :class:`Job`; the runner
loads the inputs, derives the run's configuration (and so ``config_hash``) from the options
and the job, and hands the job the loaded inputs with what loading found
(:class:`attrcert.run.RunInputs`: each sample's index, what its record starts with, the
model's class count and non-smooth operations)."""

from __future__ import annotations

import contextlib
import signal
from dataclasses import replace
from typing import Any, Protocol

import torch
import typer

from ..distributed import (
    RankFailed,
    Shard,
    rank_device,
    rank_file,
    run_torchrun,
    select_shard,
    write_sidecar,
)
from ..document import Record, write_document
from ..errors import InputError, ModelOutputError, OptionError
from ..resume import ResumeError, RunLock, config_hash, finished_records, tensor_sha256
from ..run import Checked, Hooks, RunInputs
from ..settings import SolverOptions
from ..smoothness import nonsmooth_message
from ..writing import stdout_to_stderr
from . import interrupts
from .inputs import Loaded, attribution_spec, load_inputs, nonfinite, run_config, smoothing_notes
from .options import CommandOptions
from .output import err, terminal_safe
from .reporter import STOPPING, Interrupted, Reporter, writes_jsonl

__all__ = ["ANY_MODEL", "Interrupted", "Job", "run_command", "writes_jsonl"]

#: The progress bar's label per command.
LABELS = {"bound": "certifying", "attack": "certifying", "smooth": "smoothing"}
#: Commands whose guarantees hold for any model: no warning about non-smooth operations.
ANY_MODEL = {"smooth"}


class Job(Protocol):
    """What a command computes, built from its value objects at the CLI boundary."""

    @property
    def command(self) -> str:
        """The command's name, as the configuration records it."""

    def config(self) -> dict[str, Any]:
        """The configuration entries the job's value objects give (after the common ones)."""

    def run(self, inputs: RunInputs, hooks: Hooks) -> list[Record]:
        """The records of ``inputs``' samples."""


def run_command(opts: CommandOptions, job: Job) -> tuple[dict[str, Any], list[Record]]:
    """Load, resume from ``--output FILE.jsonl`` if it holds finished samples of the same
    configuration, run ``job`` on the rest (each record appended and fsynced as it
    finishes), write.

    With ``--shard I/N`` only that shard (into its ``--output FILE.jsonl``); under torchrun
    each rank its shard, gathered on every rank, rank 0 writing ``--output``
    (:mod:`attrcert.distributed`)."""
    torch.set_num_threads(opts.threads)
    shard = select_shard(opts.shard)
    solver = opts.solver()
    if shard is not None and opts.save_attributions is not None:
        raise OptionError("--save-attributions does not work with --shard or torchrun yet: "
                          "run without them to save attributions")
    if shard is not None and not shard.torchrun and not writes_jsonl(opts):
        raise OptionError("--shard needs --output FILE.jsonl: the shard file that "
                          "'attrcert merge' joins")
    if shard is None or not shard.torchrun:
        config, _, records = _run_shard(opts, job, solver, shard, solver)
        return config, records
    here = replace(solver, device=rank_device(opts.device, shard))
    try:
        config, records = run_torchrun(
            shard, str(here.device), lambda: _run_shard(opts, job, solver, shard, here),
            Interrupted)
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


def _run_shard(opts: CommandOptions, job: Job, solver: SolverOptions, shard: Shard | None,
               here: SolverOptions) -> tuple[dict[str, Any], str, list[Record]]:
    """One process's part: all images, or one shard of them (its records only), computed
    with ``here`` (``solver`` on this rank's device). Returns the configuration (from
    ``solver``: the same on every rank), its hash and the records.

    Whatever the model prints while it is loaded and run goes to stderr
    (:func:`attrcert.writing.stdout_to_stderr`); a JSONL output is locked for the run
    (:class:`attrcert.resume.RunLock`)."""
    with stdout_to_stderr():
        loaded = load_inputs(opts, shard)
    config = run_config(opts, loaded, solver, job.command, job.config())
    digest = config_hash(config, loaded.images.sources)
    local = opts  # where this process streams its records: torchrun ranks, a file each
    if shard is not None and shard.torchrun and opts.output is not None:
        local = replace(opts, output=rank_file(opts.output, shard))
    lock = RunLock(local.output) if writes_jsonl(local) and local.output is not None \
        else contextlib.nullcontext()
    try:
        with lock:
            return _resume_and_run(opts, local, job, here, shard, loaded, config, digest)
    except ResumeError as exc:
        raise InputError(str(exc)) from None


def _resume_and_run(opts: CommandOptions, local: CommandOptions, job: Job, solver: SolverOptions,
                    shard: Shard | None, loaded: Loaded, config: dict[str, Any],
                    digest: str) -> tuple[dict[str, Any], str, list[Record]]:
    """Resume from ``local.output`` (a JSONL file) and run the job on the samples it lacks."""
    n = len(loaded.images.sources)
    output = local.output if writes_jsonl(local) else None
    done = finished_records(output, digest) if output is not None else {}
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
    if shard is not None and output is not None:
        write_sidecar(output, config, digest, shard)
    if shard is not None and not shard.torchrun:
        config = {**config, "shard": shard.label}  # after hashing: the hash is the whole run's
    if done:
        if opts.save_attributions is not None:
            raise OptionError(f"{opts.output} already holds {len(done)} samples and "
                              "--save-attributions needs all of them: delete it to start over")
        err.print(f"resuming: {len(done)} of {len(mine)} samples already in {local.output}")
    if loaded.nonsmooth and job.command not in ANY_MODEL:
        err.print(f"warning: {nonsmooth_message(loaded.nonsmooth)}")
    for note in ([] if job.command in ANY_MODEL else smoothing_notes(opts, loaded)):
        err.print(note)  # smooth certifies any model: no first-order caveat to note

    def head(index: int) -> Record:
        return {"source": loaded.images.sources[index], "config_hash": digest,
                "input_sha256": pixels(index)}

    new: list[Record] = []
    label = LABELS.get(job.command, "solving eps_max")
    with Reporter(local, label, todo) as reporter, stdout_to_stderr():
        interrupts.set_stage(STOPPING, lambda: _abort_message(local, len(done) + reporter.finished))
        # started with Ctrl-C ignored (nohup, `cmd &` in a script): it stays ignored
        ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        previous_handler = None if ignored else signal.signal(signal.SIGINT,
                                                              reporter.request_stop)
        try:
            if todo:
                inputs = RunInputs(
                    loaded.model, loaded.images.tensor[[position[i] for i in todo]],
                    attribution_spec(opts, loaded).rows(todo), solver, indices=todo,
                    checked=Checked(loaded.classes, tuple(loaded.nonsmooth)), head=head,
                    smoothed=loaded.smoothing.smoothed() if loaded.smoothing else None)
                new = job.run(inputs, Hooks(reporter.phase, reporter.batch_done))
        except Interrupted as exc:
            exc.finished += len(done)
            exc.output = local.output
            raise
        except ModelOutputError as exc:
            raise nonfinite(opts.model, loaded.images.sources[exc.index], exc.what) from None
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            interrupts.set_stage(None)
    records = sorted([*done.values(), *new], key=lambda r: r["index"])
    reporter.save_attributions(config, tuple(loaded.images.tensor.shape[1:]),
                               loaded.images.sources)
    if local.output is not None and not writes_jsonl(local):
        write_document(local.output, config, records)
    return config, digest, records


def _abort_message(local: CommandOptions, finished: int) -> str:
    """What a second Ctrl-C says before it aborts."""
    if writes_jsonl(local):
        return (f"interrupted: {finished} finished samples are in "
                f"{terminal_safe(str(local.output))}; run the same command again to resume")
    return (f"interrupted after {finished} samples, which were not saved: use --output "
            "FILE.jsonl to keep finished samples and resume")
