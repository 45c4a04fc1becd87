"""Attribution Jacobians against closed forms, torch.autograd.functional.jacobian and finite
differences in float64; chunking, strategy and batching do not change them."""

from __future__ import annotations

import pytest
import torch

from attrcert.attributions import get_method
from attrcert.jacobian import attribution_jacobian

from .models import make_cnn, make_quadratic

METHODS = ["saliency", "input_x_gradient", "integrated_gradients"]


@pytest.mark.parametrize("method", METHODS)
def test_closed_form_quadratic(method):
    model = make_quadratic(k=3, shape=(1, 2, 3))
    x = torch.rand(2, 1, 2, 3, dtype=torch.float64)
    target = torch.tensor([2, 0])
    jac = attribution_jacobian(get_method(method, steps=5), model, x, target)
    for n in range(2):
        expected = model.jacobian(x[n], int(target[n]), method, steps=5)
        torch.testing.assert_close(jac[n], expected, rtol=1e-10, atol=1e-12)


def _reference(method, model, x, target, steps=4):
    attribution = get_method(method, steps=steps)

    def g(x1):
        return attribution(model, x1, target, create_graph=True).flatten()

    return torch.autograd.functional.jacobian(g, x).reshape(x[0].numel(), x[0].numel())


@pytest.mark.parametrize("method", METHODS)
def test_against_autograd_functional_jacobian(method, cnn, images):
    target = torch.tensor([1])
    jac = attribution_jacobian(get_method(method, steps=4), cnn, images[:1], target)
    ref = _reference(method, cnn, images[:1], target)
    torch.testing.assert_close(jac[0], ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_against_central_finite_differences(method, cnn, images):
    x, target = images[2:3], torch.tensor([0])
    attribution = get_method(method, steps=4)
    jac = attribution_jacobian(attribution, cnn, x, target)[0]
    d, h = x.numel(), 1e-5
    fd = torch.empty(d, d, dtype=torch.float64)
    for j in range(d):
        e = torch.zeros(d, dtype=torch.float64)
        e[j] = h
        plus = attribution(cnn, x + e.view_as(x), target).flatten()
        minus = attribution(cnn, x - e.view_as(x), target).flatten()
        fd[:, j] = (plus - minus) / (2 * h)
    torch.testing.assert_close(jac, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_chunking_and_strategy_do_not_change_results(method, cnn, images):
    attribution = get_method(method, steps=3)
    target = torch.tensor([0, 1, 2, 0])
    ref = attribution_jacobian(attribution, cnn, images, target, chunk_size=36,
                               strategy="replicate")
    for chunk in (1, 5, 7):
        got = attribution_jacobian(attribution, cnn, images, target, chunk_size=chunk,
                                   strategy="replicate")
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    loop = attribution_jacobian(attribution, cnn, images, target, strategy="loop")
    torch.testing.assert_close(loop, ref, rtol=1e-12, atol=1e-14)


def test_batching_does_not_change_results(cnn, images):
    attribution = get_method("integrated_gradients", steps=3)
    target = torch.tensor([0, 1, 2, 0])
    for strategy in ("loop", "replicate"):
        whole = attribution_jacobian(attribution, cnn, images, target, chunk_size=8,
                                     strategy=strategy)
        for n in range(4):
            alone = attribution_jacobian(attribution, cnn, images[n : n + 1],
                                         target[n : n + 1], chunk_size=11, strategy=strategy)
            torch.testing.assert_close(alone[0], whole[n], rtol=1e-12, atol=1e-14)


def test_progress_reports_rows_done(cnn, images):
    seen = []
    attribution_jacobian(get_method("saliency"), cnn, images[:1], torch.tensor([0]),
                         chunk_size=10, strategy="replicate",
                         progress=lambda done, total: seen.append((done, total)))
    assert seen == [(10, 36), (20, 36), (30, 36), (36, 36)]
    seen.clear()
    attribution_jacobian(get_method("saliency"), cnn, images[:1], torch.tensor([0]),
                         strategy="loop", progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (36, 36)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


@pytest.mark.parametrize("method", ["input_x_gradient", "integrated_gradients"])
@pytest.mark.parametrize("strategy", ["loop", "replicate"])
def test_rows_of_zero_input_factor_are_exact(method, strategy, cnn, images):
    """Where u_i = x_i - b_i = 0 the row is G_i e_i: filled without a pass, still exact."""
    x = images.clone()
    x[:, :, :3, :] = 0.0  # a black band, as digits have black borders
    target = torch.tensor([2, 0, 1, 1])
    attribution = get_method(method, steps=3)
    jac = attribution_jacobian(attribution, cnn, x, target, strategy=strategy, chunk_size=4)
    for n in range(4):
        ref = _reference(method, cnn, x[n : n + 1], target[n : n + 1], steps=3)
        torch.testing.assert_close(jac[n], ref, rtol=1e-9, atol=1e-12)


def test_relu_saliency_jacobian_is_zero():
    """ReLU networks are piecewise linear: the saliency Hessian vanishes (docs/math.md §6)."""
    model = make_cnn(smooth=False)
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    jac = attribution_jacobian(get_method("saliency"), model, x, torch.tensor([0]))
    assert jac.abs().max() == 0


def test_rejects_bad_arguments(cnn, images):
    with pytest.raises(ValueError, match="chunk_size"):
        attribution_jacobian(get_method("saliency"), cnn, images, torch.zeros(4, dtype=torch.long),
                             chunk_size=0)
    with pytest.raises(ValueError, match="strategy"):
        attribution_jacobian(get_method("saliency"), cnn, images, torch.zeros(4, dtype=torch.long),
                             strategy="vmap")
