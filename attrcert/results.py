"""Records: one dict per sample, with JSON-safe numbers (never NaN or infinity)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

Record = dict[str, Any]

#: The assumption every bound of the paper rests on (SPEC §6), stated in each record.
ASSUMPTION = "locally linear attribution on the ball (first-order Taylor; SPEC §6)"


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` if it is missing, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


SUMMARY_KEYS = ("xi_max", "T_e", "T_e_prime", "T_c_deg", "T_c_prime_deg", "label_radius",
                "eps_max", "attr_norm", "seconds")


def summarize(records: Sequence[Record], keys: Iterable[str] = SUMMARY_KEYS) -> dict[str, Any]:
    """Mean / median / max of each numeric key over the samples (the paper's tables report means),
    the count of vacuous cosine bounds and the share of samples whose label is preserved."""
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
    return out
