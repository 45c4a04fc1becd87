"""The files a command reads and writes: outputs checked before any work (writable, of a
known kind, never one of the inputs), and the inputs' contents digested for the
configuration hash that resuming relies on."""

from __future__ import annotations

import sys
from pathlib import Path

from ..distributed import Shard, rank_file, sidecar
from ..document import OUTPUT_SUFFIXES
from ..errors import InputError, OptionError, one_line
from ..resume import file_sha256
from ..writing import check_output_path
from .collisions import refuse_collisions
from .options import CommandOptions, Method

__all__ = ["check_output_paths", "input_digests", "input_files", "output_files"]


def check_output_paths(opts: CommandOptions, shard: Shard | None = None) -> None:
    """Refuse outputs that cannot be written, and outputs that are inputs
    (:func:`attrcert.cli.collisions.refuse_collisions`), before any work."""
    if opts.output is not None:
        check_output_path(opts.output, "--output")
        if opts.output.suffix.lower() not in OUTPUT_SUFFIXES:
            raise OptionError(f"--output {opts.output}: use a .json, .jsonl or .csv file")
    if opts.save_attributions is not None:
        check_output_path(opts.save_attributions, "--save-attributions")
        if opts.save_attributions.suffix.lower() != ".safetensors":
            raise OptionError("--save-attributions needs a .safetensors file name")
    refuse_collisions(output_files(opts, shard), input_files(opts))


def output_files(opts: CommandOptions, shard: Shard | None) -> list[tuple[str, Path | None]]:
    """Every file a run writes, by what the user would call it."""
    out: list[tuple[str, Path | None]] = [("--output", opts.output),
                                          ("--save-attributions", opts.save_attributions)]
    if opts.output is not None and opts.output.suffix.lower() == ".jsonl":
        stream = opts.output
        if shard is not None and shard.torchrun:
            stream = rank_file(opts.output, shard)
            out.append(("--output's per-rank file", stream))
        out.append(("--output's lock file", stream.with_name(stream.name + ".lock")))
        if shard is not None:
            out.append(("--output's configuration file", sidecar(stream)))
    return out


def _arch_file(arch: str | None) -> Path | None:
    """The Python file ``--arch`` names (``file.py:factory``, or the file of an imported
    ``module:factory``), if any."""
    if arch is None or ":" not in arch:
        return None
    target = arch.rsplit(":", 1)[0].strip()
    if target.endswith(".py") or "/" in target or "\\" in target:
        return Path(target).expanduser()
    origin = getattr(sys.modules.get(target), "__file__", None)
    return Path(origin) if origin else None


def input_files(opts: CommandOptions) -> list[tuple[str, Path | None]]:
    """Every file (or folder of images) a run reads, by its option."""
    baseline = Path(opts.baseline) if opts.baseline != "zero" else None
    return [("MODEL", opts.model), ("IMAGES", opts.images), ("--labels", opts.labels),
            ("--baseline", baseline), ("--arch", _arch_file(opts.arch))]


def input_digests(opts: CommandOptions) -> dict[str, str | None]:
    """The SHA-256 of each input file the records depend on (the images have theirs in
    each record, ``input_sha256``): so that resuming refuses a replaced model, ``--arch``
    file, labels file or baseline."""
    files = {k: v for k, v in input_files(opts) if k != "IMAGES"}
    if opts.method is not Method.integrated_gradients:
        files["--baseline"] = None
    out: dict[str, str | None] = {}
    for name, path in files.items():
        try:
            out[name.lstrip("-").lower()] = None if path is None else file_sha256(path)
        except OSError as exc:
            raise InputError(f"cannot read {name} {path}: {one_line(exc)}") from None
    return out
