"""The run's plan (attrcert.plan): every phase's passes sized to --memory-budget, a budget
that cannot hold one sample refused before the work, a tight one split into more passes
with the same records."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from torch import nn

from attrcert import certify
from attrcert.attributions import get_method
from attrcert.memory import MemoryBudgetError
from attrcert.plan import ATTACK_COPIES, KRYLOV_VECTORS, RunPlan, plan_run
from attrcert.progress import ATTACK, ATTRIBUTION, LABEL, SPECTRUM
from attrcert.settings import SolverOptions
from attrcert.sizing import FOOTPRINT_FACTOR
from attrcert.spectral.krylov import MAX_STEPS

from .processes import run_attrcert

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
X = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def ten_classes() -> nn.Module:
    """A Softplus CNN on (1, 6, 6) inputs with k = 10 classes."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.Softplus(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 10)).double().eval()


def planned(budget: int | str, spectral: str = "iterative", method: str = "saliency",
            steps: int = 1) -> RunPlan:
    return plan_run(ten_classes(), X, get_method(method, steps=steps),
                    SolverOptions(spectral=spectral, memory_budget=budget), 2.0,
                    torch.tensor([0]), 10)


def test_the_plan_sizes_every_phase_from_the_budget():
    plan = planned(400_000, method="integrated_gradients", steps=8)
    d, a = 36, plan.activation
    assert (plan.d, plan.points, plan.classes, plan.budget) == (d, 8, 10, 400_000)
    assert a > 0 and plan.product_point_bytes > 0 and plan.second_order_point_bytes > 0
    assert plan.krylov_bytes == 8 * KRYLOV_VECTORS * d * min(d, MAX_STEPS)
    assert plan.points_per_value_pass == 400_000 // (2 * a)
    # the attack's second-order pass: what is left beside its copies of the batch
    room = 400_000 - ATTACK_COPIES * 2 * d * 8
    fit = room // (FOOTPRINT_FACTOR * plan.second_order_point_bytes * 2)
    assert plan.points_per_second_order_pass(2) == (None if fit >= 8 else max(1, fit))
    held, per_class = plan.label_bytes("completeness")
    assert plan.classes_per_label_pass("completeness") == (400_000 - held) // per_class
    # no budget: no limit anywhere
    free = RunPlan(points=8, d=d, activation=a, second_order_point_bytes=1000)
    assert free.points_per_value_pass is None and free.classes_per_label_pass("attribution") \
        is None and free.points_per_second_order_pass(4) is None


def test_a_smaller_budget_gives_smaller_passes():
    roomy, tight = planned("1GB", method="integrated_gradients", steps=8), \
        planned(80_000, method="integrated_gradients", steps=8)
    assert roomy.points_per_product_pass is None
    assert tight.points_per_product_pass is not None and tight.points_per_product_pass < 8
    assert tight.points_per_value_pass < roomy.points_per_value_pass
    assert tight.classes_per_label_pass("completeness") < \
        roomy.classes_per_label_pass("completeness")


@pytest.mark.parametrize("phase", [SPECTRUM, ATTRIBUTION, LABEL, ATTACK])
def test_one_sample_that_does_not_fit_a_phase_is_refused_naming_it(phase):
    plan = planned("1GB")
    need, what = plan.minimum(phase)
    assert need > 0 and what
    plan.budget = plan.ceiling = need - 1
    names = {SPECTRUM: "the spectrum", ATTRIBUTION: "the attribution",
             LABEL: "Proposition 1's label test", ATTACK: "the attack"}
    with pytest.raises(MemoryBudgetError, match=f"cannot hold one sample: {names[phase]} "
                                                r"needs about .*: give --memory-budget"):
        plan.require((phase,))
    plan.budget = plan.ceiling = need
    plan.require((phase,))


def test_a_tiny_budget_is_refused_before_any_attribution(monkeypatch):
    run_module = importlib.import_module("attrcert.run")

    def never(*args, **kwargs):
        raise AssertionError("a batch was analysed under a budget that cannot hold it")

    monkeypatch.setattr(run_module, "analyse", never)
    with pytest.raises(MemoryBudgetError, match="the memory budget of 25 kB cannot hold one "
                                                "sample: the spectrum needs about"):
        certify(ten_classes(), X, eps=0.1, method="saliency", spectral="iterative",
                memory_budget=25_000)


def test_the_cli_refuses_a_tiny_budget_in_one_line():
    out = run_attrcert("bound", str(SAMPLES / "digits_softplus.pt2"), str(SAMPLES / "digits"),
                       "--memory-budget", "20kB", "--spectral", "iterative", "--format", "json",
                       "--quiet")
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot hold one sample" in lines[0], out.stderr
    assert "give --memory-budget" in lines[0] and "Traceback" not in out.stderr


@pytest.mark.parametrize("how", ["attribution", "completeness"])
def test_the_label_test_is_split_into_passes_that_fit_the_budget(how, monkeypatch):
    """A budget that holds the logit Jacobian and three class gradients (or, where another
    phase needs more, what that phase needs): Proposition 1's class gradients come at most
    as many at a time as the plan says, and the records do not change."""
    spectral = "iterative"
    roomy = planned("1GB", spectral=spectral)
    held, per_class = roomy.label_bytes(how)
    others = max(roomy.minimum(phase)[0] for phase in (SPECTRUM, ATTRIBUTION))
    budget = max(held + 3 * per_class + 1, others)
    tight = planned(budget, spectral=spectral)
    allowed = tight.classes_per_label_pass(how)
    assert allowed == (budget - held) // per_class
    if how == "attribution":  # a class copy's second-order graph: the label test sets it
        assert allowed == 3
    kwargs = {"eps": 0.1, "method": "saliency", "spectral": spectral, "label_gradient": how}
    whole = certify(ten_classes(), X, memory_budget="1GB", **kwargs)
    batch = importlib.import_module("attrcert.proposition1.batch")
    sizes: list[int] = []
    if how == "attribution":
        real = batch._class_gradients

        def spy(model, x, attribution, how, classes):
            sizes.append(classes.numel())
            return real(model, x, attribution, how, classes)

        monkeypatch.setattr(batch, "_class_gradients", spy)
    else:  # through the kept logit graph (LogitJacobian.rows)
        rows = batch.LogitJacobian.rows

        def spy_rows(self, classes):
            sizes.append(classes.numel())
            return rows(self, classes)

        monkeypatch.setattr(batch.LogitJacobian, "rows", spy_rows)
    cut = certify(ten_classes(), X, memory_budget=budget, **kwargs)
    assert sizes and max(sizes) <= allowed
    if how == "attribution":
        assert sizes.count(3) >= 2  # 9 other classes: several passes per sample
    for ours, ref in zip(cut, whole, strict=True):
        for key in ("label_preserved", "label_kept", "T_e", "xi_max"):
            assert ours[key] == ref[key], key
        assert ours["label_radius"] == pytest.approx(ref["label_radius"], rel=1e-12)


def test_samples_share_the_spectrums_passes_where_it_pays():
    """On a CPU, a batch the user asked for of narrow samples (points x d at most
    LOCKSTEP_CPU_MAX_WIDTH) runs its spectra in lockstep, as many as the budget holds with
    their bases and graphs; the default batch stays 1 (records equal bit for bit however a
    run is cut); a wide sample, or the full Jacobian path, never shares."""
    from attrcert.plan import LOCKSTEP_CPU_MAX_WIDTH, lockstep_pays, lockstep_samples

    def batched(budget: int, spectral: str = "iterative", x: torch.Tensor = X,
                model: nn.Module | None = None, batch: int | None = 4) -> RunPlan:
        return plan_run(model or ten_classes(), x, get_method("saliency"),
                        SolverOptions(spectral=spectral, memory_budget=budget,
                                      batch_size=batch), 2.0, torch.tensor([0]), 10)

    default = batched(10**9, batch=None)
    assert (default.samples_per_batch, default.samples_per_product_pass) == (1, 1)
    plan = batched(10**9)
    assert (plan.samples_per_batch, plan.samples_per_product_pass) == (4, 4)
    each = plan.krylov_bytes + FOOTPRINT_FACTOR * plan.product_point_bytes
    assert batched(3 * each + 10).samples_per_product_pass == 3
    assert batched(10**9, spectral="full").samples_per_product_pass == 1
    wide = torch.rand(1, 1, 8, LOCKSTEP_CPU_MAX_WIDTH // 8 + 1, dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(wide[0].numel(), 10)).double()
    spread = batched(10**9, x=wide, model=model)
    assert (spread.samples_per_batch, spread.samples_per_product_pass) == (4, 1)
    assert lockstep_pays(torch.device("cuda"), 10**9)  # decided without a GPU
    assert lockstep_pays(torch.device("cpu"), LOCKSTEP_CPU_MAX_WIDTH)
    assert not lockstep_pays(torch.device("cpu"), LOCKSTEP_CPU_MAX_WIDTH + 1)
    assert lockstep_samples(None, d=10, points=1, point_bytes=1, batch=5) == 5
    assert lockstep_samples(1, d=10, points=1, point_bytes=1, batch=5) == 1


def test_lockstep_in_certify_gives_the_records_of_one_at_a_time(monkeypatch):
    """certify on four samples in one batch, their spectra in lockstep (a narrow input on a
    CPU), and one sample per batch (the CPU default): the same records to rounding."""
    from attrcert import analysis

    real, groups = analysis.spectrum_iterative, []

    def spy(*args, samples_per_pass=1, **kwargs):
        groups.append(samples_per_pass)
        return real(*args, samples_per_pass=samples_per_pass, **kwargs)

    monkeypatch.setattr(analysis, "spectrum_iterative", spy)
    model, x = ten_classes(), torch.rand(4, 1, 6, 6, dtype=torch.float64,
                                         generator=torch.Generator().manual_seed(5))
    kwargs = {"norm": 2, "eps": 0.05, "method": "integrated_gradients", "steps": 4,
              "spectral": "iterative"}
    together = certify(model, x, batch_size=4, **kwargs)
    assert groups == [4]
    alone = certify(model, x, **kwargs)
    assert groups == [4, 1, 1, 1, 1]
    for a, b in zip(together, alone, strict=True):
        for key in ("xi_max", "T_e", "T_e_prime", "T_c", "label_radius"):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-15), key
