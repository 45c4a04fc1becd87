"""``attrcert bound`` and ``attrcert attack``: the bounds of docs/math.md §2 and Proposition 1 at
``--eps``, checked by an attack with ``--verify`` (``attack`` always attacks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer

from ..certify import certify_run
from ..document import Record, format_value
from ..errors import OptionError
from ..perturbation import Perturbation, parse_norm
from ..run import Hooks, RunInputs, prepare_run
from ..settings import AttackOptions, LabelOptions
from .options import (
    ATTACK,
    OUTPUTS,
    SHARED,
    CommandOptions,
    EpsOpt,
    Format,
    ImagesArg,
    LabelGradient,
    LabelGradOpt,
    ModelArg,
    NormOpt,
    RequireVerifiedOpt,
    common_options,
    finite,
)
from .output import ATTACK_COLUMNS, LABEL_COLUMNS, Column, emit, finish, gate, verified_gate
from .runner import run_command


def attack_config(attack: AttackOptions) -> dict[str, Any]:
    """The configuration entries of a run checked by an attack."""
    return {"attack_checked": True, "attack_steps": attack.steps,
            "attack_restarts": attack.restarts, "seed": attack.seed}


@dataclass(frozen=True)
class CertifyJob:
    """``bound`` / ``attack``: the bounds and Proposition 1 on ``perturbation``'s ball, with
    ``attack`` checking them (``None``: no attack) and with ``sound``'s proved bound."""

    command: str
    perturbation: Perturbation
    label: LabelOptions
    attack: AttackOptions | None = None
    sound: bool = False

    def config(self) -> dict[str, Any]:
        return {"eps": self.perturbation.eps, "norm": self.perturbation.label,
                "label_gradient": self.label.how, **({"sound": True} if self.sound else {}),
                **(attack_config(self.attack) if self.attack is not None else {})}

    def run(self, inputs: RunInputs, hooks: Hooks) -> list[Record]:
        run = prepare_run(inputs, self.perturbation.norm)
        return certify_run(run, self.perturbation, label=self.label, attack=self.attack,
                           sound=self.sound, hooks=hooks)


def certify_command(opts: CommandOptions, job: CertifyJob) -> list[Record]:
    """Run ``job`` on every image, print the table or JSON, return the records."""
    config, records = run_command(opts, job)
    verify, sound = job.attack is not None, job.sound
    pert = job.perturbation
    base: list[Column] = [
        ("source", "source"), ("predicted", "pred"), ("target", "y"),
        *([] if verify else [("attr_norm", "||g||"), ("xi_max", "xi_max")]),
        ("T_e", "T_e"), ("T_e_prime", "T'_e"), ("T_c_deg", "T_c deg"),
        *([("T_e_sound", "T_e sound")] if sound else []),
        *([("label_certified", "label proved")] if sound and not verify else [])]
    summary_keys = [("T_e", "T_e"), ("T_e_prime", "T'_e"), ("T_c_deg", "T_c (deg)"),
                    ("xi_max", "xi_max"), ("attr_norm", "||g||"),
                    ("label_radius", "label radius")]
    if verify:
        summary_keys = [("T_e_hat", "T_e^ (attack)"), *summary_keys[:3],
                        ("T_c_hat_deg", "T_c^ (deg, attack)"), ("eta_vmax", "eta (v_max)"),
                        ("eta_attack", "eta (attack)")]
    if sound:
        summary_keys = [*summary_keys[:3], ("T_e_sound", "T_e sound"), *summary_keys[3:]]
    which = "Theorem 1" if pert.is_l2 else "Theorem 2 (l-inf) / Corollary 1 (lp)"
    checked = ("an attack (PGD" + (", IFIA" if pert.is_linf else "")
               + ") checked them: 'VIOLATED' means it beat the bound" if verify
               else "no attack checked them (add --verify)")
    label = ("Prop.1 and radius (label_preserved, label_radius): Proposition 1, first-order "
             "(Eq. 8 linearises the logits) like T_e, not a proof"
             + ("; the attack also tried to change the label inside them ('label' in the "
                "attack column: it did)." if verify else "."))
    emit(opts.format is Format.json, config, records,
         base + (ATTACK_COLUMNS if verify else LABEL_COLUMNS),
         f"attribution bounds, l{pert.label} ball, eps = {pert.eps}", summary_keys,
         f"T_e: {which}; T'_e: Eq. 11 (l2 only); T_c: Corollary 2. All assume a locally "
         f"linear attribution (docs/math.md §6); {checked}.\n{label}"
         + ("\nT_e sound: proved for every x' in the ball, in float64 with outward rounding "
            "plus a bound on torch's rounding in the model's precision, no linearity "
            "assumption (interval arithmetic / mean-value theorem, attrcert.sound). "
            "label proved: the same proof bounds f_y - max f_j over the ball (margin_lower "
            "> 0)."
            if sound else ""))
    return records


@common_options(SHARED, OUTPUTS, ATTACK)
def bound(
    model: ModelArg,
    images: ImagesArg,
    opts: CommandOptions,
    eps: EpsOpt = 0.1,
    norm: NormOpt = "2",
    label_gradient: LabelGradOpt = LabelGradient.completeness,
    verify: Annotated[bool, typer.Option(
        help="Also attack each attribution and mark bounds the attack exceeded.")] = False,
    sound: Annotated[bool, typer.Option(
        help="Also prove T_e_sound, a bound with no linearity assumption (interval "
        "arithmetic and the mean-value theorem in float64, plus torch's rounding in the "
        "model's precision); needs a graph of Linear, Conv2d, average pooling/means, "
        "Flatten, BatchNorm, residual adds, products, concatenation and "
        "Tanh/Sigmoid/Softplus/SiLU/GELU.")] = False,
    fail_above_te: Annotated[float | None, typer.Option(
        callback=finite, help="Exit 1 if any sample's T_e exceeds this.")] = None,
    fail_above_tc_deg: Annotated[float | None, typer.Option(
        callback=finite, help="Exit 1 if any sample's cosine bound exceeds this many "
        "degrees.")] = None,
    require_label_preserved: Annotated[bool, typer.Option(
        help="Exit 1 unless the label is shown preserved on the ball for every sample: "
        "proved with --sound (label_certified), else by Proposition 1, which is "
        "first-order, and not broken by the label attack of --verify.")] = False,
    require_verified: RequireVerifiedOpt = False,
) -> None:
    """Bound how far each image's attribution can move within the eps-ball.

    Example: attrcert bound sample_models/digits_softplus.pt2 sample_models/digits --eps 0.1
    """
    if require_verified and not verify:
        raise OptionError("--require-verified needs --verify (the attack that checks)")
    job = CertifyJob("bound", Perturbation(parse_norm(norm), eps),
                     LabelOptions(label_gradient.value), opts.attack if verify else None, sound)
    records = certify_command(opts, job)
    finish([
        gate([f"{r['source']} ({format_value(r['T_e'])})" for r in records
              if fail_above_te is not None and (r["T_e"] or 0) > fail_above_te],
             f"T_e > {fail_above_te}"),
        gate([f"{r['source']} ({format_value(r['T_c_deg'])})" for r in records
              if fail_above_tc_deg is not None
              and (r["T_c_deg"] is None or r["T_c_deg"] > fail_above_tc_deg)],
             f"T_c > {fail_above_tc_deg} degrees"),
        gate([r["source"] for r in records if require_label_preserved and not (
                  r["label_certified"] if sound else r["label_preserved"]
                  and not r.get("label_preserved_violated"))],
             "label not proved preserved (--sound)" if sound
             else "label not shown to be preserved (Proposition 1, first-order)"),
        verified_gate(records, require_verified),
    ])


@common_options(SHARED, OUTPUTS, ATTACK)
def attack(
    model: ModelArg,
    images: ImagesArg,
    opts: CommandOptions,
    eps: EpsOpt = 0.1,
    norm: NormOpt = "2",
    require_verified: RequireVerifiedOpt = False,
) -> None:
    """Attack each attribution inside the eps-ball and compare with the bounds.

    PGD on the Euclidean and on the cosine distance (l2, l-inf, lp), plus IFIA for l-inf,
    keeping the predicted label. Reports T_e^ and T_c^ (what the attack reached) next to
    T_e, T'_e and T_c, the linearity gap eta (Appendix B.1) and every violation.

    Example: attrcert attack sample_models/digits_relu_maxpool.pt2 sample_models/digits
    """
    job = CertifyJob("attack", Perturbation(parse_norm(norm), eps), LabelOptions(),
                     opts.attack)
    records = certify_command(opts, job)
    finish([verified_gate(records, require_verified)])

