"""The bounds of docs/math.md §2-§4 on models whose Jacobian is known, against brute force and exact
label changes."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from attrcert import bounds, certify, max_eps
from attrcert.errors import OptionError

from .models import make_quadratic

METHODS = ["saliency", "input_x_gradient", "integrated_gradients"]


def _svd_top(j: torch.Tensor) -> float:
    return float(np.linalg.svd(j.numpy(), compute_uv=False)[0])


@pytest.mark.parametrize("method", METHODS)
def test_closed_form_bounds_l2(method):
    model = make_quadratic(k=4, shape=(1, 3, 3))
    x = torch.rand(3, 1, 3, 3, dtype=torch.float64)
    eps = 0.05
    records = certify(model, x, eps=eps, method=method, steps=6)
    for rec, xn in zip(records, x, strict=True):
        y = rec["target"]
        jac = model.jacobian(xn, y, method, steps=6)
        g = model.attribution(xn, y, method, steps=6)
        xi = _svd_top(jac)
        assert rec["xi_max"] == pytest.approx(xi, rel=1e-9)
        assert rec["T_e"] == pytest.approx(xi * eps, rel=1e-9)
        assert rec["T_e_method"] == "theorem1"
        assert rec["attr_norm"] == pytest.approx(float(g.norm()), rel=1e-12)
        ratio = xi * eps / float(g.norm())
        assert rec["T_c"] == pytest.approx(1 - math.sqrt(1 - ratio**2), rel=1e-9)
        assert rec["T_c_deg"] == pytest.approx(math.degrees(math.asin(ratio)), rel=1e-9)
        assert rec["vacuous"] is False
        assert rec["c"] >= 1.0
        assert rec["T_e_prime"] == pytest.approx(rec["c"] * rec["T_e"], rel=1e-12)


def test_saliency_on_quadratic_is_linear_so_c_is_one_and_bound_attained():
    model = make_quadratic(k=3, shape=(1, 2, 2), seed=5)
    x = torch.rand(4, 1, 2, 2, dtype=torch.float64)
    eps = 0.3
    records = certify(model, x, eps=eps, method="saliency")
    for rec, xn in zip(records, x, strict=True):
        a = model.a[rec["target"]].numpy()
        vt = np.linalg.svd(a)[2]
        assert rec["c"] == pytest.approx(1.0, abs=1e-9)
        # g(x + delta) - g(x) = A delta exactly: the bound is attained at +-eps v_max
        assert np.linalg.norm(a @ (eps * vt[0])) == pytest.approx(rec["T_e"], rel=1e-9)
        # and never exceeded, on random directions of the ball
        for _ in range(50):
            delta = np.random.default_rng(0).normal(size=4)
            delta *= eps / np.linalg.norm(delta)
            assert np.linalg.norm(a @ delta) <= rec["T_e"] * (1 + 1e-12)
        assert xn.shape == (1, 2, 2)


@pytest.mark.parametrize("p", [3.0, 4.0, 1.5, 1.0])
def test_lp_bounds(p):
    model = make_quadratic(k=3, shape=(1, 2, 3), seed=2)
    x = torch.rand(2, 1, 2, 3, dtype=torch.float64)
    rec = certify(model, x, eps=0.1, norm=p, method="saliency")[0]
    xi = _svd_top(model.a[rec["target"]])
    factor = 6 ** (0.5 - 1 / p) if p > 2 else 1.0
    assert rec["T_e"] == pytest.approx(factor * xi * 0.1, rel=1e-9)
    assert rec["T_e_method"] == "corollary1"
    assert rec["c"] is None and rec["T_e_prime"] is None


@pytest.mark.parametrize("d", [2, 5, 9, 12])
def test_theorem2_against_brute_force_over_sign_vectors(d):
    """max_{||delta||_inf <= eps} ||J delta||_2 is attained at a vertex; Thm 2 bounds it."""
    rng = np.random.default_rng(d)
    jac = rng.normal(size=(d, d))
    eps = 0.07
    vertices = np.array(list(itertools.product([-1.0, 1.0], repeat=d)))
    brute = eps * np.linalg.norm(vertices @ jac.T, axis=1).max()
    bound = bounds.euclidean_bound_linf(np.abs(jac.T @ jac).sum(), eps)
    assert brute <= bound * (1 + 1e-12)
    # rank one J = u w^T: P = |u|^2 w w^T and the bound is attained at eps * sign(w)
    u, w = rng.normal(size=d), rng.normal(size=d)
    rank1 = np.outer(u, w)
    brute1 = eps * np.linalg.norm(vertices @ rank1.T, axis=1).max()
    assert brute1 == pytest.approx(bounds.euclidean_bound_linf(np.abs(rank1.T @ rank1).sum(),
                                                               eps), rel=1e-12)


def test_theorem2_through_certify_against_brute_force():
    model = make_quadratic(k=2, shape=(1, 3, 3), seed=7)
    x = torch.rand(1, 1, 3, 3, dtype=torch.float64)
    eps = 0.02
    rec = certify(model, x, eps=eps, norm="inf", method="saliency")[0]
    a = model.a[rec["target"]].numpy()
    vertices = np.array(list(itertools.product([-1.0, 1.0], repeat=9)))
    brute = eps * np.linalg.norm(vertices @ a.T, axis=1).max()
    assert rec["T_e_method"] == "theorem2"
    assert rec["T_e"] == pytest.approx(eps * math.sqrt(np.abs(a.T @ a).sum()), rel=1e-9)
    assert brute <= rec["T_e"] * (1 + 1e-12)
    assert rec["T_e_min"] == pytest.approx(min(rec["T_e"], 3 * rec["xi_max"] * eps), rel=1e-12)
    assert brute <= rec["T_e_min"] * (1 + 1e-12)


def test_cosine_bound_and_vacuous_case():
    assert bounds.cosine_bound(0.0, 2.0) == bounds.CosineBound(0.0, 0.0, False)
    half = bounds.cosine_bound(1.0, 2.0)
    assert half.distance == pytest.approx(1 - math.sqrt(0.75))
    assert half.degrees == pytest.approx(30.0)
    assert bounds.cosine_bound(2.0, 2.0) == bounds.CosineBound(2.0, 180.0, True)
    assert bounds.cosine_bound(5.0, 2.0).vacuous
    assert bounds.cosine_bound(1.0, 0.0) == bounds.CosineBound(None, None, True)


def test_vacuous_flag_through_certify():
    model = make_quadratic(k=2, shape=(1, 2, 2), seed=3)
    x = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    rec = certify(model, x, eps=1e3, method="saliency")[0]
    assert rec["vacuous"] is True and rec["T_c"] == 2.0 and rec["T_c_deg"] == 180.0


def test_modification_factor():
    assert bounds.modification_factor([0.5, 0.4], xi_max=1.0, eps=1.0) == 1.0
    assert bounds.modification_factor([1.5, 1.2], xi_max=1.0, eps=1.0) == 1.5
    assert bounds.modification_factor([1.0, 1.0], xi_max=0.0, eps=1.0) == 1.0


@pytest.mark.parametrize(("metric", "omega", "norm", "key"), [
    ("euclidean", 0.01, 2, "T_e"),
    ("euclidean", 0.02, "inf", "T_e"),
    ("euclidean", 0.02, 3, "T_e"),
    ("cosine", 0.05, 2, "T_c"),
    ("cosine", 0.2, "inf", "T_c"),
    ("angle", 10.0, 2, "T_c_deg"),
])
def test_max_eps_round_trip(metric, omega, norm, key):
    """The bound evaluated at eps_max equals the tolerance (docs/math.md §3, with the §5 errata)."""
    model = make_quadratic(k=3, shape=(1, 3, 3), seed=11)
    x = torch.rand(3, 1, 3, 3, dtype=torch.float64) + 0.5
    found = max_eps(model, x, omega=omega, metric=metric, norm=norm, steps=5)
    for rec, xn in zip(found, x, strict=True):
        assert rec["eps_max"] > 0 and rec["metric"] == metric and rec["omega"] == omega
        again = certify(model, xn[None], eps=rec["eps_max"], norm=norm, steps=5)[0]
        assert again[key] == pytest.approx(omega, rel=1e-9)


def test_max_eps_modified_meets_tolerance_by_bisection():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.rand(3, 1, 3, 3, dtype=torch.float64)
    omega = 0.05
    found = max_eps(model, x, omega=omega, modified=True, steps=4, bisection_steps=40)
    for rec, xn in zip(found, x, strict=True):
        assert rec["eps_max"] <= rec["eps_max_linear"] * (1 + 1e-12)
        again = certify(model, xn[None], eps=rec["eps_max"], steps=4)[0]
        assert again["T_e_prime"] <= omega * (1 + 1e-9)
        assert again["T_e_prime"] == pytest.approx(omega, rel=1e-6)


def test_max_eps_options_are_checked():
    model = make_quadratic()
    x = torch.rand(1, 1, 3, 3, dtype=torch.float64)
    with pytest.raises(OptionError, match="cosine"):
        max_eps(model, x, omega=1.5, metric="cosine")
    with pytest.raises(OptionError, match="angle"):
        max_eps(model, x, omega=100, metric="angle")
    with pytest.raises(OptionError, match="metric"):
        max_eps(model, x, omega=0.1, metric="kendall")
    with pytest.raises(OptionError, match="l2"):
        max_eps(model, x, omega=0.1, norm="inf", modified=True)
    with pytest.raises(OptionError, match="omega"):
        max_eps(model, x, omega=float("nan"))


def test_errata_eq52_is_not_used():
    """docs/math.md §5: eps_max = ||g|| sqrt(1 - (1 - w)^2) / xi, not
    ||g||^2 (1 - (1 - w)^2) / xi."""
    tol = bounds.euclidean_tolerance(0.1, "cosine", attr_norm=3.0)
    assert tol == pytest.approx(3.0 * math.sqrt(1 - 0.9**2))
    assert bounds.max_eps_linear(tol, 2.0) == pytest.approx(1.5 * math.sqrt(0.19))


class Linear(nn.Module):
    def __init__(self, w: torch.Tensor, c: torch.Tensor) -> None:
        super().__init__()
        self.w, self.c = w, c

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.c


@pytest.mark.parametrize("norm", [2, "inf"])
def test_proposition1_is_exact_on_a_linear_model(norm):
    """On a linear model IG is complete and linear: Eq. 8 decides the real label change."""
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    model = Linear(w, torch.randn(4, generator=gen, dtype=torch.float64))
    x = torch.rand(64, 1, 3, 3, generator=gen, dtype=torch.float64)
    records = certify(model, x, eps=0.15, norm=norm, steps=3)
    outcomes = {r["label_preserved"] for r in records}
    assert outcomes == {True, False}
    for r in records:
        assert r["label_preserved"] == r["label_kept"]
        assert r["completeness_gap"] == pytest.approx(0.0, abs=1e-12)
    # the label radius is exact: just inside it the worst competitor cannot win
    r = next(r for r in records if r["label_radius"] and r["label_radius"] > 0)
    xn, y = x[r["index"]].flatten(), r["target"]
    logits = model(xn[None])[0]
    for eps, kept in ((0.999 * r["label_radius"], True), (1.001 * r["label_radius"], False)):
        best = None
        for other in set(range(4)) - {y}:
            a = (w[other] - w[y]).numpy()
            delta = a / np.linalg.norm(a) if norm == 2 else np.sign(a)
            value = float(logits[y] - logits[other]) - eps * float(a @ delta)
            best = value if best is None else min(best, value)
        assert (best > 0) == kept


def test_records_are_strict_json_and_zero_curvature_is_flagged():
    """A linear model has J = 0 for saliency: xi_max = 0, no NaN, eps_max unbounded."""
    gen = torch.Generator().manual_seed(8)
    model = Linear(torch.randn(3, 4, generator=gen, dtype=torch.float64),
                   torch.zeros(3, dtype=torch.float64))
    x = torch.rand(2, 1, 2, 2, generator=gen, dtype=torch.float64)
    records = certify(model, x, eps=0.1, method="saliency")
    json.dumps(records, allow_nan=False)
    assert records[0]["xi_max"] == 0.0 and records[0]["T_e"] == 0.0 and records[0]["c"] == 1.0
    found = max_eps(model, x, omega=0.1, method="saliency")
    json.dumps(found, allow_nan=False)
    assert found[0]["eps_max"] is None and found[0]["eps_max_unbounded"] is True


def test_zero_attribution_gives_null_cosine():
    model = make_quadratic(k=2, shape=(1, 2, 2))
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    rec = certify(model, x, eps=0.1, method="input_x_gradient")[0]
    assert rec["attr_norm"] == 0.0
    assert rec["T_c"] is None and rec["T_c_deg"] is None and rec["vacuous"] is True
    json.dumps(rec, allow_nan=False)


def test_certify_checks_options(cnn, images):
    with pytest.raises(OptionError, match="eps"):
        certify(cnn, images, eps=0.0)
    with pytest.raises(OptionError, match="eps"):
        certify(cnn, images, eps=float("nan"))
    with pytest.raises(OptionError, match="norm"):
        certify(cnn, images, eps=0.1, norm=0.5)
    with pytest.raises(OptionError, match="chunk_size"):
        certify(cnn, images, eps=0.1, chunk_size=0)
    with pytest.raises(OptionError, match="target"):
        certify(cnn, images, eps=0.1, target=7)
    with pytest.raises(OptionError, match="NaN"):
        certify(cnn, images * float("nan"), eps=0.1)


def test_batching_and_chunking_do_not_change_records(cnn, images):
    kw = dict(eps=0.1, steps=3)
    whole = certify(cnn, images, **kw)
    split = certify(cnn, images, batch_size=3, chunk_size=5, **kw)
    for a, b in zip(whole, split, strict=True):
        for key in ("xi_max", "T_e", "T_e_prime", "T_c", "label_radius", "attr_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-10)
        assert a["index"] == b["index"]


def test_label_gradient_through_the_attribution_agrees_under_completeness():
    """On a linear model IG is exactly complete: grad sum_i g^j_i = grad f_j for every j."""
    gen = torch.Generator().manual_seed(9)
    model = Linear(torch.randn(3, 4, generator=gen, dtype=torch.float64),
                   torch.randn(3, generator=gen, dtype=torch.float64))
    x = torch.rand(5, 1, 2, 2, generator=gen, dtype=torch.float64)
    plain = certify(model, x, eps=0.3, steps=3)
    through = certify(model, x, eps=0.3, steps=3, label_gradient="attribution")
    for a, b in zip(plain, through, strict=True):
        assert a["label_radius"] == pytest.approx(b["label_radius"], rel=1e-12)
        assert a["label_preserved"] == b["label_preserved"]
    with pytest.raises(OptionError, match="label_gradient"):
        certify(model, x, eps=0.3, label_gradient="hessian")
