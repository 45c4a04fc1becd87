"""``xi_max`` and ``v_max`` without forming ``J``: a Krylov solver on the matrix-free
operator, Theorem 1's ``xi_max = ||J||_2`` and Eq. 33's ``v_max``.

The default (``solver="krylov"``) multiplies by ``J`` through the curvature it is made of
(:class:`~attrcert.spectral.curvature.CurvatureProducts`): symmetric Lanczos for saliency,
whose ``J`` is the Hessian of ``f_y`` (one product per step), Golub-Kahan for the others
(:mod:`attrcert.spectral.krylov`); ``xi_max`` is the Ritz value plus its residual term.
``"propack"`` and ``"arpack"`` run ``scipy.sparse.linalg.svds`` on the double-VJP
operator of :class:`~attrcert.spectral.products.JacobianProducts` (the previous default,
kept to compare against: ``benchmarks/bench_spectral.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, svds
from torch import Tensor

from ..attributions import Attribution, Model
from .curvature import CurvatureProducts
from .full import Spectrum, canonical_sign, nonfinite_jacobian, spectrum_full
from .krylov import (
    MAX_STEPS,
    Forecast,
    J,
    NoConvergence,
    NonFiniteProduct,
    TopSingular,
    golub_kahan,
    golub_kahan_steps,
    lanczos_steps,
    lockstep,
    zero_singular,
)
from .products import JacobianProducts

__all__ = ["SOLVERS", "START_MIX", "WARM_MIN_D", "spectrum_iterative", "top_singulars",
           "warm_start"]

SOLVERS = ("krylov", "propack", "arpack")
_DENSE_MAX_D = 2  # svds needs k = 1 < d - 1 (ARPACK): smaller d is solved densely
#: ``z^T (J^T J z)`` and ``||J z||^2`` must agree to this relative tolerance for ``J v`` and
#: ``J^T u`` to be one linear map and its transpose; when they do not (products that are
#: rounding noise: an attribution that is mathematically constant) scipy's Fortran solvers
#: are not called (PROPACK then fed LAPACK NaN, printed ``DLASCL`` errors and returned 0).
_CONSISTENCY = 1e-3
#: the random part of a warm start (:func:`warm_start`), relative to the coarse vector
START_MIX = 0.1
#: inputs of at least this many values start from :func:`warm_start` (when the method has
#: a coarse version): the products a warm start saves grow with the input (ResNet-18, IG
#: m = 8, one thread: 16 -> 10 at 64 px, 30 -> 10 at 96 px, 68 -> 10 at 160 px), while at
#: 64 px the coarse solver cost what it saved or more (3.8 s against 3.9 s; 4.4 against 3.2)
#: (``benchmarks/bench_warm_start.py``)
WARM_MIN_D = 16384


def spectrum_iterative(
    attribution: Attribution,
    model: Model,
    x: Tensor,
    target: Tensor,
    *,
    tol: float = 1e-4,
    maxiter: int | None = None,
    seed: int = 0,
    solver: str = "krylov",
    points_per_pass: int | None = None,
    samples_per_pass: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Spectrum:
    """``xi_max`` and ``v_max`` of every sample's ``J`` without forming ``J``.

    Per sample, from a seeded Gaussian start vector (the first draw of numpy's
    ``default_rng(seed)``, the same for every sample, so how samples are grouped does not
    change a sample's result):

    - ``"krylov"`` (default): :func:`top_singulars` on :class:`CurvatureProducts`; the
      reported ``xi_max`` is the Ritz value plus its residual term, at most ``(1 + tol)``
      times the Ritz value and above the singular value the solver converged to. A method
      with a :meth:`~Attribution.coarse` version (integrated gradients) and at least
      :data:`WARM_MIN_D` values per sample starts from
      :func:`warm_start` (the coarse ``J``'s top vector plus a second seeded draw,
      ``default_rng([seed, 1])``) instead: the same operator and stopping rule, fewer
      products.
    - ``"propack"`` / ``"arpack"``: ``svds(k=1)`` on the double-VJP operator, stopping at
      ``||P v - lambda v|| <= tol^2 lambda`` (``P = J^T J``); ``xi_max`` is the Ritz
      value (from below).

    Args:
        tol: relative residual at which the solver stops.
        maxiter: step limit (``"krylov"``: products for saliency, steps otherwise;
            PROPACK: basis size; ARPACK: restarts).
        points_per_pass: at most this many of the attribution's points (integrated
            gradients' Riemann points) in memory at once: the first ones' graph is kept,
            the others rebuilt for every product (:func:`segment_sizes`). It changes the
            cost, not the operator.
        samples_per_pass: ``"krylov"``: this many samples' solvers run in lockstep, their
            products in one pass (:func:`top_singulars`): the same results, fewer and wider
            passes (it pays on a GPU and for small inputs, BENCHMARKS.md); their graphs and
            Krylov bases are all held at once.
        progress: called with ``(products so far, estimated total)`` after each product
            of a sample (``"krylov"``; the total is :class:`Forecast`'s, from the residuals
            so far, 0 until it has three; a warm start's coarse products count in both).

    scipy's solvers are only given a finite, consistent operator: when ``z^T J^T J z`` and
    ``||J z||^2`` disagree (``J v`` and ``J^T u`` are then not a linear map and its
    transpose: rounding noise), or when ``svds`` returns a value that is not finite or is
    below the lower bound ``||J z|| / ||z||``, Golub-Kahan is used instead.

    Returns:
        :class:`Spectrum` with ``products`` (operator products per sample) and, for
        ``"krylov"``, ``residual``; ``abs_sum_gram=None``.

    Raises:
        ModelOutputError: a product is not finite (NaN or infinite).
        RuntimeError: no convergence within ``maxiter``.
        ValueError: an unknown solver.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}: use one of {', '.join(SOLVERS)}")
    n, d = x.shape[0], x[0].numel()
    z_np = np.random.default_rng(seed).standard_normal(d)  # every sample starts from it
    z = torch.from_numpy(z_np)
    mix = torch.from_numpy(np.random.default_rng([seed, 1]).standard_normal(d))
    xi = torch.zeros(n, dtype=torch.float64)
    residual = torch.zeros(n, dtype=torch.float64)
    vs = torch.zeros(n, d, dtype=torch.float64)
    counts = torch.zeros(n, dtype=torch.int64)
    coarse_counts = torch.zeros(n, dtype=torch.int64)
    coarse = attribution.coarse() if solver == "krylov" and d >= WARM_MIN_D else None
    if solver != "krylov":
        for i in range(n):
            legacy = JacobianProducts(attribution, model, x[i : i + 1], target[i : i + 1],
                                      points_per_pass=points_per_pass)
            xi[i], vs[i] = _svds(legacy, z_np, tol=tol, maxiter=maxiter, solver=solver,
                                 index=i)
            counts[i] = legacy.count
        return Spectrum(xi_max=xi, v_max=canonical_sign(vs), abs_sum_gram=None,
                        products=counts, residual=None)
    group = max(1, samples_per_pass)
    for first in range(0, n, group):
        rows = slice(first, min(n, first + group))
        xs, ts = x[rows], target[rows]
        starts = z.expand(xs.shape[0], d)
        if coarse is not None:
            starts, coarse_counts[rows] = warm_start(
                coarse, model, xs, ts, z, mix, tol=tol, max_steps=maxiter or MAX_STEPS,
                points_per_pass=points_per_pass, progress=progress)
        ops = CurvatureProducts(attribution, model, xs, ts, points_per_pass=points_per_pass)
        tops, _ = top_singulars(ops, starts, tol=tol, max_steps=maxiter or MAX_STEPS,
                                progress=_offset(progress, int(coarse_counts[rows].sum())))
        for j, top in enumerate(tops):
            if isinstance(top, NonFiniteProduct):
                raise nonfinite_jacobian(first + j) from None
            if isinstance(top, NoConvergence):
                raise top
            i = first + j
            xi[i], vs[i], residual[i], counts[i] = top.value, top.vector, top.residual, \
                top.products
        del ops, xs
    return Spectrum(xi_max=xi, v_max=canonical_sign(vs), abs_sum_gram=None, products=counts,
                    residual=residual, start_products=None if coarse is None else coarse_counts)


def warm_start(coarse: Attribution, model: Model, x: Tensor, target: Tensor, z: Tensor,
               mix: Tensor, *, tol: float, max_steps: int, points_per_pass: int | None,
               progress: Callable[[int, int], None] | None) -> tuple[Tensor, Tensor]:
    """The start vectors of the samples' solvers (``(n, d)``) and the coarse products each
    cost (``(n,)``).

    ``coarse`` (:meth:`Attribution.coarse`) has a Jacobian close to ``J`` at a fraction of
    the cost per product; the solver is run on it from ``z`` and its unit top right
    singular vector ``v_c`` plus ``START_MIX`` times the unit Gaussian ``mix`` (drawn
    independently of ``v_c``) starts the solver on ``J``. The start keeps a random component
    along every direction (so, as from ``z``, it is almost surely not orthogonal to ``J``'s
    top singular vector) and is close to that vector when ``v_c`` is: integrated gradients
    with m = 8 at 160 px took 10 products after 60 with the coarse ``J`` (one point: about
    an eighth of the cost each) instead of 68 (BENCHMARKS.md). ``z`` itself
    for a sample whose coarse solver fails (a product that is not finite, no convergence)
    or whose coarse ``J`` is 0: the start is a hint, never a result.
    """
    n, d = x.shape[0], z.numel()
    ops = CurvatureProducts(coarse, model, x, target, points_per_pass=points_per_pass)
    z = z.to(torch.float64)
    tops, spent = top_singulars(ops, z.expand(n, d), tol=tol, max_steps=max_steps,
                                progress=progress)
    # not out of memory (it propagates): the plan halves on it
    mix = mix.to(torch.float64)
    starts = z.expand(n, d).clone()
    for i, top in enumerate(tops):
        if isinstance(top, TopSingular) and top.value > 0.0:
            starts[i] = top.vector + START_MIX * mix / mix.norm()
    return starts, spent


def _offset(progress: Callable[[int, int], None] | None,
            done: int) -> Callable[[int, int], None] | None:
    """``progress`` hearing ``done`` more products than it is told (those of a warm start)."""
    if progress is None or done == 0:
        return progress
    return lambda count, total: progress(count + done, total + done if total else 0)


def top_singulars(ops: CurvatureProducts, starts: Tensor, *, tol: float,
                  max_steps: int = MAX_STEPS,
                  progress: Callable[[int, int], None] | None = None,
                  ) -> tuple[list[TopSingular | NoConvergence | NonFiniteProduct], Tensor]:
    """``||J||_2`` and ``v_max`` of each of ``ops``' samples from its row of ``starts``
    (``(n, d)``), their solvers run in lockstep (:func:`~attrcert.spectral.krylov.lockstep`:
    one pass of ``M`` products per round for all the samples): symmetric Lanczos when
    ``J`` is symmetric (saliency), Golub-Kahan otherwise; zero where ``J = 0`` is known up
    front. Returns each sample's result (or the error its solver raised) and the products
    each spent. ``progress`` hears ``(products so far, estimated total or 0)`` after each
    round, summed over the samples (:class:`Forecast`: 0 until every sample has one)."""
    n, d = starts.shape
    spent = torch.zeros(n, dtype=torch.int64)
    estimates = [0] * n
    results: list[TopSingular | NoConvergence | NonFiniteProduct | None] = [None] * n
    solvers, live = [], []
    for i in range(n):
        if bool(ops.zero_rows[i]):
            results[i] = zero_singular(d, 0)
            continue
        forecast = Forecast(tol, max_steps if ops.symmetric else 2 * max_steps)

        def watch(products: int, relres: float, i: int = i,
                  forecast: Forecast = forecast) -> None:
            estimates[i] = forecast.add(products, relres)

        start = starts[i].to(dtype=torch.float64, device=ops.device)
        steps = (lanczos_steps if ops.symmetric else golub_kahan_steps)
        solvers.append(steps(start, tol=tol, max_steps=max_steps, watch=watch))
        live.append(i)

    def products(kind: str, rows: list[int], vectors: Tensor) -> Tensor:
        samples = [live[j] for j in rows]
        full = torch.zeros(n, d, dtype=torch.float64, device=ops.device)
        full[samples] = vectors
        out = (ops.matvec(full) if kind == J else ops.rmatvec(full))[samples]
        spent[samples] += 1
        if progress is not None:
            known = all(estimates[i] > 0 for i in live)
            total = sum(max(estimates[i], int(spent[i])) for i in live) if known else 0
            progress(int(spent.sum()), total)
        return out

    for i, result in zip(live, lockstep(solvers, products), strict=True):
        results[i] = result
    done = [r for r in results if r is not None]
    assert len(done) == n
    return done, spent


def _svds(ops: JacobianProducts, z: np.ndarray, *, tol: float, maxiter: int | None,
          solver: str, index: int) -> tuple[float, Tensor]:
    """``svds(k=1)`` (PROPACK or ARPACK) on the double-VJP operator, from one power step."""
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

    def fallback() -> tuple[float, Tensor]:
        try:
            top = golub_kahan(lambda v: ops.matvec(v.reshape(1, d)).reshape(d),
                              lambda u: ops.rmatvec(u.reshape(1, d)).reshape(d),
                              torch.from_numpy(z).to(ops.device), tol=tol,
                              max_steps=maxiter or MAX_STEPS)
        except NonFiniteProduct:
            raise nonfinite_jacobian(index) from None
        return top.value, top.vector

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
        return fallback()
    v0 = pz / np.linalg.norm(pz)
    if solver == "propack" and maxiter is None:  # PROPACK's maxiter is its basis size
        maxiter = min(d, MAX_STEPS)
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
        return fallback()
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
