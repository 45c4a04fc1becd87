"""``attrcert merge``: join shard files, checking that their configurations match and that
no sample is missing or repeated."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..document import SEAL, Record, record_seal
from ..errors import InputError, OptionError
from .shards import sidecar


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
        if not isinstance(rec, dict) or not isinstance(rec.get("index"), int) \
                or isinstance(rec["index"], bool):
            raise InputError(f"{path} line {number} is not an attrcert record")
        if rec.get("config_hash") != digest:
            raise InputError(f"{path} line {number} has config_hash "
                             f"{rec.get('config_hash')}, not {digest} as its configuration "
                             f"file says: the file mixes configurations")
        if rec.get(SEAL) != record_seal(rec):
            raise InputError(f"{path} line {number} was changed after attrcert wrote it (its "
                             f"{SEAL} does not match its fields): rerun that shard")
        del rec[SEAL]
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
            if index in where and where[index] == path:
                raise InputError(f"{path} holds sample {index} ({rec.get('source')}) twice: "
                                 "two runs wrote it, or it was edited; rerun that shard")
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
