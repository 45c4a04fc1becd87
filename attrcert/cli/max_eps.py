"""``attrcert max-eps``: the largest eps whose bound stays within a tolerance (Appendix E)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer

from ..certify import max_eps_run
from ..document import Record, format_value
from ..errors import OptionError
from ..perturbation import norm_label, parse_norm
from ..run import Hooks, RunInputs, prepare_run
from ..tolerance import Tolerance
from .options import (
    OUTPUTS,
    SHARED,
    CommandOptions,
    Format,
    ImagesArg,
    Metric,
    ModelArg,
    NormOpt,
    common_options,
    finite,
)
from .output import emit, finish, gate
from .runner import run_command


@dataclass(frozen=True)
class MaxEpsJob:
    """``max-eps``: the largest eps of the norm ``p`` ball within ``tolerance``."""

    p: float
    tolerance: Tolerance
    command: str = "max-eps"

    def config(self) -> dict[str, Any]:
        return {"omega": self.tolerance.omega, "metric": self.tolerance.metric,
                "norm": norm_label(self.p), "modified": self.tolerance.modified}

    def run(self, inputs: RunInputs, hooks: Hooks) -> list[Record]:
        return max_eps_run(prepare_run(inputs, self.p), self.p, self.tolerance, hooks)


@common_options(SHARED, OUTPUTS)
def max_eps_command(
    model: ModelArg,
    images: ImagesArg,
    opts: CommandOptions,
    omega: Annotated[float, typer.Option(
        callback=finite, help="Tolerance: a distance (euclidean), a cosine distance in "
        "(0, 1], or degrees in (0, 90] (angle).", show_default=False)],
    metric: Annotated[Metric, typer.Option(help="What omega bounds.")] = Metric.euclidean,
    norm: NormOpt = "2",
    modified: Annotated[bool, typer.Option(
        help="Use T'_e = c(eps) xi_max eps (l2 only), solved by bisection.")] = False,
    require_eps_above: Annotated[float | None, typer.Option(
        callback=finite, help="Exit 1 if any sample's eps_max is below this.")] = None,
) -> None:
    """The largest eps whose bound stays within --omega, for each image (Appendix E).

    Example: attrcert max-eps sample_models/digits_softplus.pt2 sample_models/digits
    --omega 5 --metric angle
    """
    job = MaxEpsJob(parse_norm(norm), Tolerance(omega, metric.value, modified))
    if modified and job.p != 2:
        raise OptionError("--modified (T'_e) is defined for the l2 norm only: use --norm 2")
    config, records = run_command(opts, job)
    columns = [("source", "source"), ("predicted", "pred"), ("target", "y"),
               ("attr_norm", "||g||"), ("xi_max", "xi_max"), ("eps_max_linear", "eps (T_e)"),
               ("eps_max", "eps_max")]
    unit = {"euclidean": "", "cosine": " (cosine distance)", "angle": " degrees"}[metric.value]
    emit(opts.format is Format.json, config, records, columns,
         f"largest eps with {'T_e_prime' if modified else 'T_e'} within {omega}{unit}, "
         f"l{norm_label(job.p)} ball", [("eps_max", "eps_max"), ("xi_max", "xi_max")],
         "eps_max: Appendix E (Eq. 50, and Eq. 52 as corrected in docs/math.md §5); assumes a "
         "locally linear attribution; '-' means no eps exceeds the tolerance.")
    finish([gate([f"{r['source']} ({format_value(r['eps_max'])})" for r in records
                  if require_eps_above is not None and r["eps_max"] is not None
                  and r["eps_max"] < require_eps_above],
                 f"eps_max < {require_eps_above}")])
