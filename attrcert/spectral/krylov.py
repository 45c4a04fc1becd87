"""Krylov solvers for the largest singular value of an operator known only by its products,
in float64 on the operator's device, each stopping on a residual that keeps the reported
value above the one it converged to.

- :func:`symmetric_lanczos`: a symmetric ``H`` (saliency's ``J`` is the Hessian of ``f_y``):
  ``||H||_2 = max |lambda|``, one product per step.
- :func:`golub_kahan`: any square ``J``: Lanczos bidiagonalization, two products (``J v``,
  ``J^T u``) per step.

Each is a generator of the products it needs (:func:`lanczos_steps`,
:func:`golub_kahan_steps`: it yields ``(kind, vector)`` and is sent the product), so one
driver runs one solver (:func:`drive`) and another runs several samples' solvers in
lockstep, their products in one pass (:func:`lockstep`); both give each solver the same
products, so the results do not depend on how samples are grouped.

Both re-orthogonalise in full. A Ritz value approaches its eigenvalue from inside the
spectrum, so each returns ``value = ritz + residual term``: for a symmetric matrix and a
Ritz pair ``(theta, y)`` with ``||H y - theta y|| = r`` some eigenvalue lies in
``[theta - r, theta + r]``, and ``value`` bounds it from above. That it is the top one is
what every Krylov method assumes from a random start (a top eigenvector orthogonal to the
start vector is never found); docs/math.md says what this means for ``T_e``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["JT", "MAX_STEPS", "Forecast", "J", "NoConvergence", "NonFiniteProduct", "Steps",
           "TopSingular", "drive", "golub_kahan", "golub_kahan_steps", "lanczos_steps",
           "lockstep", "symmetric_lanczos", "zero_singular"]

Product = Callable[[Tensor], Tensor]
#: the kinds of product a solver asks for: ``J v`` (or ``H v``) and ``J^T u``
J, JT = "J", "JT"
#: a solver as a generator: it yields ``(kind, vector)``, is sent the product, returns its
#: result
Steps = Generator[tuple[str, Tensor], Tensor, "TopSingular"]
#: ``products(kind, rows, vectors)``: the ``kind`` product of each row of ``vectors``
#: (``(b, d)`` float64) for the solvers ``rows`` of a lockstep run
Batched = Callable[[str, list[int], Tensor], Tensor]
#: ``watch(products so far, relative residual)`` after each step of a solver
Watch = Callable[[int, float], None]
#: default step limit of both solvers
MAX_STEPS = 300
#: a residual this small relative to the Ritz value means an invariant subspace was found
_BREAKDOWN = 1e-14


class NoConvergence(RuntimeError):
    """A solver reached its step limit before its residual met ``tol``."""


class NonFiniteProduct(ArithmeticError):
    """A product of the operator is not finite (NaN or infinite): no solver is run on it."""


def _finite(w: Tensor) -> Tensor:
    """``w`` in float64, flattened; :class:`NonFiniteProduct` if any entry is not finite
    (LAPACK must never see one)."""
    w = w.to(torch.float64).reshape(-1)
    if not bool(torch.isfinite(w).all()):
        raise NonFiniteProduct("an operator product is not finite")
    return w


@dataclass(frozen=True)
class TopSingular:
    """The largest singular value of an operator as a Krylov solver found it.

    Attributes:
        value: ``ritz`` plus the residual term: an upper bound on the singular value the
            solver converged to (the one it reports).
        ritz: the Ritz value (a lower estimate of that singular value).
        residual: the residual norm behind ``value - ritz``.
        vector: ``(d,)`` float64 unit right singular vector (``v_max``), on the CPU.
        products: operator products spent (``H v``; or ``J v`` plus ``J^T u``).
    """

    value: float
    ritz: float
    residual: float
    vector: Tensor
    products: int


class Forecast:
    """The products a solver will have spent when it stops, from its residuals so far: a
    Krylov solver's relative residual falls about geometrically, so the slope of its
    logarithm over the last :attr:`WINDOW` steps, extrapolated to ``log(tol)``, gives the
    total (an estimate for progress bars, never a result). :meth:`add` returns 0 while
    it is not known (fewer than three steps, no decrease)."""

    WINDOW = 6

    def __init__(self, tol: float, max_products: int) -> None:
        self.tol, self.max_products = tol, max_products
        self.points: list[tuple[int, float]] = []

    def add(self, products: int, relres: float) -> int:
        """The estimated total after a step that left ``relres`` at ``products``."""
        if relres > 0 and math.isfinite(relres):
            self.points.append((products, math.log(relres)))
        points = self.points[-self.WINDOW:]
        if len(points) < 3 or relres <= self.tol:
            return products if relres <= self.tol else 0
        mean_x = sum(p for p, _ in points) / len(points)
        mean_y = sum(y for _, y in points) / len(points)
        spread = sum((p - mean_x) ** 2 for p, _ in points)
        slope = sum((p - mean_x) * (y - mean_y) for p, y in points) / spread
        if not slope < 0:
            return 0
        left = (math.log(self.tol) - points[-1][1]) / slope
        return min(self.max_products, products + max(1, math.ceil(left - 1e-6)))


def _reorthogonalize(r: Tensor, basis: list[Tensor]) -> Tensor:
    """``r`` minus its projection on the orthonormal ``basis``, twice (classical
    Gram-Schmidt applied twice is orthogonal to working precision)."""
    q = torch.stack(basis, 1)
    for _ in range(2):
        r = r - q @ (q.T @ r)
    return r


def _unit(z: Tensor) -> Tensor:
    z = z.to(torch.float64).reshape(-1)
    return z / z.norm()


def zero_singular(d: int, products: int) -> TopSingular:
    """The result for ``J = 0``: value 0, ``v_max = e_1``."""
    e1 = torch.zeros(d, dtype=torch.float64)
    e1[0] = 1.0
    return TopSingular(0.0, 0.0, 0.0, e1, products)


def symmetric_lanczos(matvec: Product, start: Tensor, *, tol: float,
                      max_steps: int = MAX_STEPS, min_steps: int = 2,
                      watch: Watch | None = None) -> TopSingular:
    """:func:`lanczos_steps` with ``H v = matvec(v)``."""
    return drive(lanczos_steps(start, tol=tol, max_steps=max_steps, min_steps=min_steps,
                               watch=watch), {J: matvec})


def lanczos_steps(start: Tensor, *, tol: float, max_steps: int = MAX_STEPS,
                  min_steps: int = 2, watch: Watch | None = None) -> Steps:
    """``||H||_2 = max_i |lambda_i|`` of a symmetric ``H`` from ``v -> H v``.

    Lanczos from ``q_1 = start / ||start||``: ``beta_k q_{k+1} = H q_k - alpha_k q_k -
    beta_{k-1} q_{k-1}`` (re-orthogonalised in full), ``T_k`` tridiagonal. The Ritz pair
    ``(theta, s)`` of ``T_k`` with the largest ``|theta|`` has residual
    ``||H Q_k s - theta Q_k s|| = beta_k |s_k|``; it stops when that is at most
    ``tol |theta|`` (after ``min_steps``), when ``beta_k`` vanishes (``Q_k`` spans an
    invariant subspace: ``theta`` is exact) or after ``d`` steps.

    Yields ``(J, q)`` and is sent ``H q`` (any dtype, same device).

    Args:
        start: the start vector (random in practice).
        tol: relative residual at which to stop; ``value <= (1 + tol) |theta|``.
        max_steps: products allowed.
        min_steps: steps before the first stop.
        watch: hears ``(products, residual / |theta|)`` after each step.

    Raises:
        NonFiniteProduct: a product is not finite.
        NoConvergence: no convergence within ``max_steps`` (a ``RuntimeError``).
    """
    d = start.numel()
    q = _unit(start)
    basis: list[Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    beta = 0.0
    for step in range(1, min(d, max_steps) + 1):
        basis.append(q)
        w = _finite((yield J, q))
        alpha = float(q @ w)
        w = _reorthogonalize(w, basis)
        beta = float(w.norm())
        alphas.append(alpha)
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        theta, s = torch.linalg.eigh(t)
        top = int(theta.abs().argmax())
        ritz = abs(float(theta[top]))
        residual = beta * abs(float(s[-1, top]))
        if watch is not None and ritz > 0:
            watch(step, residual / ritz)
        if step == 1 and ritz == 0.0 and beta == 0.0:  # H z = 0 for a random z: H = 0
            return zero_singular(d, step)
        done = (step >= min_steps and residual <= tol * ritz) or step == d
        if done or beta <= _BREAKDOWN * max(ritz, float(theta.abs().max())):
            vector = (torch.stack(basis, 1) @ s[:, top].to(q.device)).cpu()
            return TopSingular(ritz + residual, ritz, residual, vector / vector.norm(), step)
        betas.append(beta)
        q = w / beta
    raise NoConvergence(f"symmetric Lanczos did not converge in {max_steps} products "
                       f"(residual {residual:.3g} of {ritz:.3g}): raise tol or the step limit")


def golub_kahan(matvec: Product, rmatvec: Product, start: Tensor, *, tol: float,
                max_steps: int = MAX_STEPS, min_steps: int = 2,
                watch: Watch | None = None) -> TopSingular:
    """:func:`golub_kahan_steps` with ``J v = matvec(v)`` and ``J^T u = rmatvec(u)``."""
    return drive(golub_kahan_steps(start, tol=tol, max_steps=max_steps, min_steps=min_steps,
                                   watch=watch), {J: matvec, JT: rmatvec})


def golub_kahan_steps(start: Tensor, *, tol: float, max_steps: int = MAX_STEPS,
                      min_steps: int = 2, watch: Watch | None = None) -> Steps:
    """``sigma_max(J)`` and its right singular vector from ``v -> J v`` and ``u -> J^T u``.

    Golub-Kahan-Lanczos bidiagonalization from ``v_1 = start / ||start||``:
    ``alpha_k u_k = J v_k - beta_{k-1} u_{k-1}``, ``beta_k v_{k+1} = J^T u_k - alpha_k v_k``
    (re-orthogonalised in full), so ``J V_k = U_k B_k``. With ``(s, p, q)`` the top singular
    triplet of ``B_k`` and ``x = V_k q``: ``J^T J x = s^2 x + s beta_k p_k v_{k+1}``, so an
    eigenvalue of ``J^T J`` lies within ``s beta_k |p_k|`` of ``s^2`` and
    ``value = sqrt(s^2 + s beta_k |p_k|)``. Stops when ``beta_k |p_k| <= tol s`` (after
    ``min_steps``), at an invariant subspace, or after ``d`` steps. ``watch`` hears
    ``(products, beta_k |p_k| / s)`` after each step. Yields ``(J, v)`` and ``(JT, u)``
    and is sent ``J v`` and ``J^T u``.

    Raises:
        NonFiniteProduct: a product is not finite.
        NoConvergence: no convergence within ``max_steps`` steps (a ``RuntimeError``).
    """
    d = start.numel()
    v = _unit(start)
    p = _finite((yield J, v))
    alpha = float(p.norm())
    products = 1
    if alpha == 0.0:  # J z = 0 for a random z: J = 0 (almost surely)
        return zero_singular(d, products)
    vs, us = [v], [p / alpha]
    alphas: list[float] = [alpha]
    betas: list[float] = []
    s = residual = 0.0
    for step in range(1, min(d, max_steps) + 1):
        r = _finite((yield JT, us[-1])) - alphas[-1] * vs[-1]
        products += 1
        r = _reorthogonalize(r, vs)
        beta = float(r.norm())
        b = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            b = b + torch.diag(torch.tensor(betas, dtype=torch.float64), 1)
        left, sing, right_t = torch.linalg.svd(b)
        s = float(sing[0])
        residual = beta * abs(float(left[-1, 0]))
        if watch is not None and s > 0:
            watch(products, residual / s)
        done = (step >= min_steps and residual <= tol * s) or step == d
        if done or beta <= _BREAKDOWN * s:
            vector = (torch.stack(vs, 1) @ right_t[0].to(v.device)).cpu()
            return TopSingular(math.sqrt(s * s + s * residual), s, residual,
                               vector / vector.norm(), products)
        vs.append(r / beta)
        betas.append(beta)
        p = _finite((yield J, vs[-1])) - beta * us[-1]
        products += 1
        p = _reorthogonalize(p, us)
        alpha = float(p.norm())
        if alpha <= _BREAKDOWN * s:
            # invariant pair: J V_{k+1} = U_k [B_k, beta_k e_k] and J^T U_k = V_{k+1} [B_k,
            # beta_k e_k]^T, so the singular values of that k x (k+1) matrix are exact; B_k's
            # own top one misses the column beta_k e_k and can be far below (a rank-1 J:
            # sigma |v_1^T v_max| instead of sigma)
            wide = torch.cat([b, torch.zeros(b.shape[0], 1, dtype=torch.float64)], 1)
            wide[-1, -1] = beta
            _, sing, right_t = torch.linalg.svd(wide)
            s = float(sing[0])
            vector = (torch.stack(vs, 1) @ right_t[0].to(v.device)).cpu()
            return TopSingular(s, s, 0.0, vector / vector.norm(), products)
        alphas.append(alpha)
        us.append(p / alpha)
    raise NoConvergence(f"Golub-Kahan did not converge in {max_steps} steps "
                       f"(residual {residual:.3g} of {s:.3g}): raise tol or the step limit")


def drive(steps: Steps, products: dict[str, Product]) -> TopSingular:
    """Run one solver, answering each request with ``products[kind](vector)``."""
    try:
        kind, vector = next(steps)
        while True:
            kind, vector = steps.send(products[kind](vector))
    except StopIteration as stop:
        return stop.value


def lockstep(solvers: Sequence[Steps], products: Batched,
             ) -> list[TopSingular | NoConvergence | NonFiniteProduct]:
    """Run several solvers (one per sample) together: each round, the requests of one kind
    from every solver still running go to ``products`` as one ``(b, d)`` batch, and each
    solver is sent its own row. A solver that stops early leaves the others running. Each
    solver sees exactly the products :func:`drive` would give it (up to the rounding of a
    batched pass), so the result of every solver is what it is alone.

    Returns each solver's result, or the :class:`NoConvergence` or
    :class:`NonFiniteProduct` it raised (for the caller to raise or to fall back on); any
    other error (out of memory) propagates.
    """
    results: list[TopSingular | NoConvergence | NonFiniteProduct | None] = [None] * len(solvers)
    pending: dict[int, tuple[str, Tensor]] = {}

    def advance(i: int, product: Tensor | None) -> None:
        try:
            pending[i] = next(solvers[i]) if product is None else solvers[i].send(product)
        except StopIteration as stop:
            results[i] = stop.value
            pending.pop(i, None)
        except (NoConvergence, NonFiniteProduct) as exc:
            results[i] = exc
            pending.pop(i, None)

    for i in range(len(solvers)):
        advance(i, None)
    while pending:
        kind = next(iter(pending.values()))[0]
        rows = [i for i, (k, _) in pending.items() if k == kind]
        out = products(kind, rows, torch.stack([pending[i][1] for i in rows]))
        for j, i in enumerate(rows):
            advance(i, out[j])
    done = [r for r in results if r is not None]
    assert len(done) == len(solvers)  # every solver has stopped
    return done
