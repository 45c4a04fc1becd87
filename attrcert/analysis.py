"""One batch's analysis: attribution -> Jacobian -> spectrum.

:func:`analyse` does the costly part that every bound needs, once per batch: the
attribution ``g`` (docs/math.md §1) and the spectrum of its Jacobian ``J = dg/dx`` (``xi_max``,
``v_max`` and, for l-inf, Theorem 2's ``sum |P_ij|``). Proposition 1 is
:mod:`attrcert.proposition1`'s.
:func:`prepare` puts the model and inputs where they compute; :func:`attribution_deviations`
measures ``||g(x + delta) - g(x)||`` for the perturbations that attain ``T_e``
(:func:`worst_case_directions`), as Eq. 39 needs.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .attributions import Attribution, Model, summed
from .degenerate import zero_jacobians
from .errors import ModelOutputError, OptionError
from .jacobian import attribution_jacobian
from .memory import halving
from .spectral import (
    Spectrum,
    abs_sum_gram_blocked,
    nonfinite_jacobian,
    spectrum_full,
    spectrum_iterative,
)

__all__ = ["Analysis", "analyse", "attribute_rows", "attribution_deviations",
           "check_device", "prepare", "resolve_device", "worst_case_directions"]

Progress = Callable[[int, int], None]


@dataclass
class Analysis:
    """What the bounds need about one batch (all float64 on the CPU except ``x``).

    Attributes:
        x: the inputs ``(N, C, H, W)`` (model dtype and device).
        target, predicted: ``(N,)`` classes.
        logits: ``(N, k)`` at ``x``.
        attr: ``g(x)`` flattened, ``(N, d)``.
        spectrum: ``xi_max``, ``v_max``, ``sum |P_ij|`` of each ``J``.
        completeness_gap: ``(N,)`` ``|sum_i g_i - (f_y(x) - f_y(b))|`` (IG only).
        value_points: attribution points (Riemann points times input rows) that one
            first-order pass over perturbed copies of this batch may hold
            (:attr:`attrcert.sizing.Sizing.value_points`; ``None``: no limit), so that
            :func:`attribute_rows` keeps to the memory budget.
        points_per_pass: the attribution's points that one sample's matrix-free graph held
            (the planner's, after any halving; ``None``: all), for the later second-order
            passes over the batch (:attr:`batch_points_per_pass`).
    """

    x: Tensor
    target: Tensor
    predicted: Tensor
    logits: Tensor
    attr: Tensor
    spectrum: Spectrum
    completeness_gap: Tensor | None
    value_points: int | None = None
    points_per_pass: int | None = None
    zero_jacobian: Tensor | None = None

    @property
    def batch_points_per_pass(self) -> int | None:
        """:attr:`points_per_pass` shared by the batch's samples (at least 1): what one
        second-order pass over the whole batch (the attack, ``J delta``) may hold."""
        if self.points_per_pass is None:
            return None
        return max(1, self.points_per_pass // self.x.shape[0])


def resolve_device(device: torch.device | str | None, model: Model, x: Tensor) -> torch.device:
    """``None``: where the model's parameters are (else ``x``); ``"auto"``: CUDA, then MPS,
    then CPU; anything else as ``torch.device`` understands it."""
    if device is None:
        param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) \
            else None
        return param.device if param is not None else x.device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    return check_device(device)


def check_device(device: torch.device | str) -> torch.device:
    """``device`` as a ``torch.device``, if it is one attrcert can compute on here: the CPU,
    an existing CUDA device, or MPS where it is available (``meta`` holds no values)."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") \
            from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"device {device!r} asked for, but CUDA is not available here")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise OptionError(f"device {device!r} asked for, but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s): use cuda:0 .. "
                              f"cuda:{torch.cuda.device_count() - 1}")
    elif resolved.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise OptionError(f"device {device!r} asked for, but MPS (Apple GPUs) is not "
                              "available here: use cpu or cuda")
    elif resolved.type != "cpu":
        why = "holds shapes without values" if resolved.type == "meta" else "is not supported"
        raise OptionError(f"device {device!r} cannot compute attributions (it {why}): use "
                          "auto, cpu, cuda, cuda:N or mps")
    return resolved


def prepare(
    model: Model,
    x: Tensor,
    *,
    dtype: torch.dtype | str | None,
    device: torch.device | str | None,
) -> tuple[Model, Tensor]:
    """``model`` and ``x`` on ``device`` in ``dtype`` (default: the model's), model in eval mode.

    An ``nn.Module`` that needs another dtype or device is copied first: the caller's model
    is left where it was (only switched to eval mode, which the bounds need).
    """
    if not isinstance(x, Tensor):
        raise OptionError("x must be a torch.Tensor of shape (N, C, H, W)")
    if x.ndim < 2:
        raise OptionError(f"x has shape {tuple(x.shape)}: expected (N, C, H, W)")
    if not x.is_floating_point():
        x = x.float()
    if isinstance(dtype, str):
        named = {"float32": torch.float32, "float64": torch.float64}
        if dtype not in named:
            raise OptionError(f"dtype {dtype!r} is not supported: use float32 or float64")
        dtype = named[dtype]
    target_device = resolve_device(device, model, x)
    if isinstance(model, torch.nn.Module):
        try:
            model.eval()
        except NotImplementedError:  # torch.export modules refuse .eval(); exported in eval mode
            pass
        param = next(iter(model.parameters()), None)
        if param is not None and (param.device != target_device
                                  or (dtype is not None and param.dtype != dtype)):
            with warnings.catch_warnings():  # torch.export modules warn on deepcopy
                warnings.simplefilter("ignore", FutureWarning)
                model = copy.deepcopy(model)
            model = model.to(device=target_device, dtype=dtype)
        if dtype is None:
            dtype = param.dtype if param is not None else x.dtype
    x = x.detach().to(device=target_device, dtype=dtype or x.dtype)
    if not torch.isfinite(x).all():
        raise OptionError("the inputs contain NaN or infinite values")
    return model, x


def analyse(
    model: Model,
    x: Tensor,
    attribution: Attribution,
    target: Tensor,
    *,
    chunk_size: int | None = None,
    spectral: str = "full",
    tol: float = 1e-4,
    seed: int = 0,
    progress: Progress | None = None,
    abs_sum_blocked: bool = False,
    first_index: int = 0,
    points_per_pass: int | None = None,
    value_points: int | None = None,
    probe_all: bool = False,
) -> Analysis:
    """The costly part, shared by :func:`certify` and :func:`max_eps`, for one batch.

    ``spectral="full"`` forms every ``J`` (:mod:`attrcert.jacobian`) and gets ``xi_max``,
    ``v_max`` and Theorem 2's ``sum |P_ij|``; ``"iterative"`` gets ``xi_max`` and ``v_max``
    matrix-free (:func:`attrcert.spectral.spectrum_iterative`, relative tolerance ``tol``)
    and, only with ``abs_sum_blocked``, ``sum |P_ij|`` column block by column block
    (:func:`attrcert.spectral.abs_sum_gram_blocked`, ``chunk_size`` columns per pass);
    every sample starts the solver from the same ``seed``ed vector, so neither batching nor
    resuming a run on a subset changes its result. ``points_per_pass`` caps the
    attribution's points in the matrix-free graph (:class:`attrcert.spectral.JacobianProducts`;
    halved on an accelerator's out-of-memory error); ``value_points`` the points of a
    first-order pass (:func:`attribute_rows`), kept in the result for later passes.

    Before the spectrum, samples whose ``J`` is zero are found by one product ``J v``
    (:func:`attrcert.degenerate.zero_jacobians`: every sample with ``probe_all``, else those
    with a zero attribution or equal logits) and skip it (``xi_max = 0``).

    Raises:
        ModelOutputError: the model's logits, or its attribution's Jacobian, are not finite
            for a sample (its index among all samples is ``first_index`` plus its position
            in ``x``).
    """
    n = x.shape[0]
    with torch.no_grad():
        logits = model(x)
    finite = torch.isfinite(logits).all(dim=1)
    if not finite.all():
        index = first_index + int((~finite).nonzero()[0])
        raise ModelOutputError(f"the model returned logits that are not finite (NaN or "
                               f"infinite) for sample {index}: it cannot be certified", index)
    g = attribute_rows(attribution, model, x, target, value_points)
    per_pass = None if points_per_pass is None else max(1, points_per_pass // n)
    zero, probes = zero_jacobians(attribution, model, x, target, g, logits,
                                  probe_all=probe_all, points_per_pass=per_pass)
    keep = (~zero).nonzero().flatten().tolist()
    rows: list[int] | slice = keep if len(keep) < n else slice(None)
    spectrum, points_per_pass = _spectrum(
        model, x[rows], attribution, target[rows], chunk_size=chunk_size, spectral=spectral,
        tol=tol, seed=seed, progress=progress, abs_sum_blocked=abs_sum_blocked,
        points_per_pass=points_per_pass, indices=[first_index + i for i in keep])
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
        target=target,
        predicted=logits.argmax(1),
        logits=logits.double().cpu(),
        attr=g.reshape(n, -1).double().cpu(),
        spectrum=Spectrum(spectrum.xi_max.cpu(), spectrum.v_max.cpu(),
                          None if spectrum.abs_sum_gram is None
                          else spectrum.abs_sum_gram.cpu(),
                          products=spectrum.products, residual=spectrum.residual),
        completeness_gap=gap,
        value_points=value_points,
        points_per_pass=points_per_pass,
        zero_jacobian=zero,
    )


def _spectrum(model: Model, x: Tensor, attribution: Attribution, target: Tensor, *,
              chunk_size: int | None, spectral: str, tol: float, seed: int,
              progress: Progress | None, abs_sum_blocked: bool,
              points_per_pass: int | None, indices: list[int]) -> tuple[Spectrum, int | None]:
    """The spectrum of each sample's ``J`` (see :func:`analyse`), and the points per pass
    after any halving; ``indices``: the samples' indices among all (for errors)."""
    n = x.shape[0]
    if n == 0:
        d = math.prod(x.shape[1:])
        empty = torch.zeros(0, dtype=torch.float64)
        return Spectrum(empty, torch.zeros(0, d, dtype=torch.float64), None), points_per_pass
    if spectral == "iterative":
        parts = []
        for i in range(n):
            def one(points: int | None, i: int = i) -> Spectrum:
                try:
                    return spectrum_iterative(attribution, model, x[i : i + 1],
                                              target[i : i + 1], tol=tol, seed=seed,
                                              points_per_pass=points)
                except ModelOutputError:  # the index among all samples
                    raise nonfinite_jacobian(indices[i]) from None

            if points_per_pass is None:
                parts.append(one(None))
            else:
                part, points_per_pass = halving(one, points_per_pass, device=x.device,
                                                what="integrated-gradients point per pass")
                parts.append(part)
        abs_sum = (abs_sum_gram_blocked(attribution, model, x, target,
                                        chunk_size=chunk_size or 1)
                   if abs_sum_blocked else None)
        spectrum = Spectrum(torch.cat([s.xi_max for s in parts]),
                            torch.cat([s.v_max for s in parts]), abs_sum,
                            products=_joined([s.products for s in parts]),
                            residual=_joined([s.residual for s in parts]))
        if progress is not None:
            progress(x[0].numel(), x[0].numel())
    else:
        jac = attribution_jacobian(attribution, model, x, target, chunk_size=chunk_size,
                                   progress=progress)
        try:
            spectrum = spectrum_full(jac)
        except ModelOutputError as exc:  # the index among all samples
            raise nonfinite_jacobian(indices[exc.index]) from None
        del jac
    return spectrum, points_per_pass


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
    return Spectrum(xi, v, gram, products=products, residual=residual)


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


def attribution_deviations(
    model: Model, analysis: Analysis, attribution: Attribution, deltas: Tensor
) -> Tensor:
    """``||g(x + delta_s) - g(x)||_2`` for each of ``S`` perturbations: ``deltas`` ``(S, N, d)``,
    result ``(S, N)``; all ``S * N`` attributions in one call (its points within the
    batch's :attr:`Analysis.value_points`)."""
    s, n = deltas.shape[0], deltas.shape[1]
    x = analysis.x
    moved = (x.unsqueeze(0) + deltas.to(x.dtype).to(x.device).view(s, *x.shape))
    g = attribute_rows(attribution, model, moved.reshape(s * n, *x.shape[1:]),
                       analysis.target.repeat(s), analysis.value_points)
    return (g.reshape(s, n, -1).double().cpu() - analysis.attr.unsqueeze(0)).norm(dim=2)
