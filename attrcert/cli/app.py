"""The Typer app: every command registered on one app, and :func:`main`, which turns every
failure into one line on stderr and an exit status (docs/cli.md: 0 all fine; 1 a ``--fail-*`` /
``--require-*`` gate failed; 2 bad usage or bad input; 130 interrupted)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from .. import __version__
from ..distributed import secondary_rank
from ..errors import AttrcertError
from ..writing import write_stdout
from . import interrupts
from .bound import attack, bound
from .inspect import inspect
from .max_eps import max_eps_command
from .merge import merge
from .output import err
from .report import report
from .runner import Interrupted
from .smooth import smooth_command

try:  # typer < 0.20 uses click itself; later releases vendor it as TyperException
    from click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - depends on the installed typer
    _ClickException = typer.exceptions.TyperException  # type: ignore[misc,assignment]
USAGE_ERRORS: tuple[type[Exception], ...] = (_ClickException,
                                             typer.exceptions.TyperException)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Upper bounds on how far a gradient attribution can move when the input is "
    "perturbed within an eps-ball (Wang & Kong, CVPR 2023). The bounds assume a locally "
    "linear attribution: they are estimates, not guarantees, for non-smooth models.",
)


def _version(value: bool) -> None:
    if value:
        write_stdout(f"attrcert {__version__}\n")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """attrcert: certify how far gradient attributions can move."""


app.command()(bound)
app.command()(attack)
app.command()(report)
app.command("max-eps")(max_eps_command)
app.command()(inspect)
app.command()(merge)
app.command("smooth")(smooth_command)


def _interrupted(exc: Interrupted) -> None:
    where = exc.output
    if where is not None and where.suffix.lower() == ".jsonl":
        err.print(f"interrupted: {exc.finished} finished samples are in {where}; run the "
                  "same command again to resume")
    else:
        err.print(f"interrupted after {exc.finished} samples, which were not saved: "
                  "use --output FILE.jsonl to keep finished samples and resume")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI: usage and input errors become one line on stderr and exit status 2."""
    if secondary_rank():  # torchrun: rank 0 reports for all ranks (their errors included)
        err.quiet = True
    try:
        with interrupts.watch():  # a second Ctrl-C aborts even inside a long operator
            code = app(args=list(argv) if argv is not None else None, prog_name="attrcert",
                       standalone_mode=False)
    except USAGE_ERRORS as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        err.print(f"error: {exc.format_message()}{hint}")  # type: ignore[attr-defined]
        sys.exit(2)
    except Interrupted as exc:
        _interrupted(exc)
        sys.exit(130)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except AttrcertError as exc:
        if getattr(exc, "every_rank", False):  # torchrun's ranks did not meet: no rank 0
            err.quiet = False
        err.print(f"error: {exc}")  # literally: messages may hold [brackets]
        sys.exit(2)
    except Exception as exc:  # a bug or an incompatible model: still one line, no traceback
        if os.environ.get("ATTRCERT_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        err.print(f"error: unexpected {exc.__class__.__name__}: {first} "
                  "(set ATTRCERT_DEBUG=1 for the traceback)")
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
