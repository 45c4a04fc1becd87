"""Many processes, many machines: shards of the images, torchrun, and merging shard files.

A run over ``n`` images is split into ``N`` disjoint shards by index: shard ``I`` holds the
images ``i`` with ``i % N == I`` (strided, so that a folder sorted by class spreads evenly).
Two ways to run shards:

* ``torchrun --nproc-per-node N -m attrcert bound ...``: torchrun's environment
  (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``) makes rank ``r`` certify shard ``r`` of
  ``WORLD_SIZE`` on its own device (``LOCAL_RANK`` picks the GPU; CPU ranks use gloo). Each
  rank appends its records to ``STEM.rank<r>-of-<N>.jsonl`` beside ``--output`` (resumable);
  rank 0 gathers every rank's records with ``torch.distributed.all_gather_object``, writes
  the merged ``--output`` and prints. Every rank receives all records, so every rank
  computes the same gates and exits with the same status.
* ``--shard I/N`` without torchrun (SLURM job arrays and the like): one process certifies
  shard ``I`` into ``--output FILE.jsonl``; ``attrcert merge OUT FILE...`` joins the shard
  files and checks that no sample is missing or repeated and that the configurations match.

Every shard file (``--shard``'s ``FILE.jsonl`` and torchrun's per-rank files) has a sidecar
``FILE.config.json`` holding the configuration of the WHOLE run (the same ``config_hash`` as
a single-process run, SPEC §7) and the shard's identity; the records themselves are exactly
those of a single-process run (``index`` is the index among all images).

Loading: for a folder of images, a rank decodes only its own shard's files (the folder is
listed, which reads names, not images). A single tensor file (``.pt``, ``.npy``,
``.safetensors``) is one file: every rank reads all of it and keeps its shard's rows.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import AttrcertError, InputError, OptionError
from .loading import (
    Images,
    image_files,
    load_image_files,
    load_images,
    read_image,
)
from .results import Record, dumps_strict
from .writing import cannot_write, write_text

#: How long a rank that finished its shard waits for the others in the final gather. The
#: shards can take very different times (GPU-days in all), so this is long on purpose.
GATHER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the images ``i`` with ``i % count == index``.

    ``torchrun`` is true when the shard comes from torchrun's environment (then ``index`` is
    ``RANK``, ``count`` is ``WORLD_SIZE``), false for ``--shard I/N``.
    """

    index: int
    count: int
    torchrun: bool = False
    local_rank: int = 0

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def indices(self, n: int) -> list[int]:
        """The indices (among all ``n`` images) of this shard, ascending."""
        return list(range(self.index, n, self.count))

    def check_size(self, n: int) -> None:
        """Refuse a shard that would be empty (more shards than images): its configuration
        (input shape) could not be known without reading another shard's images."""
        if self.index >= n:
            what = "ranks" if self.torchrun else "shards"
            raise OptionError(f"{self.count} {what} but only {n} images: shard {self.label} "
                              f"would be empty; use at most {n} {what}")


_SHARD_RE = re.compile(r"^([0-9]+)/([0-9]+)$")


def parse_shard(text: str) -> Shard:
    """``"I/N"`` with integers ``0 <= I < N``, strictly (no spaces, no signs)."""
    match = _SHARD_RE.match(text)
    if match is None or not 0 <= int(match[1]) < int(match[2]):
        raise OptionError(f"--shard {text!r}: give I/N with 0 <= I < N, e.g. --shard 0/4 for "
                          "the first of 4 shards")
    return Shard(int(match[1]), int(match[2]))


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise OptionError(f"environment variable {name}={value!r} is not an integer "
                          "(set by torchrun)") from None


def torchrun_shard() -> Shard | None:
    """This process's shard under torchrun (``WORLD_SIZE`` > 1), else ``None``."""
    world = _env_int("WORLD_SIZE")
    if world is None or world <= 1:
        return None
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK")
    if rank is None or not 0 <= rank < world:
        raise OptionError(f"WORLD_SIZE={world} but RANK is {os.environ.get('RANK')!r}: start "
                          "attrcert with torchrun, or unset WORLD_SIZE")
    return Shard(rank, world, torchrun=True, local_rank=local or 0)


def select_shard(shard_option: str | None) -> Shard | None:
    """The shard of this process: from ``--shard I/N``, or from torchrun, or ``None``."""
    from_env = torchrun_shard()
    if shard_option is not None and from_env is not None:
        raise OptionError(f"--shard cannot be combined with torchrun (WORLD_SIZE="
                          f"{from_env.count}): torchrun already gives each rank its shard")
    return parse_shard(shard_option) if shard_option is not None else from_env


def secondary_rank() -> bool:
    """True in a torchrun rank other than 0 (which stays silent: rank 0 reports)."""
    try:
        shard = torchrun_shard()
    except OptionError:
        return False
    return shard is not None and shard.index != 0


# --- files -----------------------------------------------------------------------------------

def rank_file(output: Path, shard: Shard) -> Path:
    """torchrun's per-rank JSONL beside ``output``: ``STEM.rank<r>-of-<N>.jsonl``."""
    return output.with_name(f"{output.stem}.rank{shard.index}-of-{shard.count}.jsonl")


def sidecar(path: Path) -> Path:
    """The configuration file of a shard file: ``FILE.jsonl`` -> ``FILE.config.json``."""
    return path.with_name(f"{path.stem}.config.json")


def write_sidecar(path: Path, config: dict[str, Any], digest: str, shard: Shard) -> None:
    """Write (atomically) the whole run's configuration beside the shard file ``path``."""
    target = sidecar(path)
    tmp = target.with_name(target.name + ".tmp")
    write_text(tmp, dumps_strict({"config": config, "config_hash": digest,
                                  "shard": {"index": shard.index, "count": shard.count}},
                                 indent=2) + "\n")
    try:
        os.replace(tmp, target)
    except OSError as exc:
        raise cannot_write(target, exc) from None


# --- loading a shard ----------------------------------------------------------------------------

def shard_image_size(folder: Path, shard: Shard) -> tuple[int, int]:
    """``(H, W)`` of the first image of ``shard`` in ``folder`` (not of another shard's)."""
    files = image_files(folder)
    shard.check_size(len(files))
    arr = read_image(files[shard.index], None, None)
    return int(arr.shape[0]), int(arr.shape[1])


def load_shard_images(path: Path, shard: Shard, *, channels: int | None,
                      size: tuple[int, int] | None) -> tuple[Images, list[int]]:
    """The images of ``shard`` and their indices among all images.

    Returns ``(images, rows)``: ``images.tensor`` holds only the shard's images, in the
    order of ``rows`` (their indices among all images); ``images.sources`` names ALL images,
    so that the configuration hash and labels are those of the whole run. For a folder only
    the shard's files are decoded; a tensor file is read whole (it is one file).
    """
    if path.is_dir():
        files = image_files(path)
        shard.check_size(len(files))
        rows = shard.indices(len(files))
        mine = load_image_files([files[i] for i in rows], channels, size,
                                 where=f"images of shard {shard.label} in {path}")
        return Images(mine.tensor, [f.name for f in files]), rows
    everything = load_images(path, channels=channels, size=size)
    n = len(everything.sources)
    shard.check_size(n)
    rows = shard.indices(n)
    return Images(everything.tensor[rows].contiguous(), everything.sources), rows


def rank_device(device: str, shard: Shard | None) -> str:
    """Under torchrun, ``auto`` and ``cuda`` become ``cuda:LOCAL_RANK`` when CUDA is here;
    anything else (``cpu``, an explicit ``cuda:N``) is kept."""
    if shard is None or not shard.torchrun:
        return device
    if device in ("auto", "cuda") and torch.cuda.is_available():
        if shard.local_rank >= torch.cuda.device_count():
            raise OptionError(f"LOCAL_RANK {shard.local_rank} but this node has "
                              f"{torch.cuda.device_count()} GPUs: start at most that many "
                              "processes per node, or pass --device cpu")
        return f"cuda:{shard.local_rank}"
    return device


# --- torchrun -----------------------------------------------------------------------------------

@dataclass
class RankResult:
    """What a rank sends to the others at the end: its records, or why it failed."""

    rank: int
    digest: str | None = None
    config: dict[str, Any] | None = None
    records: list[Record] | None = None
    error: str | None = None
    exit_code: int = 0
    finished: int = 0


class RankFailed(Exception):
    """Some rank failed: ``message`` (for rank 0 to print) and the common exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


def run_torchrun(shard: Shard, device: str,
                 work: Callable[[], tuple[dict[str, Any], str, list[Record]]],
                 interrupted: type[BaseException]) -> tuple[dict[str, Any], list[Record]]:
    """Run ``work`` (this rank's shard: ``(config, config_hash, records)``) inside a process
    group, then gather every rank's records on every rank.

    The backend is gloo for CPU ranks, and ``cpu:gloo,cuda:nccl`` for CUDA ranks (the
    records, Python objects, travel over gloo). A failure of ``work`` on any rank (an error,
    ``interrupted``) is sent to all ranks, so that none waits forever and all exit with the
    same status: 2 for errors, 130 for an interruption. Raises :class:`RankFailed` then.

    Returns the whole run's configuration and all records sorted by index (the same on every
    rank), after checking that the ranks agree on the configuration and that every index
    ``0 .. n-1`` came exactly once.
    """
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(shard.local_rank)
    try:
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo",
                                timeout=GATHER_TIMEOUT)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise OptionError(f"WORLD_SIZE={shard.count} but torch.distributed cannot start "
                          f"({first}): start attrcert with torchrun, or unset WORLD_SIZE")\
            from None
    try:
        mine = RankResult(shard.index)
        try:
            config, digest, records = work()
            mine.config, mine.digest, mine.records = config, digest, records
        except AttrcertError as exc:
            mine.error, mine.exit_code = str(exc), 2
        except interrupted as exc:
            mine.error, mine.exit_code = "interrupted", 130
            mine.finished = int(getattr(exc, "finished", 0))
        except Exception as exc:  # still one line on rank 0, and no rank left waiting
            if os.environ.get("ATTRCERT_DEBUG"):
                import traceback

                traceback.print_exc()
            first = str(exc).splitlines()[0] if str(exc) else ""
            mine.error = (f"unexpected {exc.__class__.__name__}: {first} "
                          "(set ATTRCERT_DEBUG=1 for the traceback)")
            mine.exit_code = 2
        results: list[RankResult | None] = [None] * shard.count
        dist.all_gather_object(results, mine)
        # every rank has every result before any rank tears its connections down (without
        # this, a rank that left early could abort a slower one still receiving, seen once
        # on a loaded 2-core machine as "terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return combine([r for r in results if r is not None], shard.count)


def combine(results: Sequence[RankResult], world: int) -> tuple[dict[str, Any], list[Record]]:
    """All ranks' records, checked: same configuration, each index exactly once."""
    failed = [r for r in results if r.error is not None]
    if failed:
        code = 130 if any(r.exit_code == 130 for r in failed) else 2
        errors = sorted({r.error for r in failed if r.error})
        if len(failed) == world and len(errors) == 1:
            message = errors[0]  # the same error everywhere: say it once
        else:
            first = failed[0]
            others = (f" (and {len(failed) - 1} other rank(s) failed)" if len(failed) > 1 else "")
            message = f"rank {first.rank}: {first.error}{others}"
        raise RankFailed(message, code)
    digests = {r.digest for r in results}
    if len(digests) != 1:
        raise RankFailed("the ranks disagree on the configuration (different files, versions "
                         "or options on different nodes?): run the same command with the same "
                         "files and attrcert/torch versions everywhere", 2)
    config = results[0].config
    assert config is not None
    records = sorted((rec for r in results for rec in r.records or []),
                     key=lambda rec: rec["index"])
    indices = [rec["index"] for rec in records]
    if indices != list(range(int(config["samples"]))):
        raise RankFailed(f"the ranks returned {len(indices)} records for {config['samples']} "
                         "images (missing or repeated indices): a bug, please report it", 2)
    return config, records


# --- merging shard files -------------------------------------------------------------------------

def _read_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar(path)
    if not side.is_file():
        raise InputError(f"{path} has no {side.name} beside it: merge reads shard files written "
                         "by --shard I/N or torchrun, each with its configuration file")
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"cannot read {side}: {exc.__class__.__name__}: rerun that shard")\
            from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) \
            or not isinstance(meta.get("config_hash"), str):
        raise InputError(f"{side} is not an attrcert shard configuration: rerun that shard")
    return meta


def _read_records(path: Path, digest: str) -> list[Record]:
    """The records of a shard file, read only (a file cut short is refused, not repaired)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc.__class__.__name__}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            raise InputError(f"{path} line {number} is not JSON (a run cut short?): rerun "
                             "that shard to finish it, then merge") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("index"), int):
            raise InputError(f"{path} line {number} is not an attrcert record")
        if rec.get("config_hash") != digest:
            raise InputError(f"{path} line {number} has config_hash "
                             f"{rec.get('config_hash')}, not {digest} as its configuration "
                             f"file says: the file mixes configurations")
        records.append(rec)
    return records


def merge_shards(files: Sequence[Path]) -> tuple[dict[str, Any], list[Record]]:
    """Join shard files into the records of the whole run.

    Checks that every file has the same configuration (``config_hash`` of its sidecar and
    of each record), that no index appears twice, and that every index ``0 .. n-1`` of the
    ``n`` images of the configuration is present. Raises :class:`InputError` (one line)
    otherwise. Returns the configuration and the records sorted by index.
    """
    if not files:
        raise OptionError("give the shard files to merge, e.g. attrcert merge all.json "
                          "shard-*.jsonl")
    seen: dict[Path, Path] = {}
    for path in files:
        if not path.is_file():
            raise InputError(f"shard file {path} does not exist")
        if path.suffix.lower() != ".jsonl":
            raise InputError(f"{path} is not a .jsonl shard file (shards are written with "
                             "--output FILE.jsonl)")
        key = path.resolve()
        if key in seen:
            raise InputError(f"{path} is given twice")
        seen[key] = path
    first_meta = _read_sidecar(files[0])
    digest, config = first_meta["config_hash"], first_meta["config"]
    where: dict[int, Path] = {}
    records: list[Record] = []
    for path in files:
        meta = _read_sidecar(path)
        if meta["config_hash"] != digest:
            differ = sorted(k for k in set(config) | set(meta["config"])
                            if config.get(k) != meta["config"].get(k))
            detail = f" (differs in: {', '.join(differ[:6])})" if differ else ""
            raise InputError(f"{path} was made with another configuration than {files[0]}"
                             f"{detail}: merge only shards of the same run")
        for rec in _read_records(path, digest):
            index = rec["index"]
            if index in where:
                raise InputError(f"sample {index} ({rec.get('source')}) is in both "
                                 f"{where[index]} and {path}: merge each shard once")
            where[index] = path
            records.append(rec)
    n = config.get("samples")
    if not isinstance(n, int):
        raise InputError(f"{sidecar(files[0])} does not say how many samples the run has")
    outside = sorted(i for i in where if not 0 <= i < n)
    if outside:
        raise InputError(f"sample index {outside[0]} is outside 0..{n - 1}")
    missing = [i for i in range(n) if i not in where]
    if missing:
        shown = ", ".join(str(i) for i in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise InputError(f"{len(missing)} of {n} samples are missing (indices {shown}): a "
                         "shard file is missing or unfinished; rerun it, then merge")
    records.sort(key=lambda rec: rec["index"])
    return config, records
