"""Matrix-free spectra (``spectrum_iterative``) and the blocked l-inf constant
(``abs_sum_gram_blocked``) against the full Jacobian path and closed forms."""

from __future__ import annotations

import pytest
import torch
from scipy.sparse.linalg import ArpackNoConvergence
from torch import nn

from attrcert.attributions import get_method
from attrcert.jacobian import attribution_jacobian
from attrcert.loading import load_model
from attrcert.spectral import (
    JacobianProducts,
    abs_sum_gram_blocked,
    iterative,
    spectrum_full,
    spectrum_iterative,
)

from .conftest import SAMPLES
from .models import make_quadratic

METHODS = ["saliency", "input_x_gradient", "integrated_gradients"]
SOLVERS = ["krylov", "arpack", "propack"]


def _agree(it, full, rtol: float = 1e-3, cos: float = 0.999) -> None:
    rel = (it.xi_max - full.xi_max).abs() / full.xi_max
    assert bool((rel <= rtol).all()), f"xi_max {it.xi_max} vs {full.xi_max}"
    if it.residual is not None:  # the Krylov solver's value bounds the singular value
        assert bool((it.xi_max >= full.xi_max * (1 - 1e-12)).all())
    overlap = (it.v_max * full.v_max).sum(1).abs()
    assert bool((overlap >= cos).all()), f"|<v_iter, v_full>| = {overlap}"
    ones = torch.ones(it.v_max.shape[0], dtype=torch.float64)
    torch.testing.assert_close(it.v_max.norm(dim=1), ones)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("method", METHODS)
def test_iterative_matches_full_on_cnn(method, solver, cnn, images):
    attribution = get_method(method, steps=4)
    x, target = images[:2], torch.tensor([1, 2])
    full = spectrum_full(attribution_jacobian(attribution, cnn, x, target))
    it = spectrum_iterative(attribution, cnn, x, target, solver=solver, tol=1e-6)
    _agree(it, full, rtol=1e-6, cos=0.999999)
    assert it.abs_sum_gram is None and full.products is None
    assert it.products is not None and bool((it.products > 0).all())


@pytest.fixture(scope="module")
def sample_ig():
    """The sample model (float32), one digit, IG m = 8, and its full spectrum."""
    model = load_model(SAMPLES / "digits_softplus.pt2")
    x = torch.load(SAMPLES / "digits.pt", weights_only=True)[:1]
    target = model(x).argmax(1)
    attribution = get_method("integrated_gradients", steps=8)
    full = spectrum_full(attribution_jacobian(attribution, model, x, target))
    return attribution, model, x, target, full


@pytest.mark.parametrize("solver", ["arpack", "krylov"])
def test_iterative_matches_full_on_sample_model(solver, sample_ig):
    attribution, model, x, target, full = sample_ig
    _agree(spectrum_iterative(attribution, model, x, target, solver=solver), full)


@pytest.mark.parametrize("solver", SOLVERS)
def test_closed_form_quadratic_saliency(solver):
    """Saliency of ``1/2 z^T A z + b^T z`` has ``J = A`` (symmetric): ``xi_max = max |eig A|``."""
    model = make_quadratic(k=2, shape=(1, 3, 4), seed=3)
    x = torch.rand(1, 1, 3, 4, dtype=torch.float64)
    it = spectrum_iterative(get_method("saliency"), model, x, torch.tensor([1]), solver=solver,
                            tol=1e-9)
    evals, evecs = torch.linalg.eigh(model.a[1])
    k = int(evals.abs().argmax())
    torch.testing.assert_close(it.xi_max[0], evals[k].abs(), rtol=1e-8, atol=0)
    assert abs(float(it.v_max[0] @ evecs[:, k])) > 1 - 1e-8


@pytest.mark.parametrize("solver", SOLVERS)
def test_zero_jacobian(solver):
    """Saliency of a linear model does not depend on ``x``: ``xi_max = 0``, ``v_max = e_1``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).double().eval()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    target = torch.tensor([0, 2])
    it = spectrum_iterative(get_method("saliency"), model, x, target, solver=solver)
    assert it.xi_max.tolist() == [0.0, 0.0]
    e1 = torch.zeros(2, 36, dtype=torch.float64)
    e1[:, 0] = 1.0
    torch.testing.assert_close(it.v_max, e1, rtol=0, atol=0)
    blocked = abs_sum_gram_blocked(get_method("saliency"), model, x, target, chunk_size=7)
    assert blocked.tolist() == [0.0, 0.0]
    # input x gradient of the same model: J = diag(w_y), xi_max = max |w_y|
    ixg = spectrum_iterative(get_method("input_x_gradient"), model, x, target, solver=solver,
                             tol=1e-10)
    w = model[1].weight.detach()[target]
    torch.testing.assert_close(ixg.xi_max, w.abs().amax(1), rtol=1e-8, atol=0)


def test_tiny_input_is_solved_densely():
    model = make_quadratic(k=2, shape=(1, 1, 2), seed=1)
    x = torch.rand(1, 1, 1, 2, dtype=torch.float64)
    target = torch.tensor([0])
    for method in METHODS:
        attribution = get_method(method, steps=3)
        full = spectrum_full(attribution_jacobian(attribution, model, x, target))
        _agree(spectrum_iterative(attribution, model, x, target), full, rtol=1e-10)


def test_seed_makes_it_deterministic(cnn, images):
    attribution = get_method("integrated_gradients", steps=3)
    target = torch.tensor([0, 1])
    a = spectrum_iterative(attribution, cnn, images[:2], target, seed=5)
    b = spectrum_iterative(attribution, cnn, images[:2], target, seed=5)
    assert torch.equal(a.xi_max, b.xi_max) and torch.equal(a.v_max, b.v_max)


def test_products_apply_the_jacobian(cnn, images):
    """``J v`` and ``J^T u`` from :class:`JacobianProducts` equal the full ``J`` applied."""
    attribution = get_method("integrated_gradients", steps=4)
    x, target = images[1:2], torch.tensor([2])
    jac = attribution_jacobian(attribution, cnn, x, target)[0]
    ops = JacobianProducts(attribution, cnn, x, target)
    v = torch.randn(1, 36, dtype=torch.float64)
    torch.testing.assert_close(ops.matvec(v)[0], jac @ v[0], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(ops.rmatvec(v)[0], jac.T @ v[0], rtol=1e-10, atol=1e-14)
    assert ops.count == 2


@pytest.mark.parametrize("method", METHODS)
def test_abs_sum_gram_blocked_equals_full(method, cnn, images):
    attribution = get_method(method, steps=3)
    x, target = images[:2], torch.tensor([2, 0])
    full = spectrum_full(attribution_jacobian(attribution, cnn, x, target)).abs_sum_gram
    assert full is not None
    for chunk in (1, 5, 36, 100):
        got = abs_sum_gram_blocked(attribution, cnn, x, target, chunk_size=chunk)
        torch.testing.assert_close(got, full, rtol=1e-10, atol=0)


def test_abs_sum_gram_blocked_on_sample_model():
    model = load_model(SAMPLES / "digits_softplus.pt2")
    x = torch.load(SAMPLES / "digits.pt", weights_only=True)[:1]
    target = model(x).argmax(1)
    attribution = get_method("input_x_gradient")
    full = spectrum_full(attribution_jacobian(attribution, model, x, target)).abs_sum_gram
    got = abs_sum_gram_blocked(attribution, model, x, target, chunk_size=64)
    torch.testing.assert_close(got, full, rtol=1e-4, atol=0)


def test_bad_arguments(cnn, images):
    attribution = get_method("saliency")
    target = torch.tensor([0])
    with pytest.raises(ValueError, match="solver"):
        spectrum_iterative(attribution, cnn, images[:1], target, solver="lobpcg")
    with pytest.raises(ValueError, match="chunk_size"):
        abs_sum_gram_blocked(attribution, cnn, images[:1], target, chunk_size=0)


def test_no_convergence_is_an_error(cnn, images, monkeypatch):
    attribution = get_method("integrated_gradients", steps=3)
    x, target = images[:1], torch.tensor([0])
    with pytest.raises(RuntimeError, match="Golub-Kahan did not converge"):
        spectrum_iterative(attribution, cnn, x, target, tol=1e-12, maxiter=2)
    with pytest.raises(RuntimeError, match="symmetric Lanczos did not converge"):
        spectrum_iterative(get_method("saliency"), cnn, x, target, tol=1e-12, maxiter=2)

    def no_convergence(*args, **kwargs):
        raise ArpackNoConvergence("no convergence", [], [])

    monkeypatch.setattr(iterative, "svds", no_convergence)
    with pytest.raises(RuntimeError, match=r"svds \(arpack\) did not converge"):
        spectrum_iterative(attribution, cnn, x, target, solver="arpack")


def test_auto_picks_the_faster_exact_path_by_size_and_norm():
    from attrcert.sizing import AUTO_FULL_MAX_D, AUTO_FULL_MAX_D_LINF, resolve_spectral

    assert resolve_spectral("auto", AUTO_FULL_MAX_D, 2.0) == "full"
    assert resolve_spectral("auto", AUTO_FULL_MAX_D + 1, 2.0) == "iterative"
    assert resolve_spectral("auto", AUTO_FULL_MAX_D + 1, 3.0) == "iterative"
    assert resolve_spectral("auto", AUTO_FULL_MAX_D_LINF, float("inf")) == "full"
    assert resolve_spectral("auto", AUTO_FULL_MAX_D_LINF + 1, float("inf")) == "iterative"
    assert resolve_spectral("full", 10**6, 2.0) == "full"
    assert resolve_spectral("iterative", 4, float("inf")) == "iterative"


@pytest.mark.parametrize("steps,coarse", [(1, None), (2, 1), (8, 1), (16, 2), (50, 6)])
def test_coarse_integrated_gradients_keeps_an_eighth_of_the_points(steps, coarse):
    baseline = torch.full((1, 6, 6), 0.25, dtype=torch.float64)
    found = get_method("integrated_gradients", steps=steps, baseline=baseline).coarse()
    assert (found and found.steps) == coarse
    if found is not None:
        assert found.baseline is baseline
    assert get_method("saliency").coarse() is None
    assert get_method("input_x_gradient").coarse() is None


@pytest.mark.parametrize("steps", [4, 16])
def test_warm_start_finds_the_same_xi_max(steps, cnn, images, monkeypatch):
    """With the coarse start forced on at 6x6, integrated gradients' ``xi_max`` and
    ``v_max`` equal the dense solution's, and the coarse products are counted apart."""
    monkeypatch.setattr(iterative, "WARM_MIN_D", 1)
    attribution = get_method("integrated_gradients", steps=steps)
    x, target = images, torch.tensor([1, 2, 0, 1])
    full = spectrum_full(attribution_jacobian(attribution, cnn, x, target))
    warm = spectrum_iterative(attribution, cnn, x, target, tol=1e-6)
    _agree(warm, full, rtol=1e-6, cos=0.999999)
    assert warm.start_products is not None and bool((warm.start_products > 0).all())
    # the first sample's result does not depend on the batch it is in
    one = spectrum_iterative(attribution, cnn, x[:1], target[:1], tol=1e-6)
    torch.testing.assert_close(one.xi_max, warm.xi_max[:1], rtol=1e-12, atol=0)
    monkeypatch.setattr(iterative, "WARM_MIN_D", 10**9)
    cold = spectrum_iterative(attribution, cnn, x, target, tol=1e-6)
    assert cold.start_products is None
    torch.testing.assert_close(warm.xi_max, cold.xi_max, rtol=2e-6, atol=0)


def test_warm_start_falls_back_to_the_random_start(cnn, images, monkeypatch):
    """A coarse solver that fails, or whose ``J`` is 0, leaves the random start: the start
    is a hint and the result is still the dense one."""
    attribution = get_method("integrated_gradients", steps=8)
    x, target = images[:1], torch.tensor([1])
    z = torch.randn(x[0].numel(), dtype=torch.float64)
    mix = torch.randn_like(z)
    coarse = attribution.coarse()
    assert coarse is not None
    start, spent = iterative.warm_start(coarse, cnn, x, target, z, mix, tol=1e-12,
                                        max_steps=2, points_per_pass=None, progress=None)
    assert torch.equal(start[0], z) and spent[0] > 0  # no convergence in 2 steps
    flat = nn.Sequential(nn.Flatten(), nn.Linear(36, 4)).double()  # linear: J = 0 for IG's M
    start, _ = iterative.warm_start(get_method("saliency"), flat, x, target, z, mix,
                                    tol=1e-6, max_steps=50, points_per_pass=None,
                                    progress=None)
    assert torch.equal(start[0], z)
    start, _ = iterative.warm_start(coarse, cnn, x, target, z, mix, tol=1e-6, max_steps=50,
                                    points_per_pass=None, progress=None)
    assert not torch.equal(start[0], z)
    assert abs(float(start[0].norm()) - (1 + 0.1**2) ** 0.5) < 0.05


def test_warm_start_lets_out_of_memory_through(cnn, images, monkeypatch):
    """Running out of memory in the coarse solver is the plan's to handle (it halves the
    points per pass and tries again), not a failed hint to fall back from."""
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("out of memory")

    monkeypatch.setattr(iterative, "top_singulars", out_of_memory)
    z = torch.randn(36, dtype=torch.float64)
    coarse = get_method("integrated_gradients", steps=8).coarse()
    assert coarse is not None
    with pytest.raises(torch.OutOfMemoryError):
        iterative.warm_start(coarse, cnn, images[:1], torch.tensor([1]), z, z, tol=1e-6,
                             max_steps=50, points_per_pass=None, progress=None)


@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_samples_in_lockstep_give_each_sample_its_own_result(method, warm, cnn, images,
                                                              monkeypatch):
    """Four samples' solvers in one pass per round (``samples_per_pass``) give what each
    gives alone: the same ``xi_max``, ``v_max``, residual and products (to the rounding of
    a wider pass), whatever the grouping; a warm start's coarse solvers as well."""
    monkeypatch.setattr(iterative, "WARM_MIN_D", 1 if warm else 10**9)
    attribution = get_method(method, steps=8)
    x, target = images, torch.tensor([1, 2, 0, 1])
    alone = spectrum_iterative(attribution, cnn, x, target, tol=1e-6)
    warm = warm and attribution.coarse() is not None
    for group in (2, 4):
        together = spectrum_iterative(attribution, cnn, x, target, tol=1e-6,
                                      samples_per_pass=group)
        torch.testing.assert_close(together.xi_max, alone.xi_max, rtol=1e-9, atol=0)
        torch.testing.assert_close(together.v_max, alone.v_max, rtol=0, atol=1e-7)
        assert torch.equal(together.products, alone.products)
        assert (together.start_products is None) == (not warm)
        if warm:
            assert torch.equal(together.start_products, alone.start_products)
    full = spectrum_full(attribution_jacobian(attribution, cnn, x, target))
    _agree(together, full, rtol=1e-6, cos=0.999999)


def test_lockstep_with_a_zero_jacobian_among_others():
    """A sample whose ``J`` is known to be 0 (input x gradient of a linear model for a class
    whose weights are 0) is answered without a solver; the others in its pass are not
    disturbed: ``J = diag(w_y)``, so ``xi_max = max |w_y|``."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        model[1].weight[0] = 0.0
    model.requires_grad_(False)  # G does not depend on x at all: J = diag(G) known
    x = torch.randn(3, 1, 2, 3, dtype=torch.float64)
    target = torch.tensor([1, 0, 2])
    out = spectrum_iterative(get_method("input_x_gradient"), model, x, target, tol=1e-10,
                             samples_per_pass=3)
    weights = model[1].weight.detach().abs().max(1).values
    torch.testing.assert_close(out.xi_max, weights[target], rtol=1e-8, atol=0)
    assert int(out.products[1]) == 0


def test_lockstep_names_the_sample_whose_product_is_not_finite(cnn, images):
    """A product that is not finite in one sample of a lockstep pass is refused naming
    that sample, as when it runs alone."""
    from attrcert.errors import ModelOutputError

    class Poisoned(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = cnn

        def forward(self, x):
            marked = x.detach().flatten(1)[:, :1] > 1e6  # the marked sample only
            scale = torch.where(marked, torch.inf, 1.0).to(x.dtype)
            return self.inner(x) * scale

    x = images[:3].clone()
    x[2, 0, 0, 0] = 2e6
    with pytest.raises(ModelOutputError) as info:
        spectrum_iterative(get_method("saliency"), Poisoned(), x, torch.tensor([1, 2, 0]),
                           samples_per_pass=3)
    assert info.value.index == 2
