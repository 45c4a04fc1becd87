"""Proposition 1 at a cost independent of the class count: the screened label radius and the
one-product label test equal the exhaustive computation over every class gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from attrcert import bounds
from attrcert.attributions import get_method, target_gradient
from attrcert.proposition1 import (
    LogitJacobian,
    class_norm_bounds,
    dual_factor,
    label_test,
    screened_radius,
)


def wide_net(k: int, seed: int = 0) -> nn.Module:
    """A smooth CNN with ``k`` classes (float64)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Softplus(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 16), nn.Tanh(), nn.Linear(16, k)).double().eval()


def exhaustive(model: nn.Module, x: torch.Tensor, y: int, q: float,
               deltas: list[np.ndarray]) -> tuple[float | None, bool]:
    """The radius and test of Eq. 8 from all ``k`` class gradients (the definition)."""
    logits = model(x).detach()[0].numpy()
    k = logits.size
    grads = np.stack([target_gradient(model, x.clone().requires_grad_(True),
                                      torch.tensor([j]), create_graph=False)[0].flatten()
                      .detach().numpy() for j in range(k)])
    a = bounds.label_directions(grads, y)
    b = bounds.label_margins(logits, y)
    return bounds.label_radius(a, b, q), bounds.label_preserved(a, b, deltas)


@pytest.mark.parametrize("q", [2.0, 1.0, 1.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_screened_radius_equals_the_exhaustive_one(q, seed):
    model = wide_net(150, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 1, 6, 6, generator=gen, dtype=torch.float64)
    logits = model(x).detach()
    target = logits.argmax(1)
    deltas = 0.3 * torch.randn(2, 2, 36, generator=gen, dtype=torch.float64)
    got = label_test(model, x, target, logits, deltas, q=q,
                     attribution=get_method("saliency"), classes_per_pass=4)
    for i in range(2):
        radius, preserved = exhaustive(model, x[i : i + 1], int(target[i]), q,
                                       [d.numpy() for d in deltas[:, i]])
        assert float(got.radius[i]) == pytest.approx(radius, rel=1e-9)
        assert bool(got.preserved[i]) == preserved
    if q == 2.0:  # screening pays: far fewer than the 149 competitors were computed
        assert int(got.classes.max()) < 100


def test_screening_runs_when_every_class_fits_in_one_pass():
    """A memory budget that holds every class gradient at once still screens them (it once
    computed all k - 1 whenever they fitted in one pass)."""
    model = wide_net(150, 0)
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    logits = model(x).detach()
    target = logits.argmax(1)
    got = label_test(model, x, target, logits, torch.zeros(1, 1, 36, dtype=torch.float64),
                     q=2.0, attribution=get_method("saliency"), classes_per_pass=None)
    radius, _ = exhaustive(model, x, int(target[0]), 2.0, [np.zeros(36)])
    assert float(got.radius[0]) == pytest.approx(radius, rel=1e-9)
    assert int(got.classes[0]) < 100


def test_a_non_predicted_target_has_radius_zero():
    model = wide_net(40)
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    logits = model(x).detach()
    other = (int(logits.argmax()) + 1) % 40
    got = label_test(model, x, torch.tensor([other]), logits, torch.zeros(2, 1, 36,
                     dtype=torch.float64), q=2.0, attribution=get_method("saliency"),
                     classes_per_pass=3)
    assert float(got.radius[0]) == 0.0


def test_constant_model_has_no_finite_radius():
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 20)).double()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.arange(20.0))
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    logits = model(x).detach()
    got = label_test(model, x, logits.argmax(1), logits, torch.zeros(2, 1, 36,
                     dtype=torch.float64), q=2.0, attribution=get_method("saliency"),
                     classes_per_pass=2)
    assert math.isinf(float(got.radius[0]))


@pytest.mark.parametrize("how", ["completeness", "attribution"])
def test_attribution_label_gradient_equals_the_old_path(how):
    model = wide_net(12, 3)
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    logits = model(x).detach()
    y = int(logits.argmax())
    ig = get_method("integrated_gradients", steps=3)
    deltas = 0.5 * torch.randn(2, 1, 36, dtype=torch.float64)
    got = label_test(model, x, torch.tensor([y]), logits, deltas, q=2.0, attribution=ig,
                     how=how, classes_per_pass=5)
    rows = []
    for j in range(12):
        leaf = x.clone().requires_grad_(True)
        if how == "completeness":
            rows.append(target_gradient(model, leaf, torch.tensor([j]),
                                        create_graph=False)[0].flatten())
        else:
            g = ig(model, leaf, torch.tensor([j]), create_graph=True)
            rows.append(torch.autograd.grad(g.sum(), leaf)[0].flatten())
    grads = torch.stack(rows).detach().numpy()
    a = bounds.label_directions(grads, y)
    b = bounds.label_margins(logits[0].numpy(), y)
    assert float(got.radius[0]) == pytest.approx(bounds.label_radius(a, b, 2.0), rel=1e-9)
    assert bool(got.preserved[0]) == bounds.label_preserved(a, b, [deltas[0, 0].numpy(),
                                                                   deltas[1, 0].numpy()])


def test_logit_jacobian_products_match_the_jacobian():
    model = wide_net(7)
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    jf = torch.autograd.functional.jacobian(lambda z: model(z)[0], x).reshape(7, 36)
    jac = LogitJacobian(model, x)
    v = torch.randn(1, 36, dtype=torch.float64)
    c = torch.randn(1, 7, dtype=torch.float64)
    torch.testing.assert_close(jac.matvec(v)[0], jf @ v[0])
    torch.testing.assert_close(jac.rmatvec(c)[0], jf.T @ c[0])


@pytest.mark.parametrize("seed", range(20))
def test_screening_never_misses_the_minimum(seed):
    """Brute force: any valid bound gives the exact minimum ratio."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    margins = rng.exponential(size=n) * rng.choice([1e-3, 1.0, 10.0])
    norms = rng.exponential(size=n)
    norms[rng.random(n) < 0.2] = 0.0
    upper = norms * (1 + rng.exponential(size=n)) + rng.exponential(size=n) * (rng.random(n) < 0.5)
    seen: list[int] = []

    def exact(idx: np.ndarray) -> np.ndarray:
        seen.extend(idx.tolist())
        return norms[idx]

    got, done = screened_radius(margins, upper, exact, int(rng.integers(1, 7)))
    positive = norms > 0
    want = float(np.min(margins[positive] / norms[positive])) if positive.any() else math.inf
    assert got == want
    assert done == len(seen) == len(set(seen))


def test_dual_factor():
    assert dual_factor(100, 2.0) == 1.0
    assert dual_factor(100, 1.0) == pytest.approx(10.0)
    assert dual_factor(100, 3.0) == 1.0


@pytest.mark.parametrize("steps", [1, 5, 30])
def test_class_norm_bounds_hold(steps):
    model = wide_net(60, 4)
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    y = int(model(x).argmax())
    jf = torch.autograd.functional.jacobian(lambda z: model(z)[0], x).reshape(60, 36)
    exact = (jf - jf[y]).norm(dim=1).numpy()
    found = class_norm_bounds(LogitJacobian(model, x), y, steps=steps, tol=1e-2, seed=0)
    assert np.all(found.upper >= exact * (1 - 1e-9))
    if steps == 30:  # the logit Jacobian has rank <= 16: the bounds are exact
        np.testing.assert_allclose(found.upper, exact, rtol=1e-6, atol=1e-12)
