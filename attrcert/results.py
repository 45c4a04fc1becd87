"""Records: one dict per sample, with JSON-safe numbers (never NaN or infinity)."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .writing import Appender, write_text

Record = dict[str, Any]

#: The assumption every bound of the paper rests on (SPEC §6), stated in each record.
ASSUMPTION = "locally linear attribution on the ball (first-order Taylor expansion, SPEC 6)"


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` if it is missing, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def format_value(value: Any, digits: int = 3) -> str:
    """A record's value for a table cell: ``-`` for missing, yes/no for booleans, floats to
    ``digits`` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


SUMMARY_KEYS = ("xi_max", "T_e", "T_e_prime", "T_c_deg", "T_c_prime_deg", "label_radius",
                "eps_max", "attr_norm", "T_e_hat", "T_c_hat_deg", "eta_vmax", "eta_attack",
                "T_e_sound", "T_c_sound_deg", "seconds",
                # attrcert smooth (docs/smoothing.md)
                "cos_sim_lower", "angle_deg", "h_norm", "h_norm_lower", "deviation_bound",
                "radius_min", "certified_fraction", "certified_top_fraction")


def summarize(records: Sequence[Record], keys: Iterable[str] = SUMMARY_KEYS) -> dict[str, Any]:
    """Mean / median / max of each numeric key over the samples (the paper's tables report means),
    the count of vacuous cosine bounds, the share of samples whose label is preserved and,
    when an attack checked the bounds, how many it exceeded."""
    out: dict[str, Any] = {"samples": len(records)}
    for key in keys:
        values = [r[key] for r in records if isinstance(r.get(key), (int, float))
                  and not isinstance(r.get(key), bool)]
        if values:
            out[key] = {
                "mean": statistics.fmean(values),
                "median": statistics.median(values),
                "max": max(values),
            }
    if any("vacuous" in r for r in records):
        out["vacuous_cosine"] = sum(1 for r in records if r.get("vacuous"))
    flags = [r["label_preserved"] for r in records if r.get("label_preserved") is not None]
    if flags:
        out["label_preserved_fraction"] = sum(flags) / len(flags)
    checked = [r for r in records if r.get("attack_checked")]
    if checked:  # as the paper's Tables 9-10: the share of samples outside the bound
        out["violations"] = sum(1 for r in checked if r["violation"])
        out["violation_fraction"] = out["violations"] / len(checked)
        out["cosine_violations"] = sum(1 for r in checked if r["violation_cosine"])
    return out


# --- writers -----------------------------------------------------------------------------

OUTPUT_SUFFIXES = (".json", ".jsonl", ".csv")


def document(config: dict[str, Any], records: Sequence[Record]) -> dict[str, Any]:
    """The JSON document of SPEC §7: ``{"config", "samples", "summary"}``."""
    return {"config": config, "samples": list(records), "summary": summarize(records)}


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """JSON text that strict parsers accept: raises on NaN or infinity instead of writing them."""
    return json.dumps(obj, allow_nan=False, **kwargs)


def csv_value(value: Any) -> str:
    """One CSV cell: lists joined with ``;``, ``None`` empty, booleans ``true``/``false``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value)
    return str(value)


def document_text(path: Path, config: dict[str, Any], records: Sequence[Record]) -> str:
    """``records`` as the text of a ``.json`` (the document), ``.jsonl`` (a record per line)
    or ``.csv`` (a row per record, the union of keys as header) file, by ``path``'s suffix."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return dumps_strict(document(config, records), indent=2) + "\n"
    if suffix == ".jsonl":
        return "".join(dumps_strict(rec) + "\n" for rec in records)
    if suffix == ".csv":
        keys: list[str] = []
        for rec in records:
            keys.extend(k for k in rec if k not in keys)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(keys)
        for rec in records:
            writer.writerow([csv_value(rec.get(k)) for k in keys])
        return buffer.getvalue()
    raise ValueError(f"unsupported output suffix {suffix!r}: use {', '.join(OUTPUT_SUFFIXES)}")


def write_document(path: Path, config: dict[str, Any], records: Sequence[Record]) -> None:
    """Write ``records`` to ``path`` (:func:`document_text`); a failed write raises
    :class:`~attrcert.errors.OutputError`."""
    write_text(path, document_text(path, config, records))


class JsonlAppender:
    """Appends one record per line as each sample finishes, flushed and fsynced, so an
    interrupted run keeps every finished sample."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = Appender(path)

    def append(self, record: Record) -> None:
        self._out.append(dumps_strict(record))

    def close(self) -> None:
        self._out.close()


# --- resuming interrupted runs ----------------------------------------------------------------

def config_hash(config: dict[str, Any], sources: Sequence[str]) -> str:
    """A short digest of everything that determines the records (settings, versions, inputs):
    records carry it, so a rerun only reuses records of the same configuration."""
    import hashlib

    text = dumps_strict({"config": config, "sources": list(sources)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ResumeError(ValueError):
    """A JSONL file that cannot be resumed (another configuration, or not attrcert's)."""


def finished_records(path: Path, digest: str) -> dict[int, Record]:
    """The records of ``path`` (a JSONL file of an earlier run) by index, for resuming.

    A last line cut short by a crash is dropped, and the file is rewritten without it so
    that appending continues on a clean line. Raises :class:`ResumeError` if a record was
    made with another configuration.
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
    kept: list[str] = []
    for number, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the sample in flight when the run was killed
                break
            raise ResumeError(f"{path} line {number} is not JSON: delete the file to "
                              "start over") from None
        if not isinstance(rec, dict) or "index" not in rec:
            raise ResumeError(f"{path} line {number} is not an attrcert record")
        if rec.get("config_hash") != digest:
            raise ResumeError(f"{path} holds results of another configuration: use "
                              "another --output file or delete it")
        records[int(rec["index"])] = rec
        kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines) or (lines and not lines[-1].endswith("\n")):
        write_text(path, "".join(kept))
    return records
