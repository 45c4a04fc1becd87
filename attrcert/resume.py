"""Resuming an interrupted run from its ``--output FILE.jsonl``, safely.

- :func:`config_hash` digests everything that determines a record: the settings, the
  versions, the image names, and the CONTENT of the model, ``--arch`` file, labels and
  baseline (their SHA-256, :func:`file_sha256`), never their paths; each record also
  carries ``input_sha256``, the digest of the pixels it certified (:func:`tensor_sha256`).
  A model, labels file, baseline or image replaced between a crash and the resume is
  therefore refused, while a moved or renamed folder is not.
- :func:`finished_records` reads the file strictly: every line a sealed attrcert record
  (:func:`attrcert.document.record_seal`) of this configuration, each sample once; a last
  line cut short by a crash is dropped by rewriting the file atomically (a temporary file,
  synced, renamed over it), never in place.
- :class:`RunLock` holds an exclusive lock for the whole run, so that a second run on the
  same file is refused instead of writing every sample twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .document import SEAL, Record, dumps_strict, record_seal
from .writing import write_text

__all__ = ["PATH_KEYS", "ResumeError", "RunLock", "config_hash", "file_sha256",
           "finished_records", "tensor_sha256"]

#: Configuration keys that hold paths: shown in the configuration, not hashed (their
#: contents are, under ``"sha256"``).
PATH_KEYS = ("model", "images", "labels", "baseline")
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def tensor_sha256(tensor: Tensor) -> str:
    """The SHA-256 of a tensor's values as stored (contiguous, on the CPU), with its dtype
    and shape: the identity of the pixels a record certified."""
    t = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def config_hash(config: dict[str, Any], sources: Sequence[str]) -> str:
    """A short digest of everything that determines the records (settings, versions, the
    images' names, the inputs' contents under ``config["sha256"]``), but not the paths
    (:data:`PATH_KEYS`): records carry it, so a rerun only reuses records of the same
    configuration."""
    hashed = {k: v for k, v in config.items() if k not in PATH_KEYS}
    text = dumps_strict({"config": hashed, "sources": list(sources)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ResumeError(ValueError):
    """A JSONL file that cannot be resumed (another configuration, a changed or repeated
    record, not attrcert's, or in use by another run)."""


def _parse(path: Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except RecursionError:
        raise ResumeError(f"{path} line {number} is not an attrcert record (JSON nested too "
                          "deep): delete the file to start over") from None


def finished_records(path: Path, digest: str) -> dict[int, Record]:
    """The records of ``path`` (a JSONL file of an earlier run) by index, for resuming.

    Every line must be a record of this configuration (``config_hash == digest``) with an
    integer ``index``, sealed (its ``record_sha256`` matches its fields), each index once.
    A last line cut short by a crash (not JSON, no newline) is dropped and the file
    rewritten atomically without it, so that appending continues on a clean line. The
    seal is removed from the records returned. Raises :class:`ResumeError` otherwise.
    """
    if not path.is_file():  # missing, or a device such as /dev/full: nothing to resume
        return {}
    try:
        lines = path.read_bytes().decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        raise ResumeError(f"{path} is not an attrcert JSONL file (it holds binary data): "
                          "delete it or use another --output file") from None
    except OSError as exc:
        raise ResumeError(f"cannot read {path} to resume it: {exc.strerror or exc}") from None
    records: dict[int, Record] = {}
    where: dict[int, int] = {}
    kept: list[str] = []
    for number, line in enumerate(lines, 1):
        try:
            rec = _parse(path, number, line)
        except json.JSONDecodeError:
            if number == len(lines) and not line.endswith("\n"):  # in flight at the crash
                break
            raise ResumeError(f"{path} line {number} is not JSON: delete the file to "
                              "start over") from None
        index = rec.get("index") if isinstance(rec, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            shown = f" (index {json.dumps(index)[:40]})" if isinstance(rec, dict) else ""
            raise ResumeError(f"{path} line {number} is not an attrcert record{shown}: "
                              "delete the file to start over")
        if rec.get("config_hash") != digest:
            raise ResumeError(f"{path} holds results of another configuration (line "
                              f"{number}; a changed setting, model, labels or baseline): use "
                              "another --output file or delete it")
        if rec.get(SEAL) != record_seal(rec):
            raise ResumeError(f"{path} line {number} was changed after attrcert wrote it (its "
                              f"{SEAL} does not match its fields): delete the file to start "
                              "over")
        if index in records:
            raise ResumeError(f"{path} line {number} repeats sample {index} (first on line "
                              f"{where[index]}): two runs wrote it, or it was edited; delete "
                              "the file to start over")
        del rec[SEAL]
        records[index], where[index] = rec, number
        kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines) or (lines and not lines[-1].endswith("\n")):
        write_text(path, "".join(kept))
    return records


class RunLock:
    """An exclusive lock on ``FILE.jsonl`` for one run, held on ``FILE.jsonl.lock``
    (``flock``): a second run on the same file is refused at once with
    :class:`ResumeError`. The lock file is removed when the run ends; a stale one (left by
    a killed run) holds no lock and is reused. Where the file system cannot lock, the run
    goes on unlocked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no flock
            return self
        for _ in range(10):
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError:
                return self  # a folder we cannot create the lock in: unlocked
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                who = f" (process {holder})" if holder.isdigit() else ""
                raise ResumeError(f"{self.path} is being written by another attrcert "
                                  f"run{who}: wait for it to finish, or use another --output "
                                  "file") from None
            except OSError:  # no locks on this file system
                os.close(fd)
                return self
            if self._same_file(fd):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return self
            os.close(fd)  # the run that held it removed it meanwhile: lock the new one
        return self

    def _same_file(self, fd: int) -> bool:
        try:
            mine, there = os.fstat(fd), os.stat(self.lock_path)
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            os.close(fd)
