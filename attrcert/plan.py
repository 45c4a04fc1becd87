"""The run's plan: how its work is cut to fit the memory budget, decided once before the
first sample (:func:`plan_run`) and owned by the run, which hands it to every phase that
sizes a pass (:func:`attrcert.analysis.analyse`, the records, the attack, the report's
sweep, smoothing). An accelerator's out-of-memory error lowers a size for the rest of the
run (:attr:`RunPlan.samples_per_batch`, :attr:`RunPlan.points_per_product_pass`).

Every large allocation of a phase counts against the budget, phase by phase (a phase's
memory is freed before the next one starts):

- the spectrum: the Krylov basis (``2 d`` float64 per step, up to
  :data:`~attrcert.spectral.krylov.MAX_STEPS` steps) and the points of the matrix-free
  products' graph (:func:`attrcert.sizing.point_bytes`, ``"curvature"``), once per sample
  solved in lockstep (:attr:`RunPlan.samples_per_product_pass`); on the full path
  ``J``, ``P`` and its eigenvectors (:func:`attrcert.memory.plan`);
- first-order passes (``g`` at ``x`` and at perturbed copies): about ``2 A`` per point and
  input row (``A``: one forward pass's activations, :func:`attrcert.memory.activation_bytes`);
- Proposition 1's label test: the logit Jacobian's graph, the Golub-Kahan bases of its
  screening bounds (``d + 2 k`` and ``d + k`` float64 per step), and per class copy its
  activations and its gradient in float64;
- the attack (and ``J delta``, the zero-Jacobian probe, the report's ``J u``): the
  second-order graph of its points (``"double_vjp"``) and :data:`ATTACK_COPIES` copies of
  the batch;
- smoothing: per noisy copy its points' activations, the noise, the copy and its
  attribution in float64; per image the running sum and, with pixels, every sample's bins;
- sound mode (``--sound``): the pieces of the ball enclosed at once, their tangents
  (:func:`attrcert.sound.pieces.chunk_size`, within the budget and at most 1.5 GB).

A budget that cannot hold one sample in some phase is refused before the work
(:meth:`RunPlan.require`). Sizes are named by what one pass holds: ``samples_per_batch``,
``rows_per_pass`` (Jacobian rows or columns), ``points_per_product_pass`` (one sample's
matrix-free products), ``points_per_value_pass`` (points times input rows of a first-order
pass), ``points_per_second_order_pass`` (each sample's, in a pass over a batch),
``classes_per_label_pass``, ``copies_per_noise_pass``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .attributions import Attribution, Model
from .errors import InputError
from .jacobian import default_chunk_size
from .memory import (
    MemoryBudgetError,
    Plan,
    activation_bytes,
    default_budget,
    format_size,
    free_memory,
    halving,
    is_out_of_memory,
    parse_size,
    plan,
    release_cached,
)
from .progress import ATTACK, ATTRIBUTION, LABEL, NOISE, SPECTRUM
from .proposition1.screening import MAX_STEPS as SCREENING_STEPS
from .proposition1.screening import SCREEN_MIN
from .settings import SolverOptions
from .sizing import FOOTPRINT_FACTOR, default_batch_size, point_bytes, resolve_spectral
from .spectral.krylov import MAX_STEPS as KRYLOV_STEPS

__all__ = ["ATTACK_COPIES", "KRYLOV_VECTORS", "LOCKSTEP_CPU_MAX_WIDTH", "RunPlan",
           "lockstep_pays", "lockstep_samples", "plan_run"]

#: float64 vectors of ``d`` a Krylov step keeps (Golub-Kahan: ``v_k`` and ``u_k``).
KRYLOV_VECTORS = 2
#: Steps of the Krylov basis a budget must hold at least (the refusal before the work): the
#: solver converges in tens of steps at ImageNet size (43-116 products measured); a longer
#: run grows the basis beyond it (up to ``KRYLOV_STEPS``, :attr:`RunPlan.krylov_bytes`).
KRYLOV_MIN_STEPS = 64
#: On a CPU, samples share a pass of products only while one sample's pass is this narrow
#: (its points times ``d``): a ResNet-18 at 1 thread, 8 samples in lockstep against one at
#: a time, cost 0.20x per image with saliency at 32 px (3072 values), 0.29x at 64 px, 0.47x
#: at 96 px, 0.80x at 128 px (49152), 0.97x at 160 px and 1.21x at 224 px; integrated
#: gradients with m = 8 (8 rows a pass already) 0.53x at 32 px and 0.91x at 64 px
#: (``benchmarks/bench_lockstep.py``, BENCHMARKS.md). Accelerators always share. A CPU's
#: batch is 1 sample unless ``--batch-size`` says more (``sizing.default_batch_size``):
#: records then do not depend on how a run is batched, sharded or resumed, bit for bit,
#: while a wider pass rounds differently (``xi_max`` moved by 2e-7 relative in float32).
LOCKSTEP_CPU_MAX_WIDTH = 65536
#: Bytes a first-order pass keeps per point and input row, in units of ``A``.
VALUE_FACTOR = 2
#: Copies of the batch ``(N, d)`` in the model's dtype an attack holds beside its graph: ``x``,
#: ``delta``, its best and the candidate step, ``g(x)``, ``g(x + delta)``, the gradient and
#: the step, and each of its runs' results.
ATTACK_COPIES = 16

#: The phases (:mod:`attrcert.progress`) :meth:`RunPlan.require` checks, as errors name them.
_NAMES = {SPECTRUM: "the spectrum", ATTRIBUTION: "the attribution", LABEL: "Proposition 1's "
          "label test", ATTACK: "the attack", NOISE: "the noisy copies"}


@dataclass
class RunPlan:
    """How a run's passes are cut to fit its memory budget (module doc).

    Attributes:
        budget: bytes each phase may hold (``None``: no limit, every size "all").
        ceiling: the most one sample may need: the budget that was asked for, else the
            memory free when the run was planned (the default budget is only a fraction of
            it); ``None``: not checked.
        spectral: ``"full"``, ``"iterative"``, or ``None`` for work without ``J``.
        abs_sum_blocked: Theorem 2's ``sum |P_ij|`` column block by column block.
        samples_per_batch: samples per batch (halved, and kept so, on out-of-memory).
        rows_per_pass: Jacobian rows (or columns) per replicated pass (``None``: the
            default of :func:`attrcert.jacobian.default_chunk_size`).
        points_per_product_pass: the attribution's points one sample's matrix-free products
            hold at once (``None``: all; halved on out-of-memory).
        samples_per_product_pass: samples whose spectra are solved in lockstep, their
            products in one pass (:func:`lockstep_samples`; halved on out-of-memory).
        points: the attribution's points per sample (:attr:`Attribution.points`).
        d, itemsize, classes: the input's size, the model's bytes per number, ``k``.
        activation: ``A``, bytes one forward pass of one sample produces.
        product_point_bytes: one point's graph in the products (``"curvature"``).
        second_order_point_bytes: one point's second-order graph (``"double_vjp"``).
        full_bytes: on the full path, ``J``, ``P`` and its eigenvectors of one sample.
    """

    budget: int | None = None
    ceiling: int | None = None
    spectral: str | None = "full"
    abs_sum_blocked: bool = False
    samples_per_batch: int = 1
    rows_per_pass: int | None = None
    points_per_product_pass: int | None = None
    samples_per_product_pass: int = 1
    points: int = 1
    d: int = 0
    itemsize: int = 4
    classes: int = 0
    activation: int = 0
    product_point_bytes: int = 0
    second_order_point_bytes: int = 0
    full_bytes: int = 0

    @property
    def krylov_bytes(self) -> int:
        """The Krylov basis of the matrix-free spectrum at its longest."""
        if self.spectral != "iterative":
            return 0
        return basis_bytes(self.d)

    @property
    def points_per_value_pass(self) -> int | None:
        """Attribution points times input rows that one first-order pass (``g`` without a
        graph kept) may hold: ``2 A`` each (``None``: no limit)."""
        if self.budget is None or not self.activation:
            return None
        return max(1, self.budget // (VALUE_FACTOR * self.activation))

    def points_per_second_order_pass(self, samples: int) -> int | None:
        """Each sample's points in one second-order pass over ``samples`` samples (the
        attack's gradient, ``J delta``): what the budget holds beside the attack's copies
        (``None``: all of them)."""
        if self.budget is None or not self.second_order_point_bytes:
            return None
        room = self.budget - ATTACK_COPIES * samples * self.d * self.itemsize
        fit = room // (FOOTPRINT_FACTOR * self.second_order_point_bytes * max(1, samples))
        return None if fit >= self.points else max(1, int(fit))

    def label_bytes(self, how: str) -> tuple[int, int]:
        """``(held, per class)`` of Proposition 1's test of one sample. ``"completeness"``:
        held, the logit Jacobian's graph, one backward pass through it (a class gradient is
        one, no copy of the input) and the Golub-Kahan bases of the screening; per class,
        its gradient in float64. ``"attribution"``: per class copy its second-order graph."""
        d, k = self.d, self.classes
        grads = 2 * 8 * d  # the class gradient in float64 and its difference
        if how == "attribution":
            return grads, FOOTPRINT_FACTOR * self.second_order_point_bytes * self.points + grads
        screened = k - 1 > SCREEN_MIN  # else every class is computed: no bases
        steps = min(SCREENING_STEPS, k, d) if screened else 0
        deflated = min(KRYLOV_STEPS, k, d) if screened else 0
        basis = 8 * (steps * (d + 2 * k) + deflated * (d + k))
        return (FOOTPRINT_FACTOR * self.product_point_bytes + VALUE_FACTOR * self.activation
                + basis, grads)

    def classes_per_label_pass(self, how: str) -> int | None:
        """Class copies of one sample that one pass of Proposition 1's gradients may stack
        (``None``: all)."""
        if self.budget is None:
            return None
        held, per_class = self.label_bytes(how)
        return max(1, (self.budget - held) // max(1, per_class))

    def noise_bytes(self, samples: int, pixels: bool) -> tuple[int, int]:
        """``(held per image, per noisy copy and point)`` of smoothing: the running sum
        (and with ``pixels`` every sample's bins, one byte per pixel); per copy the noise
        and the attribution in float64, the copy and ``g`` in the model's dtype, and ``2 A``
        per point."""
        held = 8 * self.d + (samples * self.d if pixels else 0)
        return held, self.d * (16 + 2 * self.itemsize)

    def copies_per_noise_pass(self, samples: int, asked: int | None,
                              pixels: bool) -> tuple[int, int | None]:
        """``(noisy copies per pass, points per pass of each copy)`` for smoothing: as many
        copies as the budget holds with all their points, ``asked`` if given; a copy whose
        points do not all fit has them cut into segments (``None``: no cut)."""
        if self.budget is None:
            return asked or samples, None
        held, per_copy = self.noise_bytes(samples, pixels)
        per_point = VALUE_FACTOR * max(1, self.activation)
        room = max(per_copy + per_point, self.budget - held)
        copies = asked or max(1, min(samples, room // (per_copy + per_point * self.points)))
        fit = max(1, (room // copies - per_copy) // per_point)
        return int(copies), (None if fit >= self.points else int(fit))

    def shrink_products(self, points: int | None) -> None:
        """Keep ``points`` (what an out-of-memory retry settled on) for the rest of the run."""
        self.points_per_product_pass = points

    def minimum(self, phase: str, how: str = "completeness") -> tuple[int, str]:
        """The bytes one sample needs at least in ``phase``, and what they are."""
        fmt = format_size
        if phase == SPECTRUM:
            graph = FOOTPRINT_FACTOR * self.product_point_bytes
            if self.spectral != "iterative":
                return 0, ""
            steps = min(self.d, KRYLOV_MIN_STEPS)
            basis = basis_bytes(self.d, KRYLOV_MIN_STEPS)
            return (basis + graph,
                    f"a Krylov basis of {steps} steps, {fmt(basis)}, and one "
                    f"point's graph, {fmt(graph)}")
        if phase == ATTRIBUTION:
            need = VALUE_FACTOR * self.activation
            return need, f"one point's activations, {fmt(need)}"
        if phase == LABEL:
            held, per_class = self.label_bytes(how)
            return (held + per_class, f"the logit Jacobian and its Golub-Kahan bases, "
                    f"{fmt(held)}, and one class, {fmt(per_class)}")
        if phase == ATTACK:
            copies = ATTACK_COPIES * self.d * self.itemsize
            graph = FOOTPRINT_FACTOR * self.second_order_point_bytes
            return (copies + graph, f"its copies of the sample, {fmt(copies)}, and one "
                    f"point's second-order graph, {fmt(graph)}")
        if phase == NOISE:
            return 0, ""
        raise ValueError(f"unknown phase {phase!r}")

    def require(self, phases: tuple[str, ...], how: str = "completeness") -> None:
        """Refuse, before the work, a budget in which one sample does not fit ``phases``.

        Raises:
            MemoryBudgetError: naming the phase, what it holds and the budget it needs.
        """
        if self.ceiling is None:
            return
        needs = {phase: self.minimum(phase, how) for phase in phases}
        phase, (need, what) = max(needs.items(), key=lambda item: item[1][0])
        if need <= self.ceiling:
            return
        asked = self.ceiling == self.budget
        have = (f"the memory budget of {format_size(self.ceiling)}" if asked
                else f"the {format_size(self.ceiling)} of memory free")
        raise MemoryBudgetError(
            f"{have} cannot hold one sample: {_NAMES[phase]} needs about "
            f"{format_size(need)} ({what}): "
            + (f"give --memory-budget {format_size(need * 1.1)} or more" if asked
               else "use smaller inputs or a machine with more memory"))


def _graphs(model: Model, x: Tensor, attribution: Attribution, target: Tensor) -> tuple[int, int]:
    """One point's ``"curvature"`` and ``"double_vjp"`` graphs (the second estimated as twice
    the first for a model autograd cannot take that far), refused when one alone needs
    more than the memory free on the device (a CPU process that outgrows it is killed by
    the system, not warned). An accelerator that runs out of memory on one point's graph is
    one clear error (:func:`attrcert.memory.halving` at one sample)."""
    product, _ = halving(lambda _: point_bytes(attribution, model, x, target, graph="curvature"),
                         1, device=x.device, what="sample per batch")
    try:
        second = point_bytes(attribution, model, x, target, graph="double_vjp")
    except (RuntimeError, InputError) as exc:  # a model autograd cannot take that far (or
        if is_out_of_memory(exc):  # an accelerator out of room for it): the passes that
            release_cached(x.device)  # need it say so when they run; an estimate sizes them
        second = 2 * product
    free = free_memory(x.device)
    need = FOOTPRINT_FACTOR * product  # every path holds it; the second-order graph is the
    if need > free:  # attack's, which require(ATTACK) checks when there is one
        raise MemoryBudgetError(
            f"one point of {attribution.name} needs about {format_size(need)} for its "
            f"attribution graph, more than the {format_size(free)} free on {x.device}: use "
            "smaller inputs, --dtype float32 or a machine with more memory")
    return product, second


def plan_run(model: Model, x: Tensor, attribution: Attribution, solver: SolverOptions,
             p: float | None, target: Tensor | None, classes: int) -> RunPlan:
    """The plan of a run on ``x`` (model and inputs placed) for ``solver``'s budget
    (``None``: :func:`attrcert.memory.default_budget`), the ball's norm ``p`` (``None``:
    work without ``J``, as smoothing), the first sample's class ``target`` (``(1,)``, for
    the graphs measured on it; ``None``: work without ``J``) and the model's ``classes``.

    Sizes the user gave are kept. ``spectral="auto"`` for l-inf forms ``J`` only where it
    fits the budget (else ``sum |P_ij|`` blocked, ``O(chunk d)`` memory); ``"full"`` that
    cannot fit even one sample is refused before any pass runs. The matrix-free products
    hold the points their measured graph allows beside the Krylov basis.
    """
    given = solver.memory_budget is not None
    budget = (parse_size(solver.memory_budget) if solver.memory_budget is not None
              else default_budget(x.device))
    d, points = x[0].numel(), attribution.points
    activation = activation_bytes(model, x)
    common = {"budget": budget, "ceiling": budget if given else free_memory(x.device),
              "points": points, "d": d, "itemsize": x.element_size(), "classes": classes,
              "activation": activation}
    if p is None or target is None:
        return RunPlan(spectral=None, **common)  # type: ignore[arg-type]
    how = resolve_spectral(solver.spectral, d, p)

    def estimate_for(path: str) -> Plan:
        return plan(budget, d=d, steps=points, activation=activation,
                    itemsize=x.element_size(), spectral=path,
                    default_batch=solver.batch_size or default_batch_size(x.device))

    estimate = estimate_for(how)
    blocked = False
    if how == "full" and not estimate.full_fits:
        if solver.spectral != "auto":
            raise MemoryBudgetError(
                f"the full Jacobian path needs about {format_size(estimate.full_bytes)} per "
                f"sample (d = {d}), over the memory budget of {format_size(budget)}: use "
                "--spectral iterative or a larger --memory-budget")
        how, blocked = "iterative", True
        estimate = estimate_for(how)
    batch = solver.batch_size or estimate.batch_size
    rows = solver.chunk_size or min(estimate.chunk_size,
                                     default_chunk_size(attribution, x[:batch]))
    product, second = _graphs(model, x, attribution, target)
    per_pass = None
    if how == "iterative" and points > 1:
        room = budget - basis_bytes(d)
        fit = max(1, room // max(1, FOOTPRINT_FACTOR * product))
        per_pass = None if fit >= points else int(fit)
    together = 1
    if how == "iterative" and per_pass is None and lockstep_pays(x.device, points * d):
        together = lockstep_samples(budget, d=d, points=points, point_bytes=product,
                                    batch=int(batch))
    return RunPlan(spectral=how, abs_sum_blocked=blocked, samples_per_batch=int(batch),
                   rows_per_pass=int(rows), points_per_product_pass=per_pass,
                   samples_per_product_pass=together,
                   product_point_bytes=product, second_order_point_bytes=second,
                   full_bytes=estimate.full_bytes, **common)


def basis_bytes(d: int, steps: int = KRYLOV_STEPS) -> int:
    """One sample's Krylov basis after ``steps`` steps (at most ``d``): ``KRYLOV_VECTORS``
    float64 vectors of ``d`` per step."""
    return 8 * KRYLOV_VECTORS * d * min(d, steps)


def lockstep_pays(device: torch.device, width: int) -> bool:
    """Whether samples whose pass holds ``width`` values each (points times ``d``) gain
    from sharing the spectrum's passes on ``device``: always on an accelerator, on a CPU
    up to :data:`LOCKSTEP_CPU_MAX_WIDTH`."""
    return device.type != "cpu" or width <= LOCKSTEP_CPU_MAX_WIDTH


def lockstep_samples(budget: int | None, *, d: int, points: int, point_bytes: int,
                     batch: int) -> int:
    """Samples of a batch whose spectra fit in lockstep (each its Krylov basis and all its
    points' graphs, :func:`attrcert.spectral.top_singulars`), 1 to ``batch``."""
    if budget is None:
        return batch
    each = basis_bytes(d) + FOOTPRINT_FACTOR * point_bytes * points
    return int(max(1, min(batch, budget // max(1, each))))
