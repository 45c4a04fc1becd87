"""What the commands print: tables and the JSON document on stdout (every write checked,
:mod:`attrcert.writing`), one-line messages on stderr, and the ``--fail-*`` /
``--require-*`` gates (exit 1)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import typer
from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..distributed import secondary_rank
from ..results import Record, document, dumps_strict, format_value, summarize
from ..writing import write_stdout

#: stderr: progress, warnings and errors (stdout holds results only).
err = Console(stderr=True, soft_wrap=True, highlight=False)


def stdout_console() -> Console:
    """The terminal as it is; 120 columns when piped, so that tables keep whole numbers."""
    out = Console(highlight=False, soft_wrap=True)
    return out if out.is_terminal else Console(width=120, highlight=False, soft_wrap=True)


def print_stdout(*renderables: Any) -> None:
    """Print to standard output through :func:`attrcert.writing.write_stdout` (checked):
    rendered as the terminal would show them, then written in one go."""
    real = stdout_console()
    buffer = io.StringIO()
    console = Console(file=buffer, width=real.width, highlight=False, soft_wrap=True,
                      force_terminal=real.is_terminal, color_system=real.color_system)
    for item in renderables:
        console.print(item)
    write_stdout(buffer.getvalue())


def emit(as_json: bool, config: dict[str, Any], records: list[Record],
          columns: Sequence[tuple[str, str]], title: str,
          summary_keys: Sequence[tuple[str, str]], footer: str) -> None:
    if secondary_rank():  # torchrun: rank 0 prints the whole run
        return
    if as_json:
        write_stdout(dumps_strict(document(config, records), indent=2) + "\n")
        return
    table = Table(title=f"{method_label(config)}: {title}", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    if any("predicted_smoothed" in r for r in records):
        at = [key for key, _ in columns].index("predicted") + 1 \
            if any(key == "predicted" for key, _ in columns) else len(columns)
        columns = [*columns[:at], ("predicted_smoothed", "pred smoothed"), *columns[at:]]
    for key, header in columns:
        table.add_column(header, justify="left" if key == "source" else "right", no_wrap=True)
    for rec in records:
        table.add_row(*(format_value(rec.get(key)) for key, _ in columns))
    summary = summarize(records)
    stats = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("", "mean", "median", "max"):
        stats.add_column(header, justify="right")
    for key, header in summary_keys:
        if isinstance(summary.get(key), dict):
            s = summary[key]
            stats.add_row(header, *(format_value(s[stat], 4) for stat in ("mean", "median", "max")))
    lines = [f"{summary['samples']} samples"]
    if "vacuous_cosine" in summary:
        lines.append(f"vacuous cosine bounds: {summary['vacuous_cosine']}")
    if "label_preserved_fraction" in summary:
        lines.append(f"label preserved (Prop. 1): {100 * summary['label_preserved_fraction']:.0f}%")
    if "violations" in summary:
        lines.append(f"attack exceeded the Euclidean bound: {summary['violations']} "
                     f"({100 * summary['violation_fraction']:.0f}%); the cosine bound: "
                     f"{summary['cosine_violations']}")
    wrong = sum(1 for r in records if r["target"] != r["predicted"])
    if wrong:
        lines.append(f"target != prediction: {wrong} (label radius 0)")
    differ = sum(1 for r in records if r.get("smoothed_agrees") is False)
    if differ:
        lines.append(f"smoothed prediction != original: {differ}")
    notes = [f"degenerate: {r.get('source', r['index'])}: {'; '.join(r['degenerate'])}"
             for r in records if r.get("degenerate")]
    print_stdout(table, *([Text("\n".join(notes))] if notes else []),
                 Panel(Group(stats, Text("\n".join(lines))), title="summary", expand=False),
                 footer)


def method_label(config: dict[str, Any]) -> str:
    """The attribution a run certifies, for the table's title: the method, integrated
    gradients' steps ``m``, and beta-smoothing."""
    method = str(config.get("method"))
    label = method.replace("_x_", " x ").replace("_", " ")
    if method == "integrated_gradients" and config.get("steps"):
        label += f", m = {config['steps']}"
    if config.get("beta_smooth") is not None:
        label += f", beta-smoothed (beta = {config['beta_smooth']:g})"
    return label


def gate(failures: list[str], what: str) -> str | None:
    if not failures:
        return None
    shown = ", ".join(failures[:8]) + (f" and {len(failures) - 8} more" if len(failures) > 8
                                       else "")
    return f"gate failed: {what} for {len(failures)} sample(s): {shown}"


def finish(messages: list[str | None]) -> None:
    failed = [m for m in messages if m]
    for message in failed:
        err.print(message)
    if failed:
        raise typer.Exit(1)


LABEL_COLUMNS = [("label_preserved", "Prop.1"), ("label_radius", "radius")]
ATTACK_COLUMNS = [("T_e_hat", "T_e^"), ("attack_ratio", "T_e^/bound"),
                  ("T_c_hat_deg", "T_c^ deg"), ("eta_attack", "eta"), ("verdict", "attack")]


def add_table_fields(records: list[Record]) -> None:
    """Table-only helpers: the attacked deviation over the bound it was checked against."""
    for r in records:
        if r.get("attack_checked"):
            bound = r["T_e_prime"] if r["T_e_prime"] is not None else r["T_e"]
            r["attack_ratio"] = r["T_e_hat"] / bound if bound else None
            r["verdict"] = "VIOLATED" if not r["verified"] else "held"


def verified_gate(records: list[Record], required: bool) -> str | None:
    return gate([f"{r['source']} (T_e^ {format_value(r['T_e_hat'])})" for r in records
                  if required and not r.get("verified", True)],
                 "an attack exceeded the bound")
