"""One batch's analysis: attribution -> Jacobian -> spectrum.

:func:`analyse` does the costly part that every bound needs, once per batch: the
attribution ``g`` (the paper's Eq. 2-3, 40) and the spectrum of its Jacobian ``J = dg/dx``
(``xi_max``, ``v_max`` and, for l-inf, Theorem 2's ``sum |P_ij|``), each pass sized by the
run's plan (:class:`attrcert.plan.RunPlan`). Proposition 1 is :mod:`attrcert.proposition1`'s.
:func:`attribution_deviations` measures ``||g(x + delta) - g(x)||`` for the perturbations
that attain ``T_e`` (:func:`worst_case_directions`), as Eq. 39 needs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .attributions import Attribution, Model, summed
from .degenerate import zero_jacobians
from .errors import ModelOutputError
from .jacobian import attribution_jacobian
from .memory import halving
from .plan import RunPlan
from .progress import ATTRIBUTION, JACOBIAN, SPECTRUM, Progress, tick
from .spectral import (
    Spectrum,
    abs_sum_gram_blocked,
    nonfinite_jacobian,
    spectrum_full,
    spectrum_iterative,
)

__all__ = ["Analysis", "analyse", "attribute_rows", "attribution_deviations",
           "worst_case_directions"]


@dataclass
class Analysis:
    """What the bounds need about one batch (all float64 on the CPU except ``x``).

    Attributes:
        x: the inputs ``(N, C, H, W)`` (model dtype and device).
        indices: each sample's index among all samples of the run.
        target, predicted: ``(N,)`` classes.
        logits: ``(N, k)`` at ``x``.
        attr: ``g(x)`` flattened, ``(N, d)``.
        spectrum: ``xi_max``, ``v_max``, ``sum |P_ij|`` of each ``J``.
        completeness_gap: ``(N,)`` ``|sum_i g_i - (f_y(x) - f_y(b))|`` (IG only).
        zero_jacobian: ``(N,)`` bool, the samples found to have ``J = 0``.
    """

    x: Tensor
    indices: list[int]
    target: Tensor
    predicted: Tensor
    logits: Tensor
    attr: Tensor
    spectrum: Spectrum
    completeness_gap: Tensor | None
    zero_jacobian: Tensor | None = None


def analyse(
    model: Model,
    x: Tensor,
    attribution: Attribution,
    target: Tensor | None,
    plan: RunPlan,
    *,
    tol: float = 1e-4,
    seed: int = 0,
    progress: Progress | None = None,
    indices: Sequence[int] | None = None,
    probe_all: bool = False,
) -> Analysis:
    """The costly part, shared by :func:`certify` and :func:`max_eps`, for one batch.

    ``target``: the classes ``(N,)``, or ``None`` for the predictions. ``plan.spectral ==
    "full"`` forms every ``J`` (:mod:`attrcert.jacobian`, ``plan.rows_per_pass`` rows per
    replicated pass) and gets ``xi_max``, ``v_max`` and Theorem 2's ``sum |P_ij|``;
    ``"iterative"`` gets ``xi_max`` and ``v_max`` matrix-free
    (:func:`attrcert.spectral.spectrum_iterative`, relative tolerance ``tol``, at most
    ``plan.points_per_product_pass`` points held, halved on an accelerator's out-of-memory
    error and kept so in the plan; ``plan.samples_per_product_pass`` samples' solvers in
    lockstep, their products in one pass, halved the same way) and, only with
    ``plan.abs_sum_blocked``, ``sum |P_ij|`` column block by column block
    (:func:`attrcert.spectral.abs_sum_gram_blocked`); every sample starts the solver from
    the same ``seed``ed vector, so neither batching nor resuming a run on a subset changes
    its result. ``g`` is taken in passes of
    ``plan.points_per_value_pass`` points (:func:`attribute_rows`).

    Before the spectrum, samples whose ``J`` is zero are found by one product ``J v``
    (:func:`attrcert.degenerate.zero_jacobians`: every sample with ``probe_all``, else those
    with a zero attribution or equal logits) and skip it (``xi_max = 0``).

    ``progress`` hears of the phases :data:`~attrcert.progress.ATTRIBUTION` and
    :data:`~attrcert.progress.SPECTRUM` (products of each sample) or
    :data:`~attrcert.progress.JACOBIAN`.

    Raises:
        ModelOutputError: the model's logits, or its attribution's Jacobian, are not finite
            for a sample (its index among all samples: ``indices``, default its row).
    """
    n = x.shape[0]
    indices = list(range(n)) if indices is None else list(indices)
    with torch.no_grad():
        logits = model(x)
    finite = torch.isfinite(logits).all(dim=1)
    if not finite.all():
        index = indices[int((~finite).nonzero()[0])]
        raise ModelOutputError(f"the model returned logits that are not finite (NaN or "
                               f"infinite) for sample {index}: it cannot be certified", index)
    if target is None:
        target = logits.argmax(1)
    step = tick(progress, ATTRIBUTION)
    if step is not None:
        step(0, n)
    g = attribute_rows(attribution, model, x, target, plan.points_per_value_pass)
    if step is not None:
        step(n, n)
    zero, probes = zero_jacobians(attribution, model, x, target, g, logits,
                                  probe_all=probe_all,
                                  points_per_pass=plan.points_per_second_order_pass(n))
    keep = (~zero).nonzero().flatten().tolist()
    rows: list[int] | slice = keep if len(keep) < n else slice(None)
    spectrum = _spectrum(model, x[rows], attribution, target[rows], plan, tol=tol, seed=seed,
                         progress=progress, indices=[indices[i] for i in keep])
    if len(keep) < n:
        spectrum = _with_zeros(spectrum, keep, probes, n)
    gap = None
    if attribution.complete:
        base = attribution.baseline_for(x)  # type: ignore[attr-defined]
        with torch.no_grad():
            f_base = model(base).gather(1, target.view(-1, 1)).squeeze(1)
        f_x = logits.gather(1, target.view(-1, 1)).squeeze(1)
        gap = (g.reshape(n, -1).sum(1) - (f_x - f_base)).abs().double().cpu()
    return Analysis(
        x=x,
        indices=indices,
        target=target,
        predicted=logits.argmax(1),
        logits=logits.double().cpu(),
        attr=g.reshape(n, -1).double().cpu(),
        spectrum=Spectrum(spectrum.xi_max.cpu(), spectrum.v_max.cpu(),
                          None if spectrum.abs_sum_gram is None
                          else spectrum.abs_sum_gram.cpu(),
                          products=spectrum.products, residual=spectrum.residual,
                          start_products=spectrum.start_products),
        completeness_gap=gap,
        zero_jacobian=zero,
    )


def _spectrum(model: Model, x: Tensor, attribution: Attribution, target: Tensor,
              plan: RunPlan, *, tol: float, seed: int, progress: Progress | None,
              indices: list[int]) -> Spectrum:
    """The spectrum of each sample's ``J`` (see :func:`analyse`); ``indices``: the samples'
    indices among all (for errors)."""
    n = x.shape[0]
    if n == 0:
        d = math.prod(x.shape[1:])
        empty = torch.zeros(0, dtype=torch.float64)
        return Spectrum(empty, torch.zeros(0, d, dtype=torch.float64), None)
    if plan.spectral != "iterative":
        jac = attribution_jacobian(attribution, model, x, target, chunk_size=plan.rows_per_pass,
                                   progress=tick(progress, JACOBIAN))
        try:
            return spectrum_full(jac)
        except ModelOutputError as exc:  # the index among all samples
            raise nonfinite_jacobian(indices[exc.index]) from None
    products = tick(progress, SPECTRUM)
    parts: list[Spectrum] = []

    def one(points: int | None, i: int) -> Spectrum:
        try:
            return spectrum_iterative(attribution, model, x[i : i + 1], target[i : i + 1],
                                      tol=tol, seed=seed, points_per_pass=points,
                                      progress=products)
        except ModelOutputError:  # the index among all samples
            raise nonfinite_jacobian(indices[i]) from None

    def alone(i: int) -> Spectrum:
        if plan.points_per_product_pass is None:
            return one(None, i)
        part, points = halving(lambda p: one(p, i), plan.points_per_product_pass,
                               device=x.device, what="integrated-gradients point per pass")
        plan.shrink_products(points)
        return part

    def together(size: int, first: int) -> Spectrum:
        if size == 1:
            return alone(first)
        try:
            return spectrum_iterative(attribution, model, x[first : first + size],
                                      target[first : first + size], tol=tol, seed=seed,
                                      samples_per_pass=size, progress=products)
        except ModelOutputError as exc:  # the index among all samples
            raise nonfinite_jacobian(indices[first + exc.index]) from None

    first = 0
    while first < n:  # samples in lockstep, as many as the plan says (halved on OOM)
        size = min(plan.samples_per_product_pass, n - first)
        if size == 1:  # out of memory here is the batch's (or the points') to halve
            part = alone(first)
        else:
            part, size = halving(functools.partial(together, first=first), size,
                                 device=x.device, what="sample per pass of products")
            plan.samples_per_product_pass = min(plan.samples_per_product_pass, size)
        parts.append(part)
        first += size
    abs_sum = (abs_sum_gram_blocked(attribution, model, x, target,
                                    chunk_size=plan.rows_per_pass or 1)
               if plan.abs_sum_blocked else None)
    return Spectrum(torch.cat([s.xi_max for s in parts]),
                    torch.cat([s.v_max for s in parts]), abs_sum,
                    products=_joined([s.products for s in parts]),
                    residual=_joined([s.residual for s in parts]),
                    start_products=_joined([s.start_products for s in parts]))


def _with_zeros(spectrum: Spectrum, keep: list[int], probes: Tensor, n: int) -> Spectrum:
    """The spectrum of all ``n`` samples from that of the rows ``keep``: the others have
    ``J = 0`` (``xi_max = 0``, ``sum |P_ij| = 0``, ``v_max`` the probe direction)."""
    xi = torch.zeros(n, dtype=torch.float64)
    v = probes.clone()
    xi[keep] = spectrum.xi_max.double().cpu()
    if keep:
        v[keep] = spectrum.v_max.double().cpu()
    gram = None
    if spectrum.abs_sum_gram is not None or not keep:
        gram = torch.zeros(n, dtype=torch.float64)
        if spectrum.abs_sum_gram is not None:
            gram[keep] = spectrum.abs_sum_gram.double().cpu()
    products = residual = None
    if spectrum.products is not None:
        products = torch.zeros(n, dtype=torch.int64)
        products[keep] = spectrum.products
    if spectrum.residual is not None:
        residual = torch.zeros(n, dtype=torch.float64)
        residual[keep] = spectrum.residual
    start = None
    if spectrum.start_products is not None:
        start = torch.zeros(n, dtype=torch.int64)
        start[keep] = spectrum.start_products
    return Spectrum(xi, v, gram, products=products, residual=residual, start_products=start)


def _joined(parts: list[Tensor | None]) -> Tensor | None:
    """The per-sample tensors of the parts, joined (``None`` if any part has none)."""
    if any(part is None for part in parts):
        return None
    return torch.cat([part for part in parts if part is not None])


def worst_case_directions(v_max: Tensor, p: float) -> Tensor:
    """``(N, d)`` unit-lp directions that attain ``T_e``: ``v_max`` for l2,
    ``sign(v_max)`` for l-inf (Theorem 2's vertices), ``v_max / ||v_max||_p`` otherwise."""
    if math.isinf(p):
        s = torch.sign(v_max)
        s[s == 0] = 1.0
        return s
    return v_max / torch.linalg.vector_norm(v_max, ord=p, dim=1, keepdim=True).clamp_min(1e-300)


def attribute_rows(attribution: Attribution, model: Model, x: Tensor, target: Tensor,
                   value_points: int | None) -> Tensor:
    """``g`` of every row of ``x`` (detached), with at most ``value_points`` points (the
    attribution's points times the rows) in one pass: integrated gradients' Riemann points
    in segments of ``value_points // rows``
    (:meth:`~attrcert.attributions.Attribution.in_passes`; ``None``: all at once). The
    segments sum to ``g`` up to rounding."""
    per_row = None if value_points is None else max(1, value_points // max(1, x.shape[0]))
    return summed(attribution.in_passes(per_row), model, x, target)


def attribution_deviations(model: Model, analysis: Analysis, attribution: Attribution,
                           deltas: Tensor, value_points: int | None) -> Tensor:
    """``||g(x + delta_s) - g(x)||_2`` for each of ``S`` perturbations: ``deltas`` ``(S, N, d)``,
    result ``(S, N)``; all ``S * N`` attributions in one call, at most ``value_points``
    points per pass (:attr:`attrcert.plan.RunPlan.points_per_value_pass`)."""
    s, n = deltas.shape[0], deltas.shape[1]
    x = analysis.x
    moved = (x.unsqueeze(0) + deltas.to(x.dtype).to(x.device).view(s, *x.shape))
    g = attribute_rows(attribution, model, moved.reshape(s * n, *x.shape[1:]),
                       analysis.target.repeat(s), value_points)
    return (g.reshape(s, n, -1).double().cpu() - analysis.attr.unsqueeze(0)).norm(dim=2)
