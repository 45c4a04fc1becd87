"""Integrated gradients cut into segments of Riemann points: the matrix-free products summed
segment by segment are the same operator, in the memory of the points a pass holds."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from attrcert import certify
from attrcert.attack import IFIA, PGDL2, jacobian_vector_product, linearity_gap
from attrcert.attributions import Attribution, IntegratedGradients, get_method
from attrcert.jacobian import attribution_jacobian
from attrcert.memory import MemoryBudgetError
from attrcert.plan import RunPlan, plan_run
from attrcert.settings import SolverOptions
from attrcert.sizing import FOOTPRINT_FACTOR, point_bytes
from attrcert.spectral import JacobianProducts, segment_sizes, spectrum_iterative
from zoo import SHAPE, seeded
from zoo import TINY as ZOO
from zoo import inputs as zoo_inputs

from .models import make_cnn


@pytest.mark.parametrize(("points", "per_pass", "sizes"), [
    (5, None, [5]), (5, 5, [5]), (5, 9, [5]), (5, 3, [2, 1, 1, 1]), (5, 2, [1, 1, 1, 1, 1]),
    (5, 1, [1, 1, 1, 1, 1]), (1, 1, [1]),
])
def test_segment_sizes(points, per_pass, sizes):
    assert segment_sizes(points, per_pass) == sizes


@pytest.mark.parametrize("sizes", [[6], [1, 5], [2, 2, 2], [1] * 6, [4, 1, 1]])
def test_segments_sum_to_integrated_gradients(sizes, images):
    cnn = make_cnn()
    ig = IntegratedGradients(steps=6, baseline=torch.full((1, 6, 6), 0.25, dtype=torch.float64))
    target = torch.tensor([0, 1, 2, 1])
    whole = ig(cnn, images, target)
    segments = ig.segments(sizes)
    assert [s.points for s in segments] == sizes
    total = sum(s(cnn, images, target) for s in segments)
    torch.testing.assert_close(total, whole, rtol=1e-12, atol=1e-15)


def test_segment_sizes_are_checked():
    ig = IntegratedGradients(steps=4)
    for bad in ([3], [2, 3], [0, 4], []):
        with pytest.raises(ValueError, match="sum to m = 4"):
            ig.segments(bad)
    saliency = get_method("saliency")
    assert saliency.segments([1]) == [saliency] and saliency.points == 1
    with pytest.raises(ValueError, match="has 1 point"):
        saliency.segments([1, 1])


@pytest.mark.parametrize(("per_pass", "segments", "passes"), [
    (None, 1, 1), (5, 1, 1), (3, 4, 1 + 2 * 3), (2, 5, 1 + 2 * 4), (1, 5, 2 * 5)])
def test_products_by_segments_apply_the_same_jacobian(per_pass, segments, passes, images):
    """``J v`` and ``J^T u`` summed over segments equal the full ``J`` (Eq. 45) applied."""
    cnn = make_cnn()
    ig = get_method("integrated_gradients", steps=5)
    x, target = images[1:2], torch.tensor([2])
    jac = attribution_jacobian(ig, cnn, x, target)[0]
    ops = JacobianProducts(ig, cnn, x, target, points_per_pass=per_pass)
    v = torch.randn(1, 36, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ops.matvec(v)[0], jac @ v[0], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(ops.rmatvec(v)[0], jac.T @ v[0], rtol=1e-10, atol=1e-14)
    assert (ops.segments, ops.passes, ops.count) == (segments, passes, 2)


def test_spectrum_does_not_depend_on_the_points_per_pass(images):
    cnn = make_cnn()
    ig = get_method("integrated_gradients", steps=4)
    target = torch.tensor([0, 2])
    whole = spectrum_iterative(ig, cnn, images[:2], target)
    for per_pass in (1, 2, 3):
        cut = spectrum_iterative(ig, cnn, images[:2], target, points_per_pass=per_pass)
        torch.testing.assert_close(cut.xi_max, whole.xi_max, rtol=1e-9, atol=0)
        torch.testing.assert_close(cut.v_max, whole.v_max, rtol=0, atol=1e-6)


def test_point_bytes_measures_one_point_of_the_graph(images):
    cnn, target = make_cnn(), torch.tensor([0])
    one = point_bytes(get_method("integrated_gradients", steps=1), cnn, images, target)
    assert one > 0
    eight = point_bytes(get_method("integrated_gradients", steps=8), cnn, images, target)
    assert eight == pytest.approx(one, rel=0.05)  # one point (and the m path weights)
    wide = torch.rand(1, 1, 24, 24, dtype=torch.float64)
    larger = point_bytes(get_method("integrated_gradients", steps=8), cnn_for(24), wide, target)
    assert larger > 4 * one  # 16x the pixels, at least 4x the saved activations


def cnn_for(side: int) -> torch.nn.Module:
    """A Softplus CNN on ``(1, side, side)`` inputs (a global pool keeps its head fixed)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.Softplus(),
                              torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(12, 3))
    return net.double().eval()


def test_a_small_budget_cuts_the_points_and_keeps_the_certificate(images):
    """The planner gives the products as many points as its measured footprint allows in
    the budget, and the records do not change."""
    cnn, x = make_cnn(), images[:2]
    kwargs = {"eps": 0.05, "method": "integrated_gradients", "steps": 6,
              "spectral": "iterative"}
    ig = get_method("integrated_gradients", steps=6)
    per_point = point_bytes(ig, cnn, x, torch.tensor([0]))
    basis = 2 * 36 * 36 * 8
    budget = basis + FOOTPRINT_FACTOR * per_point * 3 + 1
    target = torch.tensor([0])
    cut_plan = plan_run(cnn, x, ig, SolverOptions(spectral="iterative", memory_budget=budget),
                        2.0, target, 3)
    assert (cut_plan.points_per_product_pass, cut_plan.product_point_bytes) == (3, per_point)
    roomy = plan_run(cnn, x, ig, SolverOptions(spectral="iterative", memory_budget="1GB"),
                     2.0, target, 3)
    assert roomy.points_per_product_pass is None
    whole = certify(cnn, x, memory_budget="1GB", **kwargs)
    cut = certify(cnn, x, memory_budget=budget, **kwargs)
    for ours, ref in zip(cut, whole, strict=True):
        for key in ("xi_max", "T_e", "T_e_prime", "T_c"):
            assert ours[key] == pytest.approx(ref[key], rel=1e-8), key


def three_point_budget(cnn: torch.nn.Module, x: torch.Tensor, steps: int = 6) -> int:
    """A budget in which the planner gives ``cnn``'s IG (``steps`` points, 6x6 inputs) 3
    points per pass: PROPACK's basis plus 3 measured points' footprint."""
    per_point = point_bytes(get_method("integrated_gradients", steps=steps), cnn, x,
                            torch.tensor([0]))
    return 2 * 36 * 36 * 8 + FOOTPRINT_FACTOR * per_point * 3 + 1


def test_in_passes_cuts_into_segments_of_at_most_that_many_points():
    ig = IntegratedGradients(steps=5)
    assert ig.in_passes(None) == [ig] and ig.in_passes(5) == [ig] and ig.in_passes(9) == [ig]
    assert [s.points for s in ig.in_passes(2)] == [2, 2, 1]
    assert [s.points for s in ig.in_passes(1)] == [1] * 5
    saliency = get_method("saliency")
    assert saliency.in_passes(1) == [saliency]


class GraphSizes:
    """Records the points of every attribution evaluated with ``create_graph=True``
    (``points``) and the points times the rows of every one evaluated without (``values``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.points: list[int] = []
        self.values: list[int] = []
        real = Attribution.__call__

        def call(attribution, model, x, target, *, create_graph=False):
            if create_graph:
                self.points.append(attribution.points)
            else:
                self.values.append(attribution.points * x.shape[0])
            return real(attribution, model, x, target, create_graph=create_graph)

        monkeypatch.setattr(Attribution, "__call__", call)


@pytest.mark.parametrize("make", [
    lambda: PGDL2(0.3, steps=4, seed=1),
    lambda: PGDL2(0.3, steps=4, objective="cosine", seed=2),
    lambda: IFIA(0.05, steps=4, objective="center_of_mass", seed=3)])
def test_an_attack_cut_into_passes_is_the_same_attack(make, images, monkeypatch):
    """``J^T dD/dg`` summed over segments is the gradient of the whole (float64): the same
    ascent, the same result, with no graph of more than ``points_per_pass`` points."""
    cnn, x, target = make_cnn(), images[:3], torch.tensor([0, 1, 2])
    ig = get_method("integrated_gradients", steps=5)
    whole = make()(cnn, x, ig, target)
    sizes = GraphSizes(monkeypatch)
    cut = make()(cnn, x, ig, target, points_per_pass=2)
    assert sizes.points and max(sizes.points) == 2
    torch.testing.assert_close(cut.deviation, whole.deviation, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(cut.cosine_distance, whole.cosine_distance, rtol=1e-7,
                               atol=1e-13)
    torch.testing.assert_close(cut.delta, whole.delta, rtol=1e-9, atol=1e-12)
    assert torch.equal(cut.label_kept, whole.label_kept)


def test_linearity_gap_cut_into_passes(images, monkeypatch):
    cnn, x, target = make_cnn(), images[:2], torch.tensor([1, 0])
    ig = get_method("integrated_gradients", steps=5)
    delta = 0.1 * torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(4))
    jd = jacobian_vector_product(cnn, x, ig, target, delta)
    eta = linearity_gap(cnn, x, ig, target, delta)
    sizes = GraphSizes(monkeypatch)
    torch.testing.assert_close(
        jacobian_vector_product(cnn, x, ig, target, delta, points_per_pass=1), jd,
        rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(linearity_gap(cnn, x, ig, target, delta, points_per_pass=3),
                               eta, rtol=1e-9, atol=1e-14)
    assert sizes.points == [1] * 5 + [3, 2]
    assert (eta > 0).all()


def test_a_small_budget_cuts_the_attack_and_keeps_its_fields(images, monkeypatch):
    """certify(verify=True) in a budget of 3 points per sample: the attack and the
    linearity gaps take 3 // 2 = 1 point per pass for a batch of 2, the same records."""
    cnn, x = make_cnn(), images[:2]
    kwargs = {"eps": 0.05, "method": "integrated_gradients", "steps": 6,
              "spectral": "iterative", "verify": True, "attack_steps": 3, "batch_size": 2}
    budget = three_point_budget(cnn, x)
    whole = certify(cnn, x, memory_budget="1GB", **kwargs)
    sizes = GraphSizes(monkeypatch)
    cut = certify(cnn, x, memory_budget=budget, **kwargs)
    assert max(sizes.points) <= 2  # the products: 2 kept + 1 rebuilt; the attack: 1
    assert sizes.points.count(1) > 2 * 3
    for ours, ref in zip(cut, whole, strict=True):
        for key in ("T_e_hat", "T_c_hat", "eta_vmax", "eta_attack"):
            assert ours[key] == pytest.approx(ref[key], rel=1e-7, abs=1e-13), key
        for key in ("violation", "verified", "attack_label_kept"):
            assert ours[key] == ref[key], key


def test_one_point_beyond_free_memory_is_refused(images, monkeypatch):
    planning = importlib.import_module("attrcert.plan")
    monkeypatch.setattr(planning, "free_memory", lambda device: 1000)
    with pytest.raises(MemoryBudgetError, match=r"one point of integrated_gradients needs "
                                                 r"about .* more than the 1 kB free on cpu"):
        certify(make_cnn(), images[:1], eps=0.1, steps=4, spectral="iterative")


def test_out_of_memory_halves_the_points_per_pass(images, monkeypatch):
    """On an accelerator, a spectrum that runs out of memory is redone with half the
    points per pass (and the later samples keep the smaller size)."""
    analysis = importlib.import_module("attrcert.analysis")
    real, seen = analysis.spectrum_iterative, []

    def tight(*args, points_per_pass=None, **kwargs):
        seen.append(points_per_pass)
        if points_per_pass is None or points_per_pass > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, points_per_pass=points_per_pass, **kwargs)

    cnn, x = make_cnn(), images[:2]
    ig = get_method("integrated_gradients", steps=6)
    target = torch.tensor([0, 1])
    whole = analysis.analyse(cnn, x, ig, target, RunPlan(spectral="iterative", points=6))
    monkeypatch.setattr(analysis, "spectrum_iterative", tight)
    plan = RunPlan(spectral="iterative", points=6, points_per_product_pass=5)
    cut = analysis.analyse(cnn, x, ig, target, plan)
    assert seen == [5, 2, 2]
    assert plan.points_per_product_pass == 2  # kept for the rest of the run
    torch.testing.assert_close(cut.spectrum.xi_max, whole.spectrum.xi_max, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", ["vit", "efficientnet", "resnet_softplus"])
def test_segments_on_zoo_models(name):
    """Attention, squeeze-excitation and residual graphs, as users write them: the products
    cut into single points equal the products of the whole graph."""
    entry = next(e for e in ZOO if e.name == name)
    model = seeded(entry.build).double().eval()
    x = zoo_inputs(1, SHAPE[-1]).double()
    ig = get_method("integrated_gradients", steps=3)
    target = torch.tensor([1])
    whole = JacobianProducts(ig, model, x, target)
    cut = JacobianProducts(ig, model, x, target, points_per_pass=1)
    v = torch.randn(1, x[0].numel(), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(cut.matvec(v), whole.matvec(v), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(cut.rmatvec(v), whole.rmatvec(v), rtol=1e-9, atol=1e-12)
    assert cut.passes == 2 * 3


def test_the_report_sweep_cut_into_passes(images, monkeypatch):
    """The report's ``J u`` in the planner's passes: the same sweep as with all points."""
    from attrcert.report import compute_report

    cnn, x = make_cnn(), images[:2]
    kwargs = {"eps": 0.05, "method": "integrated_gradients", "steps": 6, "batch_size": 2,
              "spectral": "iterative", "attack_steps": 2, "sweep": [0.02, 0.05],
              "figures": 0, "jacobian_max_d": 0}
    budget = three_point_budget(cnn, x)
    whole = compute_report(cnn, x, memory_budget="1GB", **kwargs)
    sizes = GraphSizes(monkeypatch)
    cut = compute_report(cnn, x, memory_budget=budget, **kwargs)
    assert max(sizes.points) <= 2
    for key in ("T_e", "T_e_prime", "deviation", "eta"):
        np.testing.assert_allclose(getattr(cut.sweep, key), getattr(whole.sweep, key),
                                   rtol=1e-7, atol=1e-13, err_msg=key)


def test_first_order_passes_keep_to_the_budget(images, monkeypatch):
    """g at x and at the perturbations of Eq. 39 (certify's c, max-eps's bisection) take at
    most ``RunPlan.points_per_value_pass`` points x rows per pass (about 2 A each): same records."""
    from attrcert import max_eps
    from attrcert.memory import activation_bytes

    torch.manual_seed(0)  # wide: 5 points' activations also hold the spectrum's Krylov basis
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3), torch.nn.Softplus(),
                              torch.nn.AvgPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(128, 3)).double().eval()
    x = images[:2]
    kwargs = {"method": "integrated_gradients", "steps": 6, "spectral": "iterative"}
    budget = 2 * activation_bytes(cnn, x) * 5  # 5 points x rows per first-order pass
    planned = plan_run(cnn, x, get_method("integrated_gradients", steps=6),
                       SolverOptions(spectral="iterative", memory_budget=budget), 2.0,
                       torch.tensor([0]), 3)
    assert (planned.points_per_value_pass, planned.samples_per_batch) == (5, 1)
    whole = certify(cnn, x, eps=0.05, memory_budget="1GB", **kwargs)
    whole_eps = max_eps(cnn, x, omega=0.5, memory_budget="1GB", **kwargs)
    sizes = GraphSizes(monkeypatch)
    cut = certify(cnn, x, eps=0.05, memory_budget=budget, **kwargs)
    cut_eps = max_eps(cnn, x, omega=0.5, memory_budget=budget, **kwargs)
    assert sizes.values and max(sizes.values) <= 5
    assert 4 in sizes.values  # a row pair (+-eps v_max) in segments of 2 points
    for ours, ref in zip(cut, whole, strict=True):
        for key in ("T_e", "T_e_prime", "c", "T_c", "attr_norm"):
            assert ours[key] == pytest.approx(ref[key], rel=1e-9), key
    for ours, ref in zip(cut_eps, whole_eps, strict=True):
        assert ours["eps_max"] == pytest.approx(ref["eps_max"], rel=1e-6)
