"""Shards of the images (``--shard I/N`` and torchrun ranks): which images a shard holds,
its files (per-rank JSONL, the configuration sidecar), loading only its images, its device."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..document import dumps_strict
from ..errors import OptionError
from ..loading import (
    Geometry,
    Images,
    image_files,
    image_size,
    list_images,
    load_images,
    load_listed,
)
from ..writing import cannot_write, write_text


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



def shard_image_size(folder: Path, shard: Shard) -> tuple[int, int]:
    """``(H, W)`` of the first image of ``shard`` in ``folder`` (not of another shard's), as
    stored (before any resizing)."""
    files = image_files(folder)
    shard.check_size(len(files))
    return image_size(files[shard.index])


def load_shard_images(path: Path, shard: Shard, *, channels: int | None,
                      geometry: Geometry | None = None,
                      value_range: str = "unit") -> tuple[Images, list[int]]:
    """The images of ``shard`` and their indices among all images.

    Returns ``(images, rows)``: ``images.tensor`` holds only the shard's images, in the
    order of ``rows`` (their indices among all images); ``images.sources`` (and the labels
    of class folders) cover ALL images, so that the configuration hash and labels are those
    of the whole run. For a folder only the shard's files are decoded; a tensor file is read
    whole (it is one file), its values read as ``value_range`` says
    (:func:`attrcert.loading.load_images`).
    """
    if path.is_dir():
        listing = list_images(path)
        shard.check_size(len(listing.files))
        rows = shard.indices(len(listing.files))
        mine = load_listed(listing, rows, channels, geometry or Geometry(),
                           where=f"images of shard {shard.label} in {path}")
        return mine, rows
    everything = load_images(path, channels=channels, geometry=geometry,
                             value_range=value_range)
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
