"""``attrcert merge``: join the shard files of a ``--shard I/N`` job array."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..distributed import merge_shards
from ..errors import OptionError
from ..results import OUTPUT_SUFFIXES, write_document
from ..writing import check_output_path
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
    if any(out.resolve() == f.resolve() for f in files):
        raise OptionError(f"OUT {out} is one of the shard files: write the merge elsewhere")
    config, records = merge_shards(files)
    write_document(out, config, records)
    err.print(f"merged {len(records)} samples from {len(files)} shard files into {out}")
