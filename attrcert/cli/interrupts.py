"""Ctrl-C that works while a model's C++ code runs.

Python runs its signal handlers in the main thread between two bytecodes: while one long
operator (a big matrix product, a TorchScript loop) runs, a Ctrl-C waits for it to return.
:func:`watch` therefore also has the signal's C handler write to a pipe
(:func:`signal.set_wakeup_fd`), read by a watchdog thread that runs while the main thread
is inside torch (torch releases the GIL in its operators):

- the first Ctrl-C is left to the Python handler of the moment (while certifying:
  :class:`attrcert.cli.runner.Reporter` finishes the sample in flight, then exits 130
  saying how to resume); the watchdog only says so at once (:func:`set_stage`);
- the second one aborts at once from the watchdog: it prints :func:`set_stage`'s abort
  message and exits 130 with :func:`os._exit`. Every finished sample is already in the
  ``--output FILE.jsonl`` (each line is fsynced before the next sample starts); a line
  cut by the abort is dropped when the run is resumed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = ["active", "set_stage", "watch"]

_first: str | None = None  # what the first Ctrl-C does, said at once (None: nothing)
_abort: Callable[[], str] = lambda: "interrupted"  # noqa: E731 - the message on abort
_active = False


def active() -> bool:
    """Whether the watchdog of :func:`watch` is running (a second Ctrl-C aborts)."""
    return _active


def set_stage(first: str | None, abort: Callable[[], str] | None = None) -> None:
    """What the watchdog says on the first Ctrl-C (``None``: nothing, the Python handler
    reports), and the message (built when needed) it prints before aborting on the
    second."""
    global _first, _abort
    _first = first
    _abort = abort if abort is not None else (lambda: "interrupted")


def _say(text: str) -> None:
    """One line on stderr, on a line of its own after the terminal's ``^C``."""
    with contextlib.suppress(OSError):
        start = "\n" if os.isatty(2) else ""
        os.write(2, f"{start}{text}\n".encode("utf-8", "replace"))


def _watchdog(read_fd: int) -> None:
    count = 0
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:  # the write end was closed: the command is over
            return
        for signum in data:
            if signum != signal.SIGINT:
                continue
            count += 1
            if count == 1:
                if _first is not None:
                    _say(_first)
                continue
            try:
                message = _abort()
            except Exception:
                message = "interrupted"
            _say(message)
            os._exit(130)


@contextlib.contextmanager
def watch() -> Iterator[None]:
    """Run the watchdog for the duration (only in the main thread of a POSIX system whose
    SIGINT has Python's handler; elsewhere nothing changes)."""
    global _active
    if (os.name != "posix" or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except (ValueError, OSError):
        os.close(read_fd)
        os.close(write_fd)
        yield
        return
    thread = threading.Thread(target=_watchdog, args=(read_fd,), name="attrcert-ctrl-c",
                              daemon=True)
    thread.start()
    _active = True
    try:
        yield
    finally:
        _active = False
        set_stage(None)
        signal.set_wakeup_fd(previous)
        os.close(write_fd)
        thread.join(timeout=1)
        os.close(read_fd)
