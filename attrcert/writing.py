"""Checked writes: every byte attrcert writes (result files, attributions, shard sidecars,
reports, standard output) goes through here, so that a full disk, a closed pipe or a
missing permission is an :class:`~attrcert.errors.OutputError` (one line, exit 2), never a
silent loss and never exit 0.

A write is done when the data is flushed to the operating system and, for regular files,
``fsync``\\ ed; errors that a buffered write defers to ``close`` are caught there too. A
regular file is replaced atomically (a temporary file beside it, synced, then renamed over
it): a crash leaves the old content or the new, never a truncated file.

While a model runs, :func:`stdout_to_stderr` points file descriptor 1 at standard error, so
that whatever the model prints (Python ``print``, TorchScript's ``print``, C or Fortran
libraries) cannot mix with the results written to standard output afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import OptionError, OutputError

__all__ = ["Appender", "check_output_path", "stdout_to_stderr", "write_bytes", "write_stdout",
           "write_text"]


def cannot_write(path: Path | str, exc: OSError) -> OutputError:
    """``cannot write FILE: No space left on device`` (the system's own reason)."""
    reason = exc.strerror or exc.__class__.__name__
    return OutputError(f"cannot write {path}: {reason}")


def check_output_path(path: Path, flag: str) -> None:
    """Refuse, before any work, an output path that cannot be a file written to: a folder,
    a missing parent folder, no permission, or a named pipe or socket (opening one would
    block until a reader comes, or fail)."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OptionError(f"{flag} {path} is a folder: give a file name")
    if not parent.is_dir():
        raise OptionError(f"{flag} {path}: folder {parent} does not exist")
    if path.exists():
        mode = path.stat().st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            kind = "named pipe" if stat.S_ISFIFO(mode) else "socket"
            raise OptionError(f"{flag} {path} is a {kind}: give a regular file")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OptionError(f"{flag} {path} is not writable")


def _sync(fh: IO[bytes] | IO[str]) -> None:
    fh.flush()
    if stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        os.fsync(fh.fileno())


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (replacing it), flushed and synced.

    A regular file (or a new one) is replaced atomically, beside its real location when
    ``path`` is a symbolic link: a temporary file in the same folder is written, synced and
    renamed over it (its permissions kept), then the folder is synced. Anything else (a
    device such as ``/dev/full`` or ``/dev/stdout``) is written in place."""
    real = Path(os.path.realpath(path))
    try:
        mode = real.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise cannot_write(path, exc) from None
    if mode is not None and not stat.S_ISREG(mode):
        _write_in_place(path, data)
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp")
    except PermissionError:  # a writable file in a folder we may not create files in
        _write_in_place(path, data)
        return
    except OSError as exc:
        raise cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            _sync(fh)
        os.chmod(tmp, stat.S_IMODE(mode) if mode is not None else 0o666 & ~_umask())
        os.replace(tmp, real)
    except BaseException as exc:  # also Ctrl-C: the temporary file goes, the old one stays
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise cannot_write(path, exc) from None
        raise
    _sync_folder(real.parent)


def _write_in_place(path: Path, data: bytes) -> None:
    try:
        with path.open("wb") as fh:
            fh.write(data)
            _sync(fh)
    except OSError as exc:
        raise cannot_write(path, exc) from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sync_folder(folder: Path) -> None:
    """Sync a folder after a rename in it (best effort: not every system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` (replacing it), flushed and synced."""
    write_bytes(path, text.encode("utf-8"))


class Appender:
    """Appends lines to a file as a run goes, each flushed and synced before the next
    sample starts, so that an interrupted run keeps every finished line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fh: IO[str] | None = path.open("a", encoding="utf-8")
        except OSError as exc:
            raise cannot_write(path, exc) from None

    def append(self, line: str) -> None:
        """Write one line (``line`` without its newline)."""
        if self._fh is None:
            raise OutputError(f"cannot write {self.path}: it is closed")
        try:
            self._fh.write(line + "\n")
            _sync(self._fh)
        except OSError as exc:
            self._abandon()
            raise cannot_write(self.path, exc) from None

    def _abandon(self) -> None:
        """Close after a failed write without raising again (the buffer is lost anyway)."""
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass

    def close(self) -> None:
        """Close the file; a failure to write its last bytes is an error."""
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError as exc:
                raise cannot_write(self.path, exc) from None


def write_stdout(text: str) -> None:
    """Write ``text`` to standard output and flush it.

    If that fails (a full disk behind a redirection, a closed pipe), standard output is
    pointed at ``os.devnull`` so that the interpreter's own flush at exit does not print a
    second error, and :class:`OutputError` is raised.
    """
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        abandon_stdout()
        raise OutputError(f"cannot write to standard output: {exc.strerror or exc}") from None


def abandon_stdout() -> None:
    """Point file descriptor 1 at ``os.devnull`` after a failed write to it."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _flush_c_stdio() -> None:
    """Flush the C library's buffered streams (what C and C++ code printed)."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to ask (not on Linux/macOS)
        pass


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at standard error for the duration (at the system level, so
    that C, C++ and Fortran writes follow; ``sys.stdout`` too, for Python's and
    TorchScript's ``print`` wherever ``sys.stdout`` writes), then restore both: standard
    output then holds the results alone. Python's and C's buffers are flushed on the way in
    and out, so nothing printed inside lands on standard output later."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    _flush_c_stdio()
    try:
        saved = os.dup(1)
    except OSError:  # no standard output at all: nothing to protect at the system level
        saved = -1
    if saved >= 0:
        try:
            os.dup2(2, 1)
        except OSError:
            os.close(saved)
            saved = -1
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for stream in (sys.stdout, sys.stderr):  # sys.stdout is the original again
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        _flush_c_stdio()
        if saved >= 0:
            os.dup2(saved, 1)
            os.close(saved)
