"""The run's document (docs/cli.md): records (one dict per sample, JSON-safe numbers, never
NaN or infinity), their summary, and the JSON, CSV and sealed JSONL they are written as."""

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

#: The assumption every bound of the paper rests on (docs/math.md §6), stated in each record.
ASSUMPTION = (
    "locally linear attribution on the ball (first-order Taylor expansion, docs/math.md §6)")


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
    """The JSON document of docs/cli.md: ``{"config", "samples", "summary"}``."""
    return {"config": config, "samples": list(records), "summary": summarize(records)}


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """JSON text that strict parsers accept: raises on NaN or infinity instead of writing them."""
    return json.dumps(obj, allow_nan=False, **kwargs)


#: What a spreadsheet reads as the start of a formula (OWASP's CSV injection list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_value(value: Any) -> str:
    """One CSV cell: lists joined with ``;``, ``None`` empty, booleans ``true``/``false``.

    Text that a spreadsheet would run as a formula (a file named ``=cmd|' -C calc'!A0.png``:
    text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) gets a
    leading ``'``, as OWASP recommends; numbers are written as they are."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = "; ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def document_text(path: Path, config: dict[str, Any], records: Sequence[Record]) -> str:
    """``records`` as the text of a ``.json`` (the document), ``.jsonl`` (a record per line)
    or ``.csv`` (a row per record, the union of keys as header) file, by ``path``'s suffix."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return dumps_strict(document(config, records), indent=2) + "\n"
    if suffix == ".jsonl":
        return "".join(jsonl_line(rec) + "\n" for rec in records)
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


#: The field of a JSONL line that seals it: :func:`record_seal` of the rest of the line.
SEAL = "record_sha256"


def record_seal(record: Record) -> str:
    """The SHA-256 of a record's canonical JSON (sorted keys, without :data:`SEAL`): a
    checksum that shows a line changed since attrcert wrote it (an edit by hand, a bad
    merge); anyone can recompute it, so it is no signature."""
    import hashlib

    body = {k: v for k, v in record.items() if k != SEAL}
    return hashlib.sha256(dumps_strict(body, sort_keys=True).encode()).hexdigest()


def jsonl_line(record: Record) -> str:
    """A record as one JSONL line (no newline), sealed with :data:`SEAL` last."""
    body = {k: v for k, v in record.items() if k != SEAL}
    return dumps_strict({**body, SEAL: record_seal(body)})


class JsonlAppender:
    """Appends one sealed record per line (:func:`jsonl_line`) as each sample finishes,
    flushed and fsynced, so an interrupted run keeps every finished sample."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = Appender(path)

    def append(self, record: Record) -> None:
        self._out.append(jsonl_line(record))

    def close(self) -> None:
        self._out.close()
