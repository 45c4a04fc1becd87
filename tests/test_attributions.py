"""Attributions equal Captum's (the oracle) and the closed forms, and stay differentiable."""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency

from attrcert import attribute
from attrcert.errors import OptionError

from .models import make_quadratic

METHODS = ["saliency", "input_x_gradient", "integrated_gradients"]


def captum(method: str, model, x, target, steps=7, baseline=None):
    if method == "saliency":
        return Saliency(model).attribute(x, target=target, abs=False)
    if method == "input_x_gradient":
        return InputXGradient(model).attribute(x, target=target)
    return IntegratedGradients(model).attribute(
        x, baselines=baseline, target=target, n_steps=steps, method="riemann_right")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_captum(method, dtype, cnn, images):
    model, x = cnn.to(dtype), images.to(dtype)
    target = torch.tensor([0, 1, 2, 1])
    ours = attribute(model, x, method=method, target=target, steps=7)
    ref = captum(method, model, x.clone().requires_grad_(), target)
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-5, atol=1e-7)


def test_ig_matches_captum_with_baseline(cnn, images):
    gen = torch.Generator().manual_seed(3)
    base = torch.rand(1, 1, 6, 6, generator=gen, dtype=torch.float64)
    target = torch.tensor([2, 2, 0, 1])
    ours = attribute(cnn, images, target=target, steps=5, baseline=base)
    ref = captum("integrated_gradients", cnn, images, target, steps=5,
                 baseline=base.expand_as(images))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_closed_form_on_quadratic(method):
    model = make_quadratic()
    x = torch.rand(3, 1, 3, 3, dtype=torch.float64)
    target = torch.tensor([0, 3, 1])
    ours = attribute(model, x, method=method, target=target, steps=6)
    for n in range(3):
        expected = model.attribution(x[n], int(target[n]), method, steps=6)
        torch.testing.assert_close(ours[n].flatten(), expected, rtol=1e-10, atol=1e-12)


def test_default_target_is_prediction(cnn, images):
    predicted = cnn(images).argmax(1)
    torch.testing.assert_close(attribute(cnn, images, method="saliency"),
                               attribute(cnn, images, method="saliency", target=predicted))


@pytest.mark.parametrize("method", METHODS)
def test_create_graph_is_differentiable(method, cnn, images):
    x = images.clone().requires_grad_(True)
    g = attribute(cnn, x, method=method, steps=3, create_graph=True)
    assert g.requires_grad
    (second,) = torch.autograd.grad(g.square().sum(), x)
    assert second.abs().sum() > 0
    detached = attribute(cnn, images, method=method, steps=3)
    assert not detached.requires_grad


def test_batch_does_not_change_attributions(cnn, images):
    whole = attribute(cnn, images, steps=4)
    single = torch.cat([attribute(cnn, images[i : i + 1], steps=4) for i in range(4)])
    torch.testing.assert_close(whole, single, rtol=1e-12, atol=1e-14)


def test_ig_completeness_improves_with_steps(cnn, images):
    f = cnn(images).gather(1, cnn(images).argmax(1, keepdim=True)).squeeze(1)
    f0 = cnn(torch.zeros_like(images)).gather(1, cnn(images).argmax(1, keepdim=True)).squeeze(1)
    gaps = [(attribute(cnn, images, steps=m).flatten(1).sum(1) - (f - f0)).abs().max().item()
            for m in (2, 20, 200)]
    assert gaps[2] < gaps[1] < gaps[0]
    assert gaps[2] < 1e-2


def test_bad_options(cnn, images):
    with pytest.raises(OptionError, match="unknown method"):
        attribute(cnn, images, method="gradcam")
    with pytest.raises(OptionError, match="steps"):
        attribute(cnn, images, steps=0)
    with pytest.raises(OptionError, match="baseline"):
        attribute(cnn, images, method="saliency", baseline=torch.zeros(1, 1, 6, 6))
