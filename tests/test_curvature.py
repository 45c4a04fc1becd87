"""``J = diag(G) + diag(u) M``: the curvature products equal the full Jacobian's, however
the points are cut, and the Krylov solvers' values bound the top singular value."""

from __future__ import annotations

import pytest
import torch

from attrcert.attributions import get_method
from attrcert.jacobian import attribution_jacobian
from attrcert.spectral.curvature import CurvatureProducts, curvature_segments
from attrcert.spectral.krylov import golub_kahan, symmetric_lanczos


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients"])
@pytest.mark.parametrize("per_pass", [None, 1, 2, 3, 5])
def test_products_equal_the_jacobian(method, per_pass, cnn, images):
    attribution = get_method(method, steps=5)
    x, target = images[:1], torch.tensor([2])
    jac = attribution_jacobian(attribution, cnn, x, target)[0]
    ops = CurvatureProducts(attribution, cnn, x, target, points_per_pass=per_pass, copies=2)
    v = torch.randn(2, jac.shape[0], dtype=torch.float64)
    torch.testing.assert_close(ops.matvec(v), v @ jac.T)
    torch.testing.assert_close(ops.rmatvec(v), v @ jac)
    assert ops.symmetric == (method == "saliency")
    if ops.symmetric:
        torch.testing.assert_close(jac, jac.T)


@pytest.mark.parametrize("points,per_pass", [(16, None), (16, 8), (16, 3), (16, 1), (7, 2)])
def test_segments_cover_every_point_within_the_budget(points, per_pass):
    kept, rebuilt = curvature_segments(points, per_pass)
    assert kept + sum(rebuilt) == points and min(rebuilt, default=1) >= 1
    if per_pass is not None:
        assert kept + max(rebuilt, default=0) <= max(per_pass, 1)


@pytest.mark.parametrize("seed", range(6))
def test_krylov_values_bound_the_singular_value_they_converged_to(seed):
    """Some eigenvalue lies within the residual of the Ritz value (whatever the tolerance);
    converged fully, the value bounds the top one."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(40, 40, generator=gen, dtype=torch.float64)
    sym = a + a.T
    eigs = torch.linalg.eigvalsh(sym).abs()
    sings = torch.linalg.svdvals(a)
    for tol in (1e-1, 1e-3, 1e-12):
        top = symmetric_lanczos(lambda v: sym @ v, torch.randn(40, generator=gen,
                                dtype=torch.float64), tol=tol)
        assert top.ritz <= top.value <= top.ritz * (1 + tol) + 1e-12
        assert float((eigs - top.ritz).abs().min()) <= top.residual * (1 + 1e-9) + 1e-12
        gk = golub_kahan(lambda v: a @ v, lambda u: a.T @ u, torch.randn(40, generator=gen,
                         dtype=torch.float64), tol=tol)
        assert gk.ritz <= gk.value
        # an eigenvalue of A^T A lies within s * residual of s^2
        gap = float((sings**2 - gk.ritz**2).abs().min())
        assert gap <= gk.ritz * gk.residual * (1 + 1e-9) + 1e-12
        if tol == 1e-12:
            assert top.value >= float(eigs.max()) * (1 - 1e-10)
            assert gk.value >= float(sings.max()) * (1 - 1e-10)
