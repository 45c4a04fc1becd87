"""What the commands print: tables and the JSON document on stdout (every write checked,
:mod:`attrcert.writing`), one-line messages on stderr, and the ``--fail-*`` /
``--require-*`` gates (exit 1).

User text (file names, option values, a checker's message quoting them) is printed as it
is, never read as rich markup (``[/]`` in a file name is just text), and its control
characters are shown escaped (:func:`terminal_safe`): a file name cannot move the cursor,
recolour or clear the terminal."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from typing import Any

import typer
from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..distributed import secondary_rank
from ..document import Record, document, dumps_strict, format_value, summarize
from ..writing import write_stdout

_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """``text`` with every control character (C0 including newline and ESC, DEL, C1)
    written as a visible escape, e.g. ESC as ``\\x1b``."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class SafeConsole(Console):
    """A console that prints strings literally (no markup) with :func:`terminal_safe`."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        super().print(*(terminal_safe(o) if isinstance(o, str) else o for o in objects),
                      **kwargs)


#: stderr: progress, warnings and errors (stdout holds results only).
err = SafeConsole(stderr=True, soft_wrap=True, highlight=False, markup=False)


def stdout_console() -> Console:
    """The terminal as it is; 120 columns when piped, so that tables keep whole numbers."""
    out = Console(highlight=False, soft_wrap=True)
    return out if out.is_terminal else Console(width=120, highlight=False, soft_wrap=True)


def print_stdout(*renderables: Any) -> None:
    """Print to standard output through :func:`attrcert.writing.write_stdout` (checked):
    rendered as the terminal would show them (strings literally, never as markup: user
    text in them must have passed :func:`terminal_safe`), then written in one go."""
    real = stdout_console()
    buffer = io.StringIO()
    console = Console(file=buffer, width=real.width, highlight=False, soft_wrap=True,
                      force_terminal=real.is_terminal,
                      color_system=real.color_system,  # type: ignore[arg-type]  # rich: str
                      markup=False)
    for item in renderables:
        console.print(item)
    write_stdout(buffer.getvalue())


def cell(value: Any, digits: int = 3) -> Text:
    """A table cell: :func:`format_value`, as literal text (:func:`terminal_safe`)."""
    return Text(terminal_safe(format_value(value, digits)))


#: A table column: ``(key, header)``; the key names a record field, or is a function that
#: computes the cell from the record (a column of the table only, never written to it).
Column = tuple[str | Callable[[Record], Any], str]


def value(rec: Record, key: str | Callable[[Record], Any]) -> Any:
    """A column's value for ``rec``."""
    return key(rec) if callable(key) else rec.get(key)


def emit(as_json: bool, config: dict[str, Any], records: list[Record],
         columns: Sequence[Column], title: str,
         summary_keys: Sequence[tuple[str, str]], footer: str) -> None:
    if secondary_rank():  # torchrun: rank 0 prints the whole run
        return
    if as_json:
        write_stdout(dumps_strict(document(config, records), indent=2) + "\n")
        return
    table = Table(title=Text(terminal_safe(f"{method_label(config)}: {title}")),
                  box=box.SIMPLE_HEAD, pad_edge=False)
    if any("predicted_smoothed" in r for r in records):
        at = [key for key, _ in columns].index("predicted") + 1 \
            if any(key == "predicted" for key, _ in columns) else len(columns)
        columns = [*columns[:at], ("predicted_smoothed", "pred smoothed"), *columns[at:]]
    for key, header in columns:
        table.add_column(header, justify="left" if key == "source" else "right", no_wrap=True)
    for rec in records:
        table.add_row(*(cell(value(rec, key)) for key, _ in columns))
    summary = summarize(records)
    stats = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("", "mean", "median", "max"):
        stats.add_column(header, justify="right")
    for key, header in summary_keys:
        if isinstance(summary.get(key), dict):
            s = summary[key]
            stats.add_row(header, *(cell(s[stat], 4) for stat in ("mean", "median", "max")))
    lines = [f"{summary['samples']} samples"]
    if "vacuous_cosine" in summary:
        lines.append(f"vacuous cosine bounds: {summary['vacuous_cosine']}")
    if "label_preserved_fraction" in summary:
        lines.append(f"label preserved (Prop. 1, first-order): "
                     f"{100 * summary['label_preserved_fraction']:.0f}%")
    lines.extend(label_lines(records))
    if "violations" in summary:
        lines.append(f"attack exceeded the Euclidean bound: {summary['violations']} "
                     f"({100 * summary['violation_fraction']:.0f}%); the cosine bound: "
                     f"{summary['cosine_violations']}")
    wrong = sum(1 for r in records if r["target"] != r["predicted"])
    if wrong:
        radius = " (label radius 0)" if any("label_radius" in r for r in records) else ""
        lines.append(f"target != prediction: {wrong}{radius}")
    differ = sum(1 for r in records if r.get("smoothed_agrees") is False)
    if differ:
        lines.append(f"smoothed prediction != original: {differ}")
    notes = [f"degenerate: {r.get('source', r['index'])}: {'; '.join(r['degenerate'])}"
             for r in records if r.get("degenerate")]
    print_stdout(table, *([Text("\n".join(map(terminal_safe, notes)))] if notes else []),
                 Panel(Group(stats, Text("\n".join(map(terminal_safe, lines)))),
                       title="summary", expand=False),
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


def attack_ratio(rec: Record) -> float | None:
    """The attacked deviation over the bound it was checked against (``T_e_prime`` for l2,
    else ``T_e``)."""
    if not rec.get("attack_checked"):
        return None
    bound = rec["T_e_prime"] if rec["T_e_prime"] is not None else rec["T_e"]
    return rec["T_e_hat"] / bound if bound else None


def verdict(rec: Record) -> str | None:
    """What the attack found: ``held``, ``VIOLATED`` (it beat a bound) or ``label`` (only
    Proposition 1's claim was broken)."""
    if not rec.get("attack_checked"):
        return None
    if rec["verified"]:
        return "held"
    return "VIOLATED" if rec.get("violation") or rec.get("violation_cosine") else "label"


LABEL_COLUMNS: list[Column] = [("label_preserved", "Prop.1"), ("label_radius", "radius")]
ATTACK_COLUMNS: list[Column] = [("T_e_hat", "T_e^"), (attack_ratio, "T_e^/bound"),
                                ("T_c_hat_deg", "T_c^ deg"), ("eta_attack", "eta"),
                                (verdict, "attack")]


def label_lines(records: list[Record]) -> list[str]:
    """The summary's lines on the label: what the label attack found against Proposition 1
    (first-order) and how many labels sound mode proved."""
    lines = []
    if any("label_radius_violated" in r for r in records):
        inside = sum(1 for r in records if r.get("label_radius_violated"))
        preserved = sum(1 for r in records if r.get("label_preserved_violated"))
        lines.append(f"label changed inside label_radius: {inside}; where Prop. 1 said "
                     f"kept: {preserved}")
    if any("label_certified" in r for r in records):
        proved = sum(1 for r in records if r.get("label_certified"))
        lines.append(f"label proved on the ball (--sound): {proved} of {len(records)}")
    return lines


def verified_gate(records: list[Record], required: bool) -> str | None:
    """``--require-verified``: the attack beat a bound or changed the label where
    Proposition 1 said it could not (``verified`` false)."""
    return gate([f"{r['source']} (T_e^ {format_value(r['T_e_hat'])}"
                 + (", label changed" if r.get("label_radius_violated")
                    or r.get("label_preserved_violated") else "") + ")"
                 for r in records if required and not r.get("verified", True)],
                "an attack exceeded the bound (or changed the label where Proposition 1 said "
                "it could not)")
