"""Audit: the Krylov values are upper values of a singular value of the operator, and
Proposition 1's screening never skips the minimiser, on singular operators and on logit
Jacobians with repeated singular values (linear models, where everything is exact)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from attrcert import certify
from attrcert.attributions import get_method
from attrcert.proposition1 import LogitJacobian, class_norm_bounds, label_test
from attrcert.spectral.krylov import golub_kahan, symmetric_lanczos


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("diag", [[3.0], [3.0, 1.0], [3.0, 2.9, 1.0]])
@pytest.mark.parametrize("seed", range(3))
def test_golub_kahan_on_a_singular_operator(dtype, diag, seed):
    """``J = diag(3, ..., 0, ..., 0)``: the left Krylov space is exhausted (``alpha = 0``)
    before the residual test passes. Before the fix the solver returned ``B_k``'s top
    singular value as exact: ``3 |v_1[0]|`` (0.10 for seed 1) for the rank-1 ``J``."""
    d = 64
    scale = torch.zeros(d, dtype=torch.float64)
    scale[: len(diag)] = torch.tensor(diag, dtype=torch.float64)

    def mv(v: torch.Tensor) -> torch.Tensor:
        return (scale.to(dtype) * v.to(dtype)).double()

    start = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    top = golub_kahan(mv, mv, start, tol=1e-4)
    rounding = 1e-9 if dtype == torch.float64 else 1e-6  # the operator is float32's
    assert top.value >= 3.0 * (1 - rounding)
    assert top.value <= 3.0 * (1 + 1e-4)
    assert abs(float(top.vector[0])) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("method", ["input_x_gradient", "integrated_gradients"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_xi_max_of_a_model_reading_one_pixel(method, dtype):
    """The predicted logit reads one pixel with weight 3: ``g = x * w`` (input x gradient)
    is linear, ``J = diag(w)`` of rank 1, ``xi_max = 3`` and ``T_e = 3 eps`` exactly.
    The iterative path reported ``xi_max = 0.148`` (``T_e`` 20 times too small), the
    dense path 3."""
    lin = nn.Linear(64, 3)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[0, 5], lin.bias[0] = 3.0, 10.0
        lin.weight[1, 7], lin.weight[2, 9] = -1.0, 0.5
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = x.double() if dtype == "float64" else x
    for record in certify(model, x, eps=0.1, method=method, dtype=dtype):
        assert record["xi_max"] == pytest.approx(3.0, rel=1e-4)
        assert record["xi_max"] >= 3.0 * (1 - 1e-6)


K, D = 40, 64


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    lin = nn.Linear(D, K).double()
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return nn.Sequential(nn.Flatten(), lin).eval()


def _equal_rows() -> dict[str, torch.Tensor]:
    """Logit Jacobians with ``W W^T = 4 I``: every singular value repeated."""
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(D, K, generator=gen, dtype=torch.float64))
    select = torch.zeros(K, D, dtype=torch.float64)
    select[torch.arange(K), torch.arange(K)] = 2.0  # class j reads pixel j
    return {"orthogonal": 2.0 * q.T, "one_pixel_each": select}


@pytest.mark.parametrize("name", ["orthogonal", "one_pixel_each"])
def test_class_norm_bounds_with_repeated_singular_values(name):
    """The first Golub-Kahan run stops after 2 steps (an invariant Krylov subspace of
    ``W^T W = 4 P``), which is not the row space. Before the fix ``rho = 0`` and all 39
    bounds were below ``||a_j|| = 2 sqrt 2`` (0.008 .. 0.3)."""
    weight = _equal_rows()[name]
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    found = class_norm_bounds(LogitJacobian(_linear(weight, torch.zeros(K)), x), 0, steps=16,
                              tol=1e-2, seed=0)
    exact = (weight - weight[0]).norm(dim=1).numpy()
    assert np.all(found.upper >= exact * (1 - 1e-9))


@pytest.mark.parametrize("q", [2.0, 1.0, 1.5])
@pytest.mark.parametrize("name", ["orthogonal", "one_pixel_each"])
def test_screening_finds_the_minimiser_of_a_linear_model(q, name):
    """``label_radius`` against ``min_j b_j / ||W_j - W_y||_q``, with the margins chosen so
    that each competitor in turn is the minimiser (``b = 1`` for it, 2 for the others).
    Before the fix the screened radius was twice the definition's (0.707 against 0.354
    for ``q = 2``) where the minimiser had the smallest (wrong) screening bound."""
    weight = _equal_rows()[name]
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    wx = weight @ x.reshape(-1)
    norms = torch.linalg.vector_norm(weight - weight[0], ord=q, dim=1)
    for star in range(1, K):
        margins = torch.full((K,), 2.0, dtype=torch.float64)
        margins[0], margins[star] = 0.0, 1.0
        model = _linear(weight, 10.0 - margins - wx)
        logits = model(x).detach()
        b = logits[0, 0] - logits[0]
        exact = float((b[1:] / norms[1:]).min())
        got = label_test(model, x, torch.tensor([0]), logits, torch.zeros(1, 1, D), q=q,
                         attribution=get_method("saliency"), classes_per_pass=1)
        assert float(got.radius[0]) == pytest.approx(exact, rel=1e-9), star
        assert math.isfinite(exact)


def _spectrum(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    s = torch.rand(n, generator=gen, dtype=torch.float64) * 0.9
    if kind == "gap":  # a separated top value
        s[0] = 1.0
    elif kind == "near":  # two top values 1e-9 apart
        s[0], s[1] = 1.0, 1.0 - 1e-9
    elif kind == "low_rank":  # rank 3, the rest exactly 0
        s = torch.zeros(n, dtype=torch.float64)
        s[:3] = torch.tensor([1.0, 0.5, 0.2], dtype=torch.float64)
    elif kind == "cluster":  # 60 values within 1 % of the top
        s = 0.99 + 0.01 * torch.rand(n, generator=gen, dtype=torch.float64)
        s[0] = 1.0
    return s


@pytest.mark.parametrize("solver", ["golub_kahan", "lanczos"])
@pytest.mark.parametrize("kind", ["gap", "near", "low_rank", "cluster"])
def test_krylov_values_against_a_dense_svd(solver, kind):
    """``J = U diag(s) V^T`` (``H = U diag(+-s) U^T`` for Lanczos, eigenvalues of both signs)
    against ``torch.linalg.svdvals``: the reported value is within ``tol`` of
    ``sigma_max``, and above it wherever the top value is found (not in a cluster of 60
    values within 1 %, where the solver stops on a member ``tol`` below)."""
    tol, n = 1e-4, 60
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        s = _spectrum(kind, n, gen)
        u, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
        start = torch.randn(n, generator=gen, dtype=torch.float64)
        if solver == "golub_kahan":
            op = u @ torch.diag(s) @ v.T
            top = golub_kahan(lambda z, op=op: op @ z, lambda z, op=op: op.T @ z, start, tol=tol)
        else:
            signs = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
            op = u @ torch.diag(s * signs) @ u.T
            top = symmetric_lanczos(lambda z, op=op: op @ z, start, tol=tol)
        sigma = float(torch.linalg.svdvals(op)[0])
        floor = 1 - tol if kind == "cluster" else 1 - 1e-12
        assert sigma * floor <= top.value <= sigma * (1 + tol), (seed, top.value, sigma)
        assert top.ritz <= sigma * (1 + 1e-12)
