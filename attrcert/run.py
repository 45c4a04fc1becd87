"""A run made ready: what :func:`attrcert.certify`, :func:`attrcert.max_eps`,
:func:`attrcert.smoothing.smooth` and the report share before their first sample.

Values flow one way. The caller (the library's entry points, or the CLI after loading)
gathers :class:`RunInputs`: the model and inputs, the value objects that say what to
attribute and how to solve (:class:`~attrcert.settings.AttributionSpec`,
:class:`~attrcert.settings.SolverOptions`), and what it already knows: each sample's index
among all, what every record starts with (:data:`Head`), the model's class count and
non-smooth operations (:class:`Checked`, which the CLI found at load), the original model's
predictions of a beta-smoothed copy (:class:`BetaSmoothed`). :func:`prepare_run` places the
model and inputs, checks what was not checked, and plans the passes
(:class:`~attrcert.plan.RunPlan`); the run's work then goes batch by batch
(:meth:`Run.batches`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .analysis import Analysis, analyse
from .attributions import Attribution, Model, get_method
from .devices import output_classes, place
from .document import Record
from .errors import OptionError
from .memory import halving
from .plan import RunPlan, plan_run
from .progress import Progress
from .settings import AttributionSpec, SolverOptions
from .smoothness import NonSmoothModelWarning, find_nonsmooth, nonsmooth_message

__all__ = ["NO_HOOKS", "BetaSmoothed", "Checked", "Head", "Hooks", "OnBatch", "Provenance",
           "Run", "RunInputs", "prepare_run"]

#: The fields a record starts with after ``index``, from the sample's index (the CLI's
#: ``source``, ``config_hash``, ``input_sha256``).
Head = Callable[[int], Record]
#: Called with each batch's records and what was computed for it (an
#: :class:`~attrcert.analysis.Analysis`; smoothing's ``SmoothedSample``), as soon as it is done.
OnBatch = Callable[[list[Record], Any], None]


@dataclass(frozen=True)
class BetaSmoothed:
    """The model certified is a beta-smoothed copy (``--beta-smooth``): ``beta``, and the
    original model's prediction of each sample, by its index among all."""

    beta: float
    predictions: Mapping[int, int]


@dataclass(frozen=True)
class Provenance:
    """What every record of a run says about what its numbers rest on.

    Attributes:
        method: the attribution method.
        nonsmooth: the operations that break twice-differentiability (docs/math.md).
        notes: warnings every record carries.
        smoothed: the original model's predictions, when the model is a beta-smoothed copy.
    """

    method: str
    nonsmooth: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    smoothed: BetaSmoothed | None = None


@dataclass(frozen=True)
class Checked:
    """What the caller checked about the model on these inputs before the run (the CLI at
    load): its class count ``k`` (its logits are ``(N, k)`` and finite at the first
    images) and its non-smooth operations (reported by the caller: the run neither runs
    :func:`~attrcert.smoothness.find_nonsmooth` again nor warns)."""

    classes: int
    nonsmooth: tuple[str, ...]


@dataclass(frozen=True)
class RunInputs:
    """What a run is given (module doc). ``indices``: each row's index among all samples
    (default ``0 .. N-1``)."""

    model: Model
    x: Tensor
    attribution: AttributionSpec = field(default_factory=AttributionSpec)
    solver: SolverOptions = field(default_factory=SolverOptions)
    indices: Sequence[int] | None = None
    checked: Checked | None = None
    head: Head | None = None
    smoothed: BetaSmoothed | None = None


@dataclass(frozen=True)
class Hooks:
    """Where a run reports: ``progress(phase, done, total)`` (:mod:`attrcert.progress`) and
    ``on_batch(records, analysis)`` after each batch."""

    progress: Progress | None = None
    on_batch: OnBatch | None = None


#: A run that reports nothing.
NO_HOOKS = Hooks()


@dataclass
class Run:
    """A run made ready (:func:`prepare_run`).

    Attributes:
        model, x: where they compute.
        attribution: the method.
        targets: ``(N,)`` classes, or ``None``: each sample's prediction.
        indices: each row's index among all samples.
        about: what every record says about what its numbers rest on.
        plan: how the passes are cut (owned by the run: out-of-memory lowers its sizes).
        tol: the iterative solver's relative tolerance.
        head: what every record starts with after ``index``.
    """

    model: Model
    x: Tensor
    attribution: Attribution
    targets: Tensor | None
    indices: list[int]
    about: Provenance
    plan: RunPlan
    tol: float
    head: Head | None = None

    def sample(self, index: int, target: int, predicted: int) -> Record:
        """A record's first fields: ``index``, the head's, ``target`` and ``predicted``
        (for a beta-smoothed copy, the original model's prediction, then
        ``predicted_smoothed``, ``smoothed_agrees`` and ``beta_smooth``)."""
        rec: Record = {"index": index, **(self.head(index) if self.head else {}),
                       "target": target}
        smoothed = self.about.smoothed
        if smoothed is None:
            rec["predicted"] = predicted
        else:
            original = int(smoothed.predictions[index])
            rec.update(predicted=original, predicted_smoothed=predicted,
                       smoothed_agrees=original == predicted, beta_smooth=smoothed.beta)
        return rec

    def analyse(self, sl: slice, progress: Progress | None) -> Analysis:
        """:func:`~attrcert.analysis.analyse` of the rows ``sl``."""
        return analyse(self.model, self.x[sl], self.attribution,
                       None if self.targets is None else self.targets[sl], self.plan,
                       tol=self.tol, progress=progress, indices=self.indices[sl],
                       probe_all=self.about.method == "saliency" and bool(self.about.nonsmooth))

    def batches(self, work: Callable[[slice], tuple[list[Record], object]],
                on_batch: OnBatch | None) -> list[Record]:
        """``work`` on consecutive slices of :attr:`RunPlan.samples_per_batch` rows, records
        in order. A slice that runs out of memory is retried with half as many samples
        (:func:`attrcert.memory.halving`), and the plan keeps the smaller size; results do
        not depend on the slicing."""
        records: list[Record] = []
        n, start = self.x.shape[0], 0
        while start < n:
            def one(size: int, first: int = start) -> tuple[list[Record], object]:
                return work(slice(first, min(n, first + size)))

            (batch, computed), self.plan.samples_per_batch = halving(
                one, self.plan.samples_per_batch, device=self.x.device,
                what="sample per batch")
            start = min(n, start + self.plan.samples_per_batch)
            records.extend(batch)
            if on_batch is not None:
                on_batch(batch, computed)
        return records


def prepare_run(inputs: RunInputs, p: float | None) -> Run:
    """The run of ``inputs`` (module doc) for a ball of norm ``p`` (which picks the
    spectral path; ``None``: work without the attribution's Jacobian, as smoothing).

    Without :attr:`RunInputs.checked`, the model's output is checked on the first sample
    (:func:`attrcert.devices.output_classes`) and, for work with ``J`` (``p`` given), its
    non-smooth operations are found and warned about
    (:class:`~attrcert.smoothness.NonSmoothModelWarning`), once."""
    spec, solver = inputs.attribution, inputs.solver
    model, x = place(inputs.model, inputs.x, dtype=solver.dtype, device=solver.device)
    n = x.shape[0]
    indices = list(range(n)) if inputs.indices is None else [int(i) for i in inputs.indices]
    if len(indices) != n:
        raise OptionError(f"{len(indices)} indices for {n} samples")
    if inputs.checked is None:
        first = output_classes(model, x)
        classes = int(first.shape[1])  # smoothing's guarantees hold for any model: no search
        nonsmooth = tuple(find_nonsmooth(model, x)) if p is not None else ()
    else:
        first, classes, nonsmooth = None, inputs.checked.classes, inputs.checked.nonsmooth
    notes = (nonsmooth_message(list(nonsmooth)),) if nonsmooth else ()
    if notes and inputs.checked is None:
        warnings.warn(notes[0], NonSmoothModelWarning, stacklevel=3)
    baseline = spec.baseline
    if baseline is not None:
        baseline = torch.as_tensor(baseline).to(dtype=x.dtype, device=x.device)
    attribution = get_method(spec.method, steps=spec.steps, baseline=baseline)
    targets = _targets(spec.target, n, x.device, classes)
    target = None
    if p is not None:  # the graphs are measured on the first sample's class
        if targets is not None:
            target = targets[:1]
        elif first is not None:
            target = first.argmax(1)
        else:
            with torch.no_grad():
                target = model(x[:1]).argmax(1)
    plan = plan_run(model, x, attribution, solver, p, target, classes)
    about = Provenance(spec.method, nonsmooth, notes, inputs.smoothed)
    return Run(model, x, attribution, targets, indices, about, plan, solver.tol, inputs.head)


def _targets(target: object, n: int, device: torch.device, classes: int) -> Tensor | None:
    """``(N,)`` classes from one class or one per sample, checked against the model's
    ``classes``; ``None`` (each sample's prediction) when none was given."""
    if target is None:
        return None
    t = torch.as_tensor(target, dtype=torch.long, device=device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise OptionError(f"target has shape {tuple(t.shape)}: give one class per sample ({n})")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= classes):
        raise OptionError(f"target classes must lie in 0..{classes - 1}")
    return t.clone()
