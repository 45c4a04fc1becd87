"""What a run shows and keeps while it works: the progress of every phase of a sample on
stderr (rich, only on a terminal, nothing with ``--quiet``; stdout holds results only), one
line up front when the run will clearly take long, each finished sample streamed to
``--output FILE.jsonl``, the attributions kept for ``--save-attributions``, and Ctrl-C."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..document import JsonlAppender, Record, dumps_strict
from ..progress import ATTRIBUTION, SPECTRUM
from ..writing import write_bytes
from . import interrupts
from .options import CommandOptions
from .output import err

__all__ = ["LONG_RUN_SECONDS", "STOPPING", "Interrupted", "Reporter", "duration",
           "early_note", "long_run_note", "writes_jsonl"]

#: A run whose samples will take longer than this in all says so: as soon as the time its
#: first batch has taken shows it (:func:`early_note`), and after that batch with the
#: estimate (:func:`long_run_note`).
LONG_RUN_SECONDS = 600.0
STOPPING = "stopping after the current sample (Ctrl-C again to abort now)"


class Interrupted(Exception):
    """Ctrl-C was pressed; ``finished`` samples were completed before stopping (and are in
    ``output`` when that is a JSONL file)."""

    def __init__(self, finished: int, output: Path | None = None) -> None:
        super().__init__(finished)
        self.finished, self.output = finished, output


def writes_jsonl(opts: CommandOptions) -> bool:
    return opts.output is not None and opts.output.suffix.lower() == ".jsonl"


def duration(seconds: float) -> str:
    """``20 s``, ``0.4 s``, ``40 min``, ``2.5 h``."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def long_run_note(samples: int, done: int, seconds: float) -> str | None:
    """The line that says a run will take long, after ``done`` of its ``samples`` took
    ``seconds``: ``None`` when all of them will take less than :data:`LONG_RUN_SECONDS`
    or none is left."""
    if done <= 0 or done >= samples:
        return None
    each = seconds / done
    if each * samples < LONG_RUN_SECONDS:
        return None
    return f"note: about {duration(each * samples)} for {samples} samples at {duration(each)} each"


def early_note(samples: int, batch: int, seconds: float) -> str | None:
    """The line that says, before the first batch of ``batch`` samples is done, that the
    run will clearly take long: it has taken ``seconds`` so far, so each of the ``samples``
    takes at least ``seconds / batch`` (a lower bound: ``None`` while it stays under
    :data:`LONG_RUN_SECONDS`)."""
    if batch <= 0 or samples <= 0:
        return None
    least = seconds / batch * samples
    if least < LONG_RUN_SECONDS:
        return None
    first = "the first sample has" if batch == 1 else f"the first {batch} samples have"
    return (f"note: this run will take at least {duration(least)} for {samples} "
            f"sample{'s' if samples != 1 else ''} ({first} taken {duration(seconds)} so far)")


class Reporter:
    """Progress with ETA on stderr, streaming of finished samples to JSONL, the g / v_max of
    every sample for --save-attributions, and the first Ctrl-C (finish the sample, stop).

    The samples' bar counts finished samples (rich's ETA from their pace); under it, the
    phase of the sample in flight (:mod:`attrcert.progress`) with its own count: Jacobian
    rows, the spectrum's products (the total a forecast from the solver's residuals, shown
    as estimated: the solver stops when it converges), the label
    test's samples, the attack, noise samples."""

    def __init__(self, opts: CommandOptions, label: str, todo: list[int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.opts, self.todo, self.clock = opts, todo, clock
        self.progress: Progress | None = None
        if not opts.quiet and err.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=err, transient=True)
            self.samples = self.progress.add_task(label, total=len(todo))
            self.inner = self.progress.add_task("", total=None, visible=False)
        self.appender = JsonlAppender(opts.output) \
            if opts.output is not None and writes_jsonl(opts) else None
        self.attrs: list[torch.Tensor] = []
        self.directions: list[torch.Tensor] = []
        self.finished = 0
        self.started: float | None = None  # the first phase's start: the run is planned
        self.batch = 1  # samples of the batch in flight (its attribution phase's total)
        self.warned = False
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

    def phase(self, name: str, done: int, total: int) -> None:
        """A phase's ``(done, total)`` (``total`` 0: not known)."""
        if self.started is None:
            self.started = self.clock()
        if name == ATTRIBUTION and total:
            self.batch = total
        if self.finished == 0 and not self.warned and not self.opts.quiet:
            note = early_note(len(self.todo), self.batch, self.clock() - self.started)
            if note is not None:
                self.warned = True
                err.print(note)
        if self.progress is None:
            return
        estimated = " (total estimated)" if name == SPECTRUM and total else ""
        self.progress.update(self.inner, description=f"  {name}{estimated}", completed=done,
                             total=total or None, visible=True)

    def batch_done(self, records: list[Record], computed: Any) -> None:
        """Stream a batch's records, keep its tensors, advance, and say up front (once)
        when the run will clearly take long; stop here after a first Ctrl-C."""
        for rec in records:
            if self.appender is not None:
                self.appender.append(rec)
        first = self.finished == 0
        self.finished += len(records)
        if self.opts.save_attributions is not None:
            self.attrs.append(computed.attr.float())
            self.directions.append(computed.spectrum.v_max.float())
        if self.progress is not None:
            self.progress.advance(self.samples, len(records))
        started = self.started if self.started is not None else self.clock()
        note = long_run_note(len(self.todo), self.finished, self.clock() - started) \
            if first and not self.opts.quiet else None
        if note is not None:
            err.print(note)
        if self.stop_requested:
            raise Interrupted(self.finished)

    def request_stop(self, signum: int, frame: object) -> None:
        """First Ctrl-C: finish the sample in flight, then stop; a second one aborts (from
        :mod:`attrcert.cli.interrupts`' watchdog, even inside a long operator)."""
        self.stop_requested = True
        if not interrupts.active():  # no watchdog: the second Ctrl-C is Python's
            signal.signal(signal.SIGINT, signal.default_int_handler)
            err.print(STOPPING)

    def save_attributions(self, config: dict[str, Any], shape: tuple[int, ...],
                          sources: list[str]) -> None:
        """Write every sample's ``g`` and ``v_max`` (``shape``: one sample's) with the
        sources and the configuration to ``--save-attributions``."""
        if self.opts.save_attributions is None:
            return
        from safetensors.torch import save

        data = save({"attributions": torch.cat(self.attrs).reshape(-1, *shape).contiguous(),
                     "v_max": torch.cat(self.directions).reshape(-1, *shape).contiguous()},
                    metadata={"sources": dumps_strict(sources), "config": dumps_strict(config)})
        write_bytes(self.opts.save_attributions, data)
