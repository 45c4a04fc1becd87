"""Memory budget and out-of-memory recovery (attrcert.memory).

A real accelerator is not needed to test the recovery: :class:`OutOfMemoryAbove` raises
``torch.OutOfMemoryError`` (what CUDA raises) whenever a pass feeds it more inputs than it
"has memory" for, so every retry path runs on the CPU, and the results must equal those of
a run that never ran out of memory.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from attrcert import certify, max_eps
from attrcert.attributions import get_method
from attrcert.errors import OptionError
from attrcert.jacobian import attribution_jacobian
from attrcert.memory import (
    MemoryBudgetError,
    activation_bytes,
    format_size,
    halving,
    parse_size,
    plan,
)
from attrcert.plan import RunPlan, plan_run
from attrcert.settings import SolverOptions
from attrcert.spectral import abs_sum_gram_blocked

from .conftest import SAMPLES
from .models import make_cnn
from .processes import run_attrcert

MODEL = str(SAMPLES / "digits_softplus.pt2")


class OutOfMemoryAbove(nn.Module):
    """``inner``, except that a forward pass of more than ``limit`` inputs while autograd
    records raises the accelerator's out-of-memory error; counts the errors it raised."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit, self.raised = inner, limit, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.shape[0] > self.limit:
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB "
                                         "(simulated)")
        return self.inner(x)


@pytest.mark.parametrize(("text", "size"), [
    ("8GB", 8 * 10**9), ("8G", 8 * 10**9), ("512MiB", 512 * 2**20), ("1.5g", 1.5e9),
    ("2e9", 2 * 10**9), ("1000", 1000), (" 4 kib ", 4096), (123456, 123456),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "12X", "GB", "-1GB", "0", "nan", "1e400GB", True])
def test_parse_size_refuses_nonsense(text):
    with pytest.raises(OptionError, match="memory budget"):
        parse_size(text)


def test_format_size():
    assert format_size(17_210_368) == "17.2 MB"
    assert format_size(3.3e9) == "3.3 GB"
    assert format_size(12) == "12 B"


def test_plan_caps_batch_and_chunk_by_the_budget():
    d, act = 784, 10_000
    roomy = plan(10**12, d=d, steps=50, activation=act, itemsize=4, spectral="full",
                 default_batch=16)
    assert roomy.batch_size == 16 and roomy.chunk_size == d and roomy.full_fits
    per_sample = 4 * 50 * act + d * d * 28
    tight = plan(3 * per_sample, d=d, steps=50, activation=act, itemsize=4,
                 spectral="full", default_batch=16)
    assert tight.batch_size == 3 and tight.full_fits
    assert tight.full_bytes == d * d * 28 and tight.graph_bytes == 4 * 50 * act
    too_small = plan(per_sample // 2, d=d, steps=50, activation=act, itemsize=4,
                     spectral="full", default_batch=16)
    assert too_small.batch_size == 1 and not too_small.full_fits
    iterative = plan(per_sample // 2, d=d, steps=50, activation=act, itemsize=4,
                     spectral="iterative", default_batch=16)
    assert iterative.full_fits and iterative.full_bytes == 0
    # the replicated pass: r copies of the batch's graph next to its Jacobians
    r = plan(16 * per_sample + 16 * 5 * 4 * 50 * act, d=d, steps=50, activation=act,
             itemsize=4, spectral="full", default_batch=16)
    assert r.batch_size == 16 and r.chunk_size == 6


def test_activation_bytes_counts_the_forward_pass():
    net = make_cnn()
    x = torch.rand(5, 1, 6, 6, dtype=torch.float64)
    # conv (3x4x4), softplus, pool (3x2x2), flatten view, linear 6, softplus, linear 3;
    # the linear layers' transposed weights (72 + 18) count too: an upper estimate
    expected = 8 * (48 + 48 + 12 + 12 + 6 + 6 + 3)
    assert expected <= activation_bytes(net, x) <= 3 * expected


def test_halving_retries_with_half_the_size_and_reports_it():
    seen = []

    def run(size: int) -> str:
        seen.append(size)
        if size > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return f"ran with {size}"

    assert halving(run, 16, device=torch.device("cpu"), what="row") == ("ran with 2", 2)
    assert seen == [16, 8, 4, 2]


def test_halving_gives_up_with_one_line_at_size_one_and_passes_other_errors():
    def never(size: int) -> int:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(MemoryBudgetError, match="even with 1 row") as info:
        halving(never, 4, device=torch.device("cpu"), what="row")
    assert "\n" not in str(info.value)

    def broken(size: int) -> int:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        halving(broken, 4, device=torch.device("cpu"), what="row")


def test_replicated_jacobian_recovers_from_out_of_memory_with_the_same_rows():
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([0, 2])
    saliency = get_method("saliency")
    reference = attribution_jacobian(saliency, make_cnn(), x, target, strategy="loop")
    fussy = OutOfMemoryAbove(make_cnn(), limit=2 * 5)  # 5 rows per pass for 2 samples
    jac = attribution_jacobian(saliency, fussy, x, target, strategy="replicate",
                               chunk_size=36)
    assert fussy.raised == 3  # 36 -> 18 -> 9 -> 4, then 4 rows per pass to the end
    torch.testing.assert_close(jac, reference, rtol=1e-12, atol=1e-14)


def test_blocked_abs_sum_recovers_from_out_of_memory():
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    target = torch.tensor([1, 0])
    ig = get_method("integrated_gradients", steps=3)
    reference = abs_sum_gram_blocked(ig, make_cnn(), x, target, chunk_size=36)
    fussy = OutOfMemoryAbove(make_cnn(), limit=3 * 8)  # 8 copies of the 3 IG steps
    assert torch.allclose(abs_sum_gram_blocked(ig, fussy, x, target, chunk_size=36),
                          reference, rtol=1e-12)
    assert fussy.raised == 3  # 36 -> 18 -> 9 -> 4 columns per pass
    jac = attribution_jacobian(ig, make_cnn(), x, target)
    gram = jac.transpose(1, 2) @ jac
    assert torch.allclose(reference, gram.abs().sum((1, 2)), rtol=1e-10)


def test_certify_splits_a_batch_that_runs_out_of_memory_without_changing_records():
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    kwargs = {"eps": 0.05, "method": "saliency", "spectral": "full", "device": "cpu"}
    reference = certify(make_cnn(), x, batch_size=1, **kwargs)
    fussy = OutOfMemoryAbove(make_cnn(), limit=3)  # Prop. 1 runs k = 3 copies per sample
    batches = []
    records = certify(fussy, x, batch_size=4, on_batch=lambda r, a: batches.append(len(r)),
                      **kwargs)
    assert fussy.raised >= 2 and batches == [1, 1, 1, 1]
    for ours, ref in zip(records, reference, strict=True):
        assert ours["index"] == ref["index"]
        for key in ("xi_max", "T_e", "T_e_prime", "T_c", "label_radius"):
            assert ours[key] == pytest.approx(ref[key], rel=1e-10), key


def test_max_eps_splits_too():
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    kwargs = {"omega": 0.2, "method": "saliency", "device": "cpu"}
    reference = max_eps(make_cnn(), x, batch_size=1, **kwargs)
    fussy = OutOfMemoryAbove(make_cnn(), limit=1)  # a batch of two does not fit
    records = max_eps(fussy, x, batch_size=2, **kwargs)
    assert fussy.raised >= 1
    assert [r["eps_max"] for r in records] == pytest.approx([r["eps_max"] for r in reference],
                                                            rel=1e-8)


def test_one_sample_that_never_fits_is_one_clear_error():
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    with pytest.raises(MemoryBudgetError, match="out of memory on cpu even with 1"):
        certify(OutOfMemoryAbove(make_cnn(), limit=0), x, eps=0.1, method="saliency",
                device="cpu")


def test_linf_auto_blocks_theorem2_when_the_jacobian_does_not_fit():
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    kwargs = {"eps": 0.05, "norm": "inf", "method": "integrated_gradients", "steps": 4}
    full = certify(make_cnn(), x, **kwargs)
    # the full path needs d^2 * (8 + 24) = 41 kB per sample here
    blocked = certify(make_cnn(), x, memory_budget=30_000, **kwargs)
    for ours, ref in zip(blocked, full, strict=True):
        assert ref["spectral"] == "full" and ours["spectral"] == "iterative"
        assert ours["T_e_method"] == ref["T_e_method"] == "theorem2"
        assert ours["T_e"] == pytest.approx(ref["T_e"], rel=1e-7)
    with pytest.raises(MemoryBudgetError, match="over the memory budget of 30 kB"):
        certify(make_cnn(), x, memory_budget=30_000, spectral="full", **kwargs)


def test_plan_run_keeps_the_sizes_the_user_gave():
    x = torch.rand(8, 1, 6, 6, dtype=torch.float64)
    target = torch.zeros(1, dtype=torch.long)
    given = plan_run(make_cnn(), x, get_method("saliency"),
                     SolverOptions(spectral="full", memory_budget="1GB", batch_size=5,
                                   chunk_size=7), 2.0, target, 3)
    assert (given.samples_per_batch, given.rows_per_pass, given.spectral) == (5, 7, "full")
    small = plan_run(make_cnn(), x, get_method("saliency"),
                     SolverOptions(spectral="full", memory_budget=60_000), 2.0, target, 3)
    assert small.samples_per_batch == 1 and small.budget == small.ceiling == 60_000


def test_max_eps_passes_its_solver_tolerance_to_every_batch(monkeypatch):
    """Regression: the per-sample tolerance omega once overwrote the solver's ``tol`` after
    the first batch."""
    certify_module = importlib.import_module("attrcert.analysis")  # where analyse calls it
    seen = []
    real = certify_module.spectrum_iterative

    def spy(*args, **kwargs):
        seen.append(kwargs["tol"])
        return real(*args, **kwargs)

    monkeypatch.setattr(certify_module, "spectrum_iterative", spy)
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    max_eps(make_cnn(), x, omega=5.0, method="saliency", spectral="iterative", tol=1e-5,
            batch_size=1)
    assert seen == [1e-5, 1e-5, 1e-5]


def test_cli_memory_budget_errors_are_one_line_and_exit_2(tmp_path):
    images = tmp_path / "one.pt"
    torch.save(torch.load(SAMPLES / "digits.pt", weights_only=True)[:1].clone(), images)
    bad = run_attrcert("bound", MODEL, str(images), "--memory-budget", "12X", "--quiet")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "error: memory budget '12X': give a size such as 8GB, 512MiB or a number of bytes"]
    over = run_attrcert("bound", MODEL, str(images), "--memory-budget", "5MB", "--spectral", "full",
                "--quiet")
    assert over.returncode == 2 and len(over.stderr.strip().splitlines()) == 1
    assert "over the memory budget of 5 MB" in over.stderr and "Traceback" not in over.stderr
    ok = run_attrcert("bound", MODEL, str(images), "--memory-budget", "5MB", "--norm", "inf",
              "--method", "saliency", "--format", "json", "--quiet")
    assert ok.returncode == 0, ok.stderr
    assert '"T_e_method": "theorem2"' in ok.stdout and '"spectral": "iterative"' in ok.stdout


def test_label_gradients_taken_a_class_at_a_time_do_not_change_the_records(monkeypatch):
    """A budget too small for all k class copies of a sample at once: Proposition 1's
    gradients are taken in chunks of classes, with the same records."""
    torch.manual_seed(0)
    model, x = make_cnn(), torch.rand(2, 1, 6, 6, dtype=torch.float64)
    whole = certify(model, x, eps=0.1, method="saliency", spectral="full")
    seen = []
    real = RunPlan.classes_per_label_pass

    def one_class(self, how):
        seen.append(real(self, how))
        return 1

    monkeypatch.setattr(RunPlan, "classes_per_label_pass", one_class)
    chunked = certify(model, x, eps=0.1, method="saliency", spectral="full")
    assert seen and all(s >= 3 for s in seen)  # the default budget takes them all at once
    for a, b in zip(whole, chunked, strict=True):
        for key in ("label_preserved", "label_kept"):
            assert a[key] == b[key], key
        for key in ("label_radius", "T_e", "xi_max"):  # a batch's size can move the last ulp
            assert a[key] == pytest.approx(b[key], rel=1e-12, abs=0), key
