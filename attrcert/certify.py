"""Orchestration per batch: attribution -> Jacobian -> spectrum -> bounds -> records.

:func:`certify` gives the bounds of SPEC §2 and the label test of §4 for a fixed eps;
:func:`max_eps` the largest eps for a tolerance (§3). Both share :func:`analyse`, which
does the costly part (the attribution Jacobian and its spectrum) once per batch.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from . import bounds
from .attributions import Attribution, Model, get_method, resolve_target, target_gradient
from .errors import ModelOutputError, OptionError
from .jacobian import attribution_jacobian, default_chunk_size
from .memory import (
    MemoryBudgetError,
    Plan,
    activation_bytes,
    default_budget,
    format_size,
    halving,
    parse_size,
    plan,
)
from .perturbation import NormLike, Perturbation, norm_label, parse_norm
from .results import ASSUMPTION, Record, finite_or_none
from .smoothness import NonSmoothModelWarning, find_nonsmooth, nonsmooth_message
from .spectral import Spectrum, abs_sum_gram_blocked, spectrum_full, spectrum_iterative

LABEL_GRADIENTS = ("completeness", "attribution")
Progress = Callable[[int, int], None]
BatchResult = TypeVar("BatchResult")


@dataclass
class Analysis:
    """What the bounds need about one batch (all float64 on the CPU except ``x``).

    Attributes:
        x: the inputs ``(N, C, H, W)`` (model dtype and device).
        target, predicted: ``(N,)`` classes.
        logits: ``(N, k)`` at ``x``.
        attr: ``g(x)`` flattened, ``(N, d)``.
        spectrum: ``xi_max``, ``v_max``, ``sum |P_ij|`` of each ``J``.
        label_grads: ``(N, k, d)``: for each class ``j`` the gradient that Proposition 1
            uses (``grad f_j`` under completeness, or ``grad sum_i g^j_i``).
        completeness_gap: ``(N,)`` ``|sum_i g_i - (f_y(x) - f_y(b))|`` (IG only).
    """

    x: Tensor
    target: Tensor
    predicted: Tensor
    logits: Tensor
    attr: Tensor
    spectrum: Spectrum
    label_grads: Tensor
    completeness_gap: Tensor | None


OnBatch = Callable[[list[Record], Analysis], None]


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
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") \
            from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device {device!r} asked for, but CUDA is not available here")
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
    label_gradient: str = "completeness",
    spectral: str = "full",
    tol: float = 1e-4,
    seed: int = 0,
    progress: Progress | None = None,
    abs_sum_blocked: bool = False,
    first_index: int = 0,
) -> Analysis:
    """The costly part, shared by :func:`certify` and :func:`max_eps`, for one batch.

    ``spectral="full"`` forms every ``J`` (:mod:`attrcert.jacobian`) and gets ``xi_max``,
    ``v_max`` and Theorem 2's ``sum |P_ij|``; ``"iterative"`` gets ``xi_max`` and ``v_max``
    matrix-free (:func:`attrcert.spectral.spectrum_iterative`, relative tolerance ``tol``)
    and, only with ``abs_sum_blocked``, ``sum |P_ij|`` column block by column block
    (:func:`attrcert.spectral.abs_sum_gram_blocked`, ``chunk_size`` columns per pass);
    every sample starts the solver from the same ``seed``ed vector, so neither batching nor
    resuming a run on a subset changes its result.

    Raises:
        ModelOutputError: the model's logits are not finite for a sample (its index among
            all samples is ``first_index`` plus its position in ``x``).
    """
    n = x.shape[0]
    with torch.no_grad():
        logits = model(x)
    finite = torch.isfinite(logits).all(dim=1)
    if not finite.all():
        index = first_index + int((~finite).nonzero()[0])
        raise ModelOutputError(f"the model returned logits that are not finite (NaN or "
                               f"infinite) for sample {index}: it cannot be certified", index)
    g = attribution(model, x, target)
    if spectral == "iterative":
        parts = [spectrum_iterative(attribution, model, x[i : i + 1], target[i : i + 1],
                                    tol=tol, seed=seed) for i in range(n)]
        abs_sum = (abs_sum_gram_blocked(attribution, model, x, target,
                                        chunk_size=chunk_size or 1)
                   if abs_sum_blocked else None)
        spectrum = Spectrum(torch.cat([s.xi_max for s in parts]),
                            torch.cat([s.v_max for s in parts]), abs_sum)
        if progress is not None:
            progress(x[0].numel(), x[0].numel())
    else:
        jac = attribution_jacobian(attribution, model, x, target, chunk_size=chunk_size,
                                   progress=progress)
        spectrum = spectrum_full(jac)
        del jac
    label_grads = _label_gradients(model, x, attribution, logits.shape[1], label_gradient)
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
                          else spectrum.abs_sum_gram.cpu()),
        label_grads=label_grads.double().cpu(),
        completeness_gap=gap,
    )


def _label_gradients(
    model: Model, x: Tensor, attribution: Attribution, k: int, how: str
) -> Tensor:
    """``(N, k, d)``: per class ``j``, ``grad_x f_j`` (completeness, SPEC §4 default) or
    ``grad_x sum_i g^j_i`` (through the attribution: one second-order pass)."""
    n = x.shape[0]
    copies = x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:])
    copies = copies.clone().requires_grad_(True)
    classes = torch.arange(k, device=x.device).repeat_interleave(n)
    if how == "completeness":
        grads = target_gradient(model, copies, classes, create_graph=False)
    elif how == "attribution":
        g = attribution(model, copies, classes, create_graph=True)
        if not g.requires_grad:  # g does not depend on x: its gradient is zero
            return torch.zeros(n, k, x[0].numel(), dtype=x.dtype, device=x.device)
        (grads,) = torch.autograd.grad(g.sum(), copies, materialize_grads=True)
    else:
        raise OptionError(f"unknown label_gradient {how!r}: use {' or '.join(LABEL_GRADIENTS)}")
    return grads.reshape(k, n, -1).transpose(0, 1).detach()


SPECTRAL = ("auto", "full", "iterative")
#: ``spectral="auto"`` forms J up to this d for l-inf, where Theorem 2 needs every entry of
#: ``P = J^T J``; above it l-inf uses Corollary 1 from the matrix-free path (BENCHMARKS.md).
AUTO_FULL_MAX_D_LINF = 4096
#: ``spectral="auto"`` forms J up to this d for every norm: measured on a Softplus CNN with
#: IG m = 50 (1 thread, ``benchmarks/bench_crossover.py``), the full path took half the
#: matrix-free time at d = 16, and the matrix-free path won from d = 36 on (1.3x; 2.3x at
#: 64, 5.6x at 256, 30x at 784).
AUTO_FULL_MAX_D = 32


def resolve_spectral(spectral: str, d: int, p: float) -> str:
    """``"full"`` or ``"iterative"`` for ``spectral`` (see :data:`AUTO_FULL_MAX_D` and
    :data:`AUTO_FULL_MAX_D_LINF`)."""
    if spectral not in SPECTRAL:
        raise OptionError(f"unknown spectral {spectral!r}: use one of {', '.join(SPECTRAL)}")
    if spectral != "auto":
        return spectral
    if d <= AUTO_FULL_MAX_D or (math.isinf(p) and d <= AUTO_FULL_MAX_D_LINF):
        return "full"
    return "iterative"


@dataclass(frozen=True)
class Sizing:
    """How a run is cut to fit its memory budget (:func:`size_run`).

    Attributes:
        spectral: ``"full"`` or ``"iterative"``.
        abs_sum_blocked: Theorem 2's ``sum |P_ij|`` column block by column block (``auto``
            for l-inf when the full Jacobian does not fit).
        batch_size: samples per batch.
        chunk_size: rows (or columns) per replicated pass.
        plan: the estimates behind them.
    """

    spectral: str
    abs_sum_blocked: bool
    batch_size: int
    chunk_size: int
    plan: Plan


def size_run(model: Model, x: Tensor, attribution: Attribution, *, spectral: str, p: float,
             memory_budget: int | str | None, batch_size: int | None,
             chunk_size: int | None) -> Sizing:
    """Spectral path, batch size and chunk size for ``memory_budget`` bytes (``None``:
    :func:`attrcert.memory.default_budget`), from :func:`attrcert.memory.plan`'s estimates.

    Sizes the user gave are kept. ``spectral="auto"`` for l-inf forms ``J`` only where it
    fits the budget (else ``sum |P_ij|`` blocked, ``O(chunk d)`` memory); ``"full"`` that
    cannot fit even one sample is refused before any pass runs (a CPU process that
    outgrows its memory is killed by the system, not warned).
    """
    budget = default_budget(x.device) if memory_budget is None else parse_size(memory_budget)
    d = x[0].numel()
    how = resolve_spectral(spectral, d, p)
    def estimate_for(path: str) -> Plan:
        return plan(budget, d=d, steps=int(getattr(attribution, "steps", 1)),
                    activation=activation, itemsize=x.element_size(), spectral=path,
                    default_batch=batch_size or default_batch_size(x.device))

    activation = activation_bytes(model, x)
    estimate = estimate_for(how)
    blocked = False
    if how == "full" and not estimate.full_fits:
        if spectral != "auto":
            raise MemoryBudgetError(
                f"the full Jacobian path needs about {format_size(estimate.full_bytes)} per "
                f"sample (d = {d}), over the memory budget of {format_size(budget)}: use "
                "--spectral iterative or a larger --memory-budget")
        how, blocked = "iterative", True
        estimate = estimate_for(how)
    batch = batch_size or estimate.batch_size
    chunk = chunk_size or min(estimate.chunk_size, default_chunk_size(attribution, x[:batch]))
    return Sizing(spectral=how, abs_sum_blocked=blocked, batch_size=batch, chunk_size=chunk,
                  plan=estimate)


def _check_tol(tol: float) -> None:
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise OptionError(f"tol = {tol!r} must lie in (0, 1)")


def _abs_sum_gram(a: Analysis, i: int) -> float | None:
    return None if a.spectrum.abs_sum_gram is None else float(a.spectrum.abs_sum_gram[i])


def worst_case_directions(v_max: Tensor, p: float) -> Tensor:
    """``(N, d)`` unit-lp directions that attain ``T_e``: ``v_max`` for l2,
    ``sign(v_max)`` for l-inf (Theorem 2's vertices), ``v_max / ||v_max||_p`` otherwise."""
    if math.isinf(p):
        s = torch.sign(v_max)
        s[s == 0] = 1.0
        return s
    return v_max / torch.linalg.vector_norm(v_max, ord=p, dim=1, keepdim=True).clamp_min(1e-300)


def attribution_deviations(
    model: Model, analysis: Analysis, attribution: Attribution, deltas: Tensor
) -> Tensor:
    """``||g(x + delta_s) - g(x)||_2`` for each of ``S`` perturbations: ``deltas`` ``(S, N, d)``,
    result ``(S, N)``; all ``S * N`` attributions in one call."""
    s, n = deltas.shape[0], deltas.shape[1]
    x = analysis.x
    moved = (x.unsqueeze(0) + deltas.to(x.dtype).to(x.device).view(s, *x.shape))
    g = attribution(model, moved.reshape(s * n, *x.shape[1:]), analysis.target.repeat(s))
    return (g.reshape(s, n, -1).double().cpu() - analysis.attr.unsqueeze(0)).norm(dim=2)


def _coerce_batching(chunk_size: int | None, batch_size: int | None) -> None:
    for name, value in (("chunk_size", chunk_size), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise OptionError(f"{name} = {value!r} must be an integer >= 1")


def default_batch_size(device: torch.device) -> int:
    """Samples per batch when none is given: 1 on CPU, where one sample per graph is fastest
    (BENCHMARKS.md: 2 samples sharing each pass cost 1.1x per sample), 16 on accelerators."""
    return 1 if device.type == "cpu" else 16


def _fitted_batches(n: int, batch_size: int, device: torch.device,
                    work: Callable[[slice], BatchResult]) -> Iterator[BatchResult]:
    """``work`` on consecutive slices of ``batch_size`` samples, in order. A slice that runs
    out of memory is retried with half as many samples (:func:`attrcert.memory.halving`),
    and later slices keep the smaller size; results do not depend on the slicing."""
    size, start = batch_size, 0
    while start < n:
        def run(b: int, first: int = start) -> BatchResult:
            return work(slice(first, min(n, first + b)))

        result, size = halving(run, size, device=device, what="sample per batch")
        yield result
        start = min(n, start + size)


def _setup(
    model: Model, x: Tensor, method: str, steps: int, baseline: Tensor | None,
    target: int | Tensor | list[int] | None, dtype: torch.dtype | str | None,
    device: torch.device | str | None, chunk_size: int | None, batch_size: int | None,
) -> tuple[Model, Tensor, Attribution, Tensor, list[str], list[str]]:
    """Checked options, the model and inputs where they compute, the attribution, the
    targets, and the smoothness findings (warned once) shared by every record."""
    _coerce_batching(chunk_size, batch_size)
    model, x = prepare(model, x, dtype=dtype, device=device)
    if baseline is not None:
        if method != "integrated_gradients":
            raise OptionError("a baseline applies only to integrated_gradients")
        baseline = torch.as_tensor(baseline).to(dtype=x.dtype, device=x.device)
    attribution = get_method(method, steps=steps, baseline=baseline)
    targets = resolve_target(model, x, target)
    k = _num_classes(model, x)
    if targets.numel() and (targets.min() < 0 or targets.max() >= k):
        raise OptionError(f"target classes must lie in 0..{k - 1}")
    nonsmooth = find_nonsmooth(model, x)
    notes = []
    if nonsmooth:
        notes.append(nonsmooth_message(nonsmooth))
        warnings.warn(notes[-1], NonSmoothModelWarning, stacklevel=3)
    return model, x, attribution, targets, nonsmooth, notes


def _num_classes(model: Model, x: Tensor) -> int:
    with torch.no_grad():
        out = model(x[:1])
    if out.ndim != 2:
        raise OptionError(f"the model returned shape {tuple(out.shape)}: expected logits (N, k)")
    return int(out.shape[1])


def _common_fields(a: Analysis, i: int, method: str, p: float, nonsmooth: list[str],
                   notes: list[str]) -> Record:
    return {
        "index": i,
        "target": int(a.target[i]),
        "predicted": int(a.predicted[i]),
        "method": method,
        "norm": norm_label(p),
        "attr_norm": finite_or_none(a.attr[i].norm().item()),
        "xi_max": finite_or_none(a.spectrum.xi_max[i].item()),
        "completeness_gap": None if a.completeness_gap is None
        else finite_or_none(a.completeness_gap[i].item()),
        "assumption": ASSUMPTION,
        "smooth": not nonsmooth,
        "nonsmooth_ops": list(nonsmooth),
        "attack_checked": False,
        "warnings": list(notes),
    }


def certify(
    model: Model,
    x: Tensor,
    *,
    eps: float,
    norm: NormLike = 2,
    method: str = "integrated_gradients",
    steps: int = 50,
    baseline: Tensor | None = None,
    target: int | Tensor | list[int] | None = None,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    label_gradient: str = "completeness",
    spectral: str = "auto",
    tol: float = 1e-4,
    memory_budget: int | str | None = None,
    verify: bool = False,
    attack_steps: int = 40,
    attack_restarts: int = 1,
    seed: int = 0,
    progress: Progress | None = None,
    on_batch: OnBatch | None = None,
    sound: bool = False,
) -> list[Record]:
    """Upper bounds on ``||g(x + delta) - g(x)||`` over ``||delta||_p <= eps``, per sample.

    Each record holds (SPEC §2, §4): ``xi_max`` (Theorem 1); ``T_e`` (Theorem 1 for l2,
    Corollary 1 for lp, Theorem 2 for l-inf; ``T_e_method`` says which) and for l-inf
    ``T_e_min``, the smallest valid bound; ``c`` (Eq. 39) and ``T_e_prime = c xi_max eps``
    (Eq. 11, l2 only); ``T_c``, ``T_c_deg`` (Corollary 2) with ``vacuous`` when
    ``T_e >= ||g||``; ``T_c_prime``/``T_c_prime_deg``/``vacuous_prime`` from ``T_e_prime``;
    Proposition 1's ``label_preserved`` (Eq. 8 at ``+-`` the worst-case perturbation),
    ``label_radius`` and ``label_kept`` (the real model's argmax there); ``target``,
    ``predicted``, ``attr_norm``, ``eps``, ``norm``, ``method``, ``seconds``; and what the
    numbers rest on: ``assumption``, ``smooth``, ``nonsmooth_ops``, ``attack_checked``.

    The bounds assume a locally linear attribution (SPEC §6): they are estimates, not
    guarantees, and ``T_e_prime`` is the tight estimate.

    Args:
        model: classifier returning logits ``(N, k)``; put in eval mode.
        x: images ``(N, C, H, W)`` in the units eps is measured in.
        eps: radius of the ball (> 0).
        norm: ``p``: 2, ``"inf"`` / ``float("inf")``, or any ``p >= 1``.
        method, steps, baseline: the attribution (SPEC §1).
        target: classes (default: the predictions).
        chunk_size: Jacobian rows per replicated autograd pass (memory cap; see
            :mod:`attrcert.jacobian`); batch_size: samples sharing each pass (default
            :func:`default_batch_size`). Both default to what fits ``memory_budget``.
        dtype, device: where to compute (default: the model's).
        label_gradient: ``"completeness"`` (``a = grad f_y' - grad f_y``) or ``"attribution"``.
        spectral: ``"full"`` (form each ``J``), ``"iterative"`` (matrix-free ``xi_max`` and
            ``v_max``, relative tolerance ``tol``; l-inf then uses Corollary 1) or
            ``"auto"`` (:func:`resolve_spectral`; for l-inf, Theorem 2's constant blocked
            where ``J`` does not fit ``memory_budget``). Records say which in ``spectral``.
        memory_budget: bytes (or text such as ``"4GB"``) the passes may use; default half
            the device's free memory (:func:`size_run`, :mod:`attrcert.memory`).
        verify: also attack each attribution (:func:`attrcert.attack.attack`, PGD on the
            Euclidean and cosine objectives, plus IFIA for l-inf; ``attack_steps`` steps,
            ``attack_restarts`` restarts, seeded by ``seed``) and add ``T_e_hat``,
            ``T_c_hat``, ``T_c_hat_deg``, ``violation`` (``T_e_hat > T_e_prime`` for l2,
            ``> T_e`` otherwise), ``violation_cosine``, ``verified`` and the linearity gaps
            ``eta_vmax`` / ``eta_attack`` (Appendix B.1); ``attack_checked`` becomes true.
        progress: called with ``(rows_done, d)`` while Jacobians are built.
        on_batch: called with each batch's records and its :class:`Analysis` (``g``,
            ``v_max``) as soon as the batch is done (streaming output, progress).
        sound: also add proved bounds, with no linearity assumption (:mod:`attrcert.sound`;
            smooth chains only, else :class:`InputError`): ``T_e_sound`` (the smaller of
            ``T_e_sound_interval`` and ``T_e_sound_mean_value``, ``T_e_sound_method`` says
            which), ``T_c_sound``, ``T_c_sound_deg`` (Corollary 2), and with ``verify``
            ``violation_sound`` (an attack beat a proved bound: a bug, never expected).
    """
    pert = Perturbation(parse_norm(norm), eps)
    for name, value in (("attack_steps", attack_steps), ("attack_restarts", attack_restarts)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise OptionError(f"{name} = {value!r} must be an integer >= 1")
    model, x, attribution, targets, nonsmooth, notes = _setup(
        model, x, method, steps, baseline, target, dtype, device, chunk_size, batch_size)
    _check_tol(tol)
    sizing = size_run(model, x, attribution, spectral=spectral, p=pert.norm,
                      memory_budget=memory_budget, batch_size=batch_size, chunk_size=chunk_size)
    how = sizing.spectral
    bounder = None
    if sound:
        from .sound import SoundBounder
        bounder = SoundBounder(model, x[:1], attribution, pert)
    records: list[Record] = []

    def work(sl: slice) -> tuple[list[Record], Analysis]:
        start = time.perf_counter()
        a = analyse(model, x[sl], attribution, targets[sl], chunk_size=sizing.chunk_size,
                    label_gradient=label_gradient, spectral=how, tol=tol,
                    progress=progress, abs_sum_blocked=sizing.abs_sum_blocked,
                    first_index=sl.start)
        batch_records = _certify_batch(model, a, attribution, pert, method, nonsmooth, notes)
        for rec in batch_records:
            rec["spectral"] = how
        if bounder is not None:
            bounder.update(a.x, a.target, [float(v) for v in a.attr.norm(dim=1)],
                           batch_records)
        if verify:
            _verify_batch(model, a, attribution, pert, batch_records,
                          steps=attack_steps, restarts=attack_restarts, seed=seed)
            if bounder is not None:
                bounder.check_attack(batch_records)
        elapsed = (time.perf_counter() - start) / len(batch_records)
        for offset, rec in enumerate(batch_records):
            rec["index"] = sl.start + offset
            rec["seconds"] = elapsed
        return batch_records, a

    for batch_records, a in _fitted_batches(x.shape[0], sizing.batch_size, x.device, work):
        records.extend(batch_records)
        if on_batch is not None:
            on_batch(batch_records, a)
    return records


def _certify_batch(
    model: Model, a: Analysis, attribution: Attribution, pert: Perturbation, method: str,
    nonsmooth: list[str], notes: list[str],
) -> list[Record]:
    n, d = a.attr.shape
    eps, p = pert.eps, pert.norm
    unit = worst_case_directions(a.spectrum.v_max, p)  # (N, d)
    deltas = torch.stack([eps * unit, -eps * unit])  # (2, N, d)
    deviations = (attribution_deviations(model, a, attribution, deltas)
                  if pert.is_l2 else None)
    with torch.no_grad():
        moved = a.x.unsqueeze(0) + deltas.to(a.x.dtype).to(a.x.device).view(2, *a.x.shape)
        kept_pred = model(moved.reshape(2 * n, *a.x.shape[1:])).argmax(1).view(2, n).cpu()
    records = []
    for i in range(n):
        xi = float(a.spectrum.xi_max[i])
        attr_norm = float(a.attr[i].norm())
        te = bounds.euclidean_bound(xi, _abs_sum_gram(a, i), d, p)
        t_e = te.slope * eps
        cos = bounds.cosine_bound(t_e, attr_norm)
        rec = _common_fields(a, i, method, p, nonsmooth, notes)
        rec.update({
            "eps": eps,
            "T_e": finite_or_none(t_e),
            "T_e_method": te.method,
            "T_e_min": finite_or_none(te.slope_min * eps),
            "c": None,
            "T_e_prime": None,
            "T_c": finite_or_none(cos.distance),
            "T_c_deg": finite_or_none(cos.degrees),
            "vacuous": cos.vacuous,
            "T_c_prime": None,
            "T_c_prime_deg": None,
            "vacuous_prime": None,
        })
        if deviations is not None:
            c = bounds.modification_factor(deviations[:, i].tolist(), xi, eps)
            t_prime = bounds.modified_euclidean_bound(c, xi, eps)
            cos_p = bounds.cosine_bound(t_prime, attr_norm)
            rec.update({
                "c": finite_or_none(c),
                "T_e_prime": finite_or_none(t_prime),
                "T_c_prime": finite_or_none(cos_p.distance),
                "T_c_prime_deg": finite_or_none(cos_p.degrees),
                "vacuous_prime": cos_p.vacuous,
            })
        rec.update(_label_fields(a, i, pert, deltas[:, i], kept_pred[:, i]))
        records.append(rec)
    return records


def _verify_batch(
    model: Model, a: Analysis, attribution: Attribution, pert: Perturbation,
    records: list[Record], *, steps: int, restarts: int, seed: int,
) -> None:
    """Attack the attributions of one batch and record whether any bound was exceeded.

    The Euclidean bound checked is ``T_e_prime`` for l2 (Eq. 11, the tight estimate) and
    ``T_e`` otherwise; the cosine bound likewise (a vacuous cosine bound cannot be exceeded).
    ``eta`` is Appendix B.1's ``||g(x + delta) - g(x) - J delta||_2`` along ``+eps`` times
    the worst-case direction and along the attack's ``delta``.
    """
    from .attack import attack, linearity_gap

    found = attack(model, a.x, attribution=attribution, target=a.target, perturbation=pert,
                   steps=steps, restarts=restarts, seed=seed)
    unit = worst_case_directions(a.spectrum.v_max, pert.norm).to(a.x.dtype).to(a.x.device)
    eta_v = linearity_gap(model, a.x, attribution, a.target, pert.eps * unit.view_as(a.x))
    eta_a = linearity_gap(model, a.x, attribution, a.target, found.delta)
    for i, rec in enumerate(records):
        t_hat = float(found.deviation[i])
        c_hat = float(found.cosine_distance[i])
        bound = rec["T_e_prime"] if rec["T_e_prime"] is not None else rec["T_e"]
        cos_bound, cos_vacuous = ((rec["T_c_prime"], rec["vacuous_prime"])
                                  if rec["T_c_prime"] is not None
                                  else (rec["T_c"], rec["vacuous"]))
        violation = bound is not None and t_hat > bound
        violation_cos = (not cos_vacuous and cos_bound is not None and c_hat > cos_bound)
        rec.update({
            "T_e_hat": finite_or_none(t_hat),
            "T_c_hat": finite_or_none(c_hat),
            "T_c_hat_deg": finite_or_none(float(found.angle_deg[i])),
            "attack_label_kept": bool(found.label_kept[i]),
            "violation": violation,
            "violation_cosine": violation_cos,
            "verified": not (violation or violation_cos),
            "eta_vmax": finite_or_none(float(eta_v[i])),
            "eta_attack": finite_or_none(float(eta_a[i])),
            "attack_checked": True,
        })
        if violation or violation_cos:
            rec["warnings"].append(
                "an attack exceeded the bound: the attribution is not locally linear on this "
                "ball; use a smaller eps or a smoother model, and do not report this bound "
                "as a certificate")


def _label_fields(a: Analysis, i: int, pert: Perturbation, deltas: Tensor,
                  kept_pred: Tensor) -> Record:
    y = int(a.target[i])
    b = bounds.label_margins(a.logits[i].numpy(), y)
    av = bounds.label_directions(a.label_grads[i].numpy(), y)
    radius = bounds.label_radius(av, b, pert.dual)
    return {
        "label_preserved": bounds.label_preserved(av, b, [dl.numpy() for dl in deltas]),
        "label_radius": finite_or_none(radius),
        "label_radius_unbounded": radius is None,
        "label_kept": bool((kept_pred == y).all()),
    }


def max_eps(
    model: Model,
    x: Tensor,
    *,
    omega: float,
    metric: str = "euclidean",
    norm: NormLike = 2,
    modified: bool = False,
    method: str = "integrated_gradients",
    steps: int = 50,
    baseline: Tensor | None = None,
    target: int | Tensor | list[int] | None = None,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    bisection_steps: int = 30,
    spectral: str = "auto",
    tol: float = 1e-4,
    memory_budget: int | str | None = None,
    progress: Progress | None = None,
    on_batch: OnBatch | None = None,
) -> list[Record]:
    """The largest eps whose bound stays within a tolerance ``omega`` (Appendix E, SPEC §3).

    ``metric="euclidean"``: ``T_e(eps) <= omega`` (Eq. 50; lp and l-inf through their
    ``T_e``). ``"cosine"`` (``0 < omega <= 1``): Corollary 2 inverted, ``T_e(eps) <=
    ||g|| sqrt(omega (2 - omega))`` (Eq. 51-52 as corrected in SPEC §5). ``"angle"``
    (degrees, ``0 < omega <= 90``): ``T_e(eps) <= ||g|| sin(omega)``.

    With ``modified=True`` (l2 only) the bound is ``T'_e = c(eps) xi_max eps``; since
    ``c(eps) xi_max eps = max(xi_max eps, max_s ||g(x + s eps v_max) - g(x)||)``, the largest
    eps in ``[0, eps_linear]`` meeting the tolerance is found by bisection
    (``bisection_steps`` halvings; the reported eps satisfies the tolerance).

    Records: the common fields of :func:`certify` plus ``omega``, ``metric``,
    ``eps_max`` (``None`` with ``eps_max_unbounded`` when no eps is too large),
    ``eps_max_linear`` (the unmodified value) and ``T_e_method``.
    """
    p = parse_norm(norm)
    check_tolerance(omega, metric)
    if modified and p != 2.0:
        raise OptionError("modified (T'_e) is defined for the l2 norm only: use norm=2")
    model, x, attribution, targets, nonsmooth, notes = _setup(
        model, x, method, steps, baseline, target, dtype, device, chunk_size, batch_size)
    _check_tol(tol)
    sizing = size_run(model, x, attribution, spectral=spectral, p=p,
                      memory_budget=memory_budget, batch_size=batch_size, chunk_size=chunk_size)
    how = sizing.spectral
    records: list[Record] = []

    def work(sl: slice) -> tuple[list[Record], Analysis]:
        start = time.perf_counter()
        a = analyse(model, x[sl], attribution, targets[sl], chunk_size=sizing.chunk_size,
                    spectral=how, tol=tol, progress=progress,
                    abs_sum_blocked=sizing.abs_sum_blocked, first_index=sl.start)
        n, d = a.attr.shape
        tolerances, slopes, methods, batch = [], [], [], []
        for i in range(n):
            te = bounds.euclidean_bound(float(a.spectrum.xi_max[i]), _abs_sum_gram(a, i), d, p)
            tolerances.append(
                bounds.euclidean_tolerance(omega, metric, float(a.attr[i].norm())))
            slopes.append(te.slope)
            methods.append(te.method)
        linear = [bounds.max_eps_linear(t, s) for t, s in zip(tolerances, slopes, strict=True)]
        found = (_bisect_modified(model, a, attribution, linear, tolerances, bisection_steps)
                 if modified else linear)
        elapsed = (time.perf_counter() - start) / n
        for i in range(n):
            rec = _common_fields(a, i, method, p, nonsmooth, notes)
            rec.update({
                "index": sl.start + i,
                "omega": omega,
                "metric": metric,
                "modified": modified,
                "eps_max": finite_or_none(found[i]),
                "eps_max_linear": finite_or_none(linear[i]),
                "eps_max_unbounded": found[i] is None,
                "T_e_method": methods[i],
                "spectral": how,
                "seconds": elapsed,
            })
            batch.append(rec)
        return batch, a

    for batch, a in _fitted_batches(x.shape[0], sizing.batch_size, x.device, work):
        records.extend(batch)
        if on_batch is not None:
            on_batch(batch, a)
    return records


def check_tolerance(omega: float, metric: str) -> None:
    """Raise :class:`OptionError` unless ``omega`` is a valid tolerance for ``metric``."""
    if metric not in bounds.METRICS:
        raise OptionError(f"unknown metric {metric!r}: use one of {', '.join(bounds.METRICS)}")
    omega = float(omega)
    if not math.isfinite(omega) or omega <= 0:
        raise OptionError(f"omega = {omega!r} must be a finite number > 0")
    if metric == "cosine" and omega > 1:
        raise OptionError("a cosine-distance tolerance omega must lie in (0, 1]")
    if metric == "angle" and omega > 90:
        raise OptionError("an angle tolerance omega must lie in (0, 90] degrees")


def _bisect_modified(
    model: Model, a: Analysis, attribution: Attribution, linear: list[float | None],
    tolerances: list[float], iterations: int,
) -> list[float | None]:
    """Largest eps in ``[0, eps_linear]`` with ``c(eps) xi_max eps <= tolerance``, by bisection.

    ``c(eps) xi_max eps = max(xi_max eps, dev(eps))`` (Eq. 39 times ``xi_max eps``), with
    ``dev(eps) = max_s ||g(x + s eps v_max) - g(x)||``. Samples with an unbounded linear
    eps (``xi_max = 0``) stay unbounded. One batched attribution call per step.
    """
    n = len(linear)
    xi = a.spectrum.xi_max.numpy()
    tol = np.array(tolerances)
    hi = np.array([e if e is not None else 0.0 for e in linear])
    active = np.array([e is not None and e > 0 for e in linear])
    lo = np.zeros(n)

    def meets(eps_vec: np.ndarray) -> np.ndarray:
        e = torch.from_numpy(eps_vec).view(1, n, 1)
        v = a.spectrum.v_max.unsqueeze(0)
        dev = attribution_deviations(model, a, attribution, torch.cat([e * v, -e * v]))
        value = np.maximum(xi * eps_vec, dev.max(0).values.numpy())
        return value <= tol

    ok_hi = meets(hi)
    lo[ok_hi] = hi[ok_hi]
    todo = active & ~ok_hi
    for _ in range(iterations if todo.any() else 0):
        mid = np.where(todo, 0.5 * (lo + hi), lo)
        ok = meets(mid)
        lo = np.where(todo & ok, mid, lo)
        hi = np.where(todo & ~ok, mid, hi)
    return [None if linear[i] is None else float(lo[i]) for i in range(n)]
