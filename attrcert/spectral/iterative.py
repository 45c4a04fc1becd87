"""``xi_max`` and ``v_max`` without forming ``J``: a Lanczos solver (PROPACK or ARPACK
through ``scipy.sparse.linalg.svds``, or Golub-Kahan in torch) on the matrix-free operator
of :class:`~attrcert.spectral.products.JacobianProducts`. Theorem 1's ``xi_max = ||J||_2``
and Eq. 33's ``v_max``, the top eigenpair of ``P = J^T J``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, svds
from torch import Tensor

from ..attributions import Attribution, Model
from .full import Spectrum, canonical_sign, nonfinite_jacobian, spectrum_full
from .products import JacobianProducts

__all__ = ["SOLVERS", "spectrum_iterative"]

SOLVERS = ("arpack", "lanczos", "propack")
_LANCZOS_MAXITER = 300  # default step limit of the "lanczos" solver
_DENSE_MAX_D = 2  # svds needs k = 1 < d - 1 (ARPACK): smaller d is solved densely
#: ``z^T (J^T J z)`` and ``||J z||^2`` must agree to this relative tolerance for ``J v`` and
#: ``J^T u`` to be one linear map and its transpose; when they do not (products that are
#: rounding noise: an attribution that is mathematically constant) scipy's Fortran solvers
#: are not called (PROPACK then fed LAPACK NaN, printed ``DLASCL`` errors and returned 0).
_CONSISTENCY = 1e-3


def spectrum_iterative(
    attribution: Attribution,
    model: Model,
    x: Tensor,
    target: Tensor,
    *,
    tol: float = 1e-4,
    maxiter: int | None = None,
    seed: int = 0,
    solver: str = "propack",
    points_per_pass: int | None = None,
) -> Spectrum:
    """``xi_max`` and ``v_max`` of every sample's ``J`` without forming ``J``.

    ``xi_max = ||J||_2`` is the largest singular value (Theorem 1) and ``v_max`` its unit
    right singular vector (Eq. 33), the top eigenpair of ``P = J^T J``. Per sample, the
    attribution graph is built once (:class:`JacobianProducts`); a Krylov solver then
    needs only ``v -> J v`` and ``u -> J^T u``:

    - ``"propack"`` (default): ``svds(solver="propack")``, Lanczos bidiagonalization with
      partial re-orthogonalisation; ``maxiter`` is its basis size (default
      ``min(d, 300)``, allocated up front: ``2 d maxiter`` float64, 722 MB at
      ``d = 150528``). The fewest products of the three (43/63 against ARPACK's 65/85 at
      d = 784, 43 against 65 at d = 3072; BENCHMARKS.md), hence the default.
    - ``"arpack"``: ``scipy.sparse.linalg.svds(k=1)`` on the float64
      ``LinearOperator`` (implicitly restarted Lanczos on ``P``, 20 Lanczos vectors before
      its first check), started from ``P z / ||P z||`` (one power step), plus one
      ``J v`` at the end.
    - ``"lanczos"``: Golub-Kahan-Lanczos bidiagonalization in torch float64 on the model's
      device (no host round trips on a GPU), fully re-orthogonalised, checked every step
      (two products per step), same stopping rule. Products measured
      (``benchmarks/bench_spectral.py``, IG): 64/76 against ARPACK's 65/85 at d = 784,
      50 against 65 at d = 3072, 92 against 85 at d = 150528.

    ``svds``'s ``"lobpcg"`` is not offered: its tolerance is absolute, so on a small-scale
    ``J`` (``xi_max`` ~ 2.5e-4 at d = 3072) it stopped after 11 products 10% low, and
    elsewhere it hit its iteration limit (1e-5 relative at d = 784).

    ``z`` is a seeded Gaussian start vector. If ``J z = 0`` exactly, ``J = 0`` almost
    surely and the result is ``xi_max = 0``, ``v_max = e_1`` (also when ``g`` does not
    depend on ``x`` at all, e.g. saliency of a linear model).

    scipy's solvers are only given a finite, consistent operator: products that are not
    finite raise :class:`~attrcert.errors.ModelOutputError`; when ``z^T J^T J z`` and
    ``||J z||^2`` disagree (``J v`` and ``J^T u`` are then not a linear map and its
    transpose: rounding noise), or when ``svds`` returns a value that is not finite or is
    below the lower bound ``||J z|| / ||z||``, the torch ``"lanczos"`` solver is used.

    Args:
        attribution: the method ``g``.
        model: the classifier (eval mode).
        x: inputs ``(N, C, H, W)``; products run in its dtype, the solvers in float64.
        target: classes ``(N,)``.
        tol: relative tolerance with ``svds``'s meaning: stop when the Ritz pair
            ``(lam, v)`` of ``P`` has ``||P v - lam v|| <= tol^2 lam``; the relative error
            of ``lam`` is then at most about ``tol^4 lam / (lam - lam_2)``: ``1e-4`` gives
            ``xi_max`` to about 1e-8 relative on the sample models. Keep it small: Ritz
            values approach ``xi_max`` from below, and a loose tolerance can stop on
            ``xi_2`` before the top singular value has appeared in the Krylov space
            (seen on a sample digit at a residual of 5e-3: 0.74% low), which would make
            the certificate too small.
        maxiter: iteration limit: Lanczos steps (``"lanczos"``, default 300), PROPACK's
            basis size (default ``min(d, 300)``), ARPACK restarts (``None``: its default).
        seed: seeds the start vectors (numpy ``default_rng(seed)``, one draw per sample).
        solver: ``"propack"`` (default), ``"arpack"`` or ``"lanczos"``.
        points_per_pass: at most this many of the attribution's points (integrated
            gradients' Riemann points) in memory at once (:class:`JacobianProducts`;
            ``None``: all). It changes the cost, not the operator.

    Returns:
        :class:`Spectrum` with ``abs_sum_gram=None`` (Theorem 2's constant needs all of
        ``J``: :func:`~attrcert.spectral.abs_sum_gram_blocked`) and ``products`` set.

    Raises:
        RuntimeError: when the solver does not converge within ``maxiter``.
        ValueError: for an unknown solver.

    Memory: one attribution graph with its second-order graph (at d = 150528, a
    ResNet-18 with IG m = 16: 3.5 GB peak RSS), or the part of it that
    ``points_per_pass`` allows, and the Krylov basis (``2 k d`` float64 for ``k`` Lanczos
    steps). Cost: about ``2 k`` products per sample (plus 3 for
    ARPACK), each a backward pass (``J^T u``) or a second-order backward pass (``J v``)
    through the attribution's graph, against ``d`` backward passes for the full ``J``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}: use one of {', '.join(SOLVERS)}")
    n, d = x.shape[0], x[0].numel()
    rng = np.random.default_rng(seed)
    xi = torch.zeros(n, dtype=torch.float64)
    vs = torch.zeros(n, d, dtype=torch.float64)
    counts = torch.zeros(n, dtype=torch.int64)
    for i in range(n):
        ops = JacobianProducts(attribution, model, x[i : i + 1], target[i : i + 1],
                               points_per_pass=points_per_pass)
        z = rng.standard_normal(d)
        xi[i], vs[i] = _top_singular(ops, z, tol=tol, maxiter=maxiter, solver=solver, index=i)
        counts[i] = ops.count
        del ops
    return Spectrum(xi_max=xi, v_max=canonical_sign(vs), abs_sum_gram=None, products=counts)


def _top_singular(ops: JacobianProducts, z: np.ndarray, *, tol: float, maxiter: int | None,
                  solver: str, index: int) -> tuple[float, Tensor]:
    d = ops.d
    e1 = torch.zeros(d, dtype=torch.float64)
    e1[0] = 1.0
    if ops.zero:
        return 0.0, e1
    if d <= _DENSE_MAX_D:  # too small for svds: form J from d VJPs
        eye = torch.eye(d, dtype=torch.float64)
        jac = torch.cat([ops.rmatvec(eye[k : k + 1]) for k in range(d)]).double()
        s = spectrum_full(jac.unsqueeze(0))
        return float(s.xi_max[0]), s.v_max[0]
    if solver == "lanczos":
        return _golub_kahan(ops, torch.from_numpy(z), tol=tol, maxiter=maxiter, index=index)
    jz = ops.matvec(torch.from_numpy(z).reshape(1, d)).double()
    if not bool(torch.isfinite(jz).all()):
        raise nonfinite_jacobian(index)
    if not bool(jz.abs().max() > 0):  # J z = 0 for a random z: J = 0
        return 0.0, e1
    pz = ops.rmatvec(jz).double().reshape(d).cpu().numpy()
    if not np.isfinite(pz).all():
        raise nonfinite_jacobian(index)
    jz_sq = float(jz.square().sum())
    lower = float(np.sqrt(jz_sq / float(z @ z)))  # xi_max >= ||J z|| / ||z||
    if abs(float(z @ pz) - jz_sq) > _CONSISTENCY * jz_sq or not np.linalg.norm(pz) > 0:
        return _golub_kahan(ops, torch.from_numpy(z), tol=tol, maxiter=maxiter, index=index)
    v0 = pz / np.linalg.norm(pz)
    if solver == "propack" and maxiter is None:  # PROPACK's maxiter is its basis size
        maxiter = min(d, _LANCZOS_MAXITER)
    try:
        _, s, vh = svds(_finite_operator(ops), k=1, tol=tol, maxiter=maxiter, v0=v0,
                        solver=solver, return_singular_vectors="vh",
                        rng=np.random.default_rng(0))
    except FloatingPointError:
        raise nonfinite_jacobian(index) from None
    except (ArpackNoConvergence, np.linalg.LinAlgError) as exc:
        raise RuntimeError(
            f"svds ({solver}) did not converge for sample {index} after {ops.count} "
            f"products: raise maxiter or tol"
        ) from exc
    top = float(s[0])
    if not (np.isfinite(top) and np.isfinite(vh[0]).all() and top >= lower * (1 - 1e-6)):
        return _golub_kahan(ops, torch.from_numpy(z), tol=tol, maxiter=maxiter, index=index)
    v = torch.from_numpy(np.ascontiguousarray(vh[0], dtype=np.float64))
    return top, v / v.norm()


def _finite_operator(ops: JacobianProducts) -> LinearOperator:
    """``ops.operator()`` that raises :class:`FloatingPointError` (stopping the solver)
    instead of returning a product that is not finite."""
    op = ops.operator()

    def checked(product: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray],
                                                                          np.ndarray]:
        def apply(a: np.ndarray) -> np.ndarray:
            out = product(a)
            if not np.isfinite(out).all():
                raise FloatingPointError("a Jacobian product is not finite")
            return out
        return apply

    return LinearOperator(op.shape, matvec=checked(op.matvec), rmatvec=checked(op.rmatvec),
                          dtype=np.float64)


def _golub_kahan(ops: JacobianProducts, z: Tensor, *, tol: float, maxiter: int | None,
                 index: int) -> tuple[float, Tensor]:
    """Top singular triplet of ``J`` by Golub-Kahan-Lanczos bidiagonalization.

    From ``v_1 = z / ||z||``: ``alpha_k u_k = J v_k - beta_{k-1} u_{k-1}`` and
    ``beta_k v_{k+1} = J^T u_k - alpha_k v_k``, each vector re-orthogonalised in full
    against the earlier ones (float64, on the model's device), so that
    ``J V_k = U_k B_k`` with ``B_k`` upper bidiagonal (``alpha`` on the diagonal, ``beta``
    above). The top singular triplet ``(s, p, q)`` of ``B_k`` gives ``xi_max ~ s`` and
    ``v_max ~ V_k q``, with ``J^T (U_k p) - s V_k q = beta_k p_k v_{k+1}``. It stops when
    ``beta_k |p_k| <= tol^2 s``, i.e. ``||P v - s^2 v|| <= tol^2 s^2`` for ``P = J^T J``:
    ARPACK's criterion in ``svds`` with the same ``tol``. Two products per step; unlike
    ARPACK (``ncv = 20`` Lanczos vectors before the first check) it checks every step.
    ``s`` approaches ``xi_max`` from below (interlacing).
    """
    d = ops.d
    steps = min(d, maxiter if maxiter is not None else _LANCZOS_MAXITER)
    v = z.to(dtype=torch.float64, device=ops.device).reshape(d)
    v = v / v.norm()
    p = ops.matvec(v.reshape(1, d)).double().reshape(d)
    alpha = float(p.norm())
    e1 = torch.zeros(d, dtype=torch.float64)
    e1[0] = 1.0
    if not np.isfinite(alpha):
        raise nonfinite_jacobian(index)
    if alpha == 0.0:  # J z = 0 for a random z: J = 0 (almost surely)
        return 0.0, e1
    vs, us = [v], [p / alpha]
    alphas, betas = [alpha], []
    for _ in range(steps):
        r = ops.rmatvec(us[-1].reshape(1, d)).double().reshape(d) - alphas[-1] * vs[-1]
        r = _reorthogonalize(r, vs)
        beta = float(r.norm())
        if not np.isfinite(beta):
            raise nonfinite_jacobian(index)
        k = len(alphas)
        b = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if k > 1:
            b += torch.diag(torch.tensor(betas, dtype=torch.float64), 1)
        left, sing, right_t = torch.linalg.svd(b)
        s = float(sing[0])
        v_max = (torch.stack(vs, 1) @ right_t[0].to(ops.device)).cpu()
        if beta * abs(float(left[-1, 0])) <= tol**2 * s or beta <= 1e-14 * s or k == d:
            return s, v_max / v_max.norm()
        vs.append(r / beta)
        betas.append(beta)
        p = ops.matvec(vs[-1].reshape(1, d)).double().reshape(d) - beta * us[-1]
        p = _reorthogonalize(p, us)
        alpha = float(p.norm())
        if not np.isfinite(alpha):
            raise nonfinite_jacobian(index)
        if alpha <= 1e-14 * s:  # invariant subspace: B_k's triplet is exact
            return s, v_max / v_max.norm()
        alphas.append(alpha)
        us.append(p / alpha)
    raise RuntimeError(
        f"Lanczos did not converge for sample {index} after {ops.count} products: "
        "raise maxiter or tol"
    )


def _reorthogonalize(r: Tensor, basis: list[Tensor]) -> Tensor:
    """``r`` minus its projection on the orthonormal ``basis``, twice (classical
    Gram-Schmidt applied twice is orthogonal to working precision)."""
    q = torch.stack(basis, 1)
    for _ in range(2):
        r = r - q @ (q.T @ r)
    return r
