"""``attrcert merge``: join the shard files of a ``--shard I/N`` job array."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..distributed import merge_shards, sidecar
from ..document import OUTPUT_SUFFIXES, write_document
from ..errors import OptionError
from ..writing import check_output_path
from .collisions import refuse_collisions
from .output import err


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
    check_output_path(out, "OUT")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OptionError(f"OUT {out}: use a .json, .jsonl or .csv file")
    shard_files: list[tuple[str, Path | None]] = []
    for f in files:
        shard_files += [("the shard file", f), ("the shard configuration file", sidecar(f)),
                        ("the shard lock file", f.with_name(f.name + ".lock"))]
    refuse_collisions([("OUT", out)], shard_files)
    config, records = merge_shards(files)
    recorded = [(f"the shards' {key}", Path(config[key]))
                for key in ("model", "images", "labels", "baseline")
                if isinstance(config.get(key), str) and config[key] not in ("zero",
                                                                            "class folders")]
    refuse_collisions([("OUT", out)], recorded)  # the shards' inputs, where they still are
    write_document(out, config, records)
    err.print(f"merged {len(records)} samples from {len(files)} shard files into {out}")
