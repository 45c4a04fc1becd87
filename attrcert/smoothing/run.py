""":func:`smooth`: certify smoothed attributions of any model, image by image.

For each image: the attribution ``g(x)``; ``n`` noisy copies uniform in the l2 ball of
radius ``r`` whose attributions, each scaled or clipped to norm ``<= M``, average to
``h_hat(x)``; the certificate of :mod:`~attrcert.smoothing.certificate`; with a tolerance,
the largest eps and the smallest ``r``; with :class:`~.options.PixelOptions`, ``n`` Gaussian
copies and the certified bin map of :mod:`~attrcert.smoothing.pixels`. Copies go through the
model as many at a time as the run's plan holds
(:meth:`attrcert.plan.RunPlan.copies_per_noise_pass`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..attributions import Model
from ..document import Record
from ..errors import ModelOutputError
from ..progress import ATTRIBUTION, NOISE, as_progress, tick
from ..run import NO_HOOKS, Hooks, Run, RunInputs, prepare_run
from ..settings import AttributionSpec, SolverOptions, resolve
from .options import LimitOptions, PixelOptions, SmoothingOptions, check_selection
from .pixels import bins, certify_bins, pixel_tau, plane
from .records import smoothing_record
from .sampling import attribution_fn, bounded, image_digest, noisy_attributions

__all__ = ["SmoothedSample", "smooth", "smooth_run"]

Progress = Callable[..., None]


@dataclass(frozen=True)
class SmoothedSample:
    """One image's tensors, for ``--save-attributions`` and the report (CPU, float32).

    Attributes:
        image: ``x`` ``(C, H, W)``.
        attribution: ``g(x)`` ``(C, H, W)``.
        smoothed: ``h_hat(x)`` ``(C, H, W)``.
        certified: the certified bin map ``(H, W)`` (-1: abstain), or ``None``.
        clean_bins: the bins of ``g(x)`` itself ``(H, W)``, or ``None``.
    """

    image: Tensor
    attribution: Tensor
    smoothed: Tensor
    certified: Tensor | None
    clean_bins: Tensor | None


OnSample = Callable[[list[Record], SmoothedSample], None]


def _finite(chunk: Tensor, index: int, where: str) -> Tensor:
    if not torch.isfinite(chunk).all():
        raise ModelOutputError(f"the attribution is not finite at {where} of sample {index}: "
                               "it cannot be smoothed", index)
    return chunk


def smooth(
    model: Model,
    x: Tensor,
    *,
    options: SmoothingOptions,
    pixels: PixelOptions | None = None,
    limits: LimitOptions | None = None,
    attribution: AttributionSpec | None = None,
    solver: SolverOptions | None = None,
    progress: Progress | None = None,
    on_batch: OnSample | None = None,
    collect: OnSample | None = None,
    **shortcuts: Any,
) -> list[Record]:
    """Certify the uniformly smoothed attribution of each image (Wang & Kong 2024), and with
    ``pixels`` its Gaussian-smoothed bin map (Anani et al. 2025): records as described in
    :func:`attrcert.smoothing.records.smoothing_record`.

    Holds for any model (ReLU, max-pooling ...) and any attribution: the guarantees are
    about the *smoothed* attribution ``h``, with probability ``>= 1 - alpha`` over the noise
    (each of the two certificates on its own).

    Args:
        model: classifier returning logits ``(N, k)``.
        x: images ``(N, C, H, W)`` in the units ``eps``, ``r`` and ``sigma`` are measured in.
        options, pixels, limits: what to certify (:mod:`attrcert.smoothing.options`).
        attribution, solver: as for :func:`attrcert.certify` (of the solver only
            ``memory_budget``, ``device`` and ``dtype`` matter).
        progress: called with ``("noise samples", done, samples per image)``
            (:mod:`attrcert.progress`).
        on_batch, collect: called with each image's record (in a list) and its
            :class:`SmoothedSample` as soon as it is done, ``on_batch`` first.
        **shortcuts: fields of :class:`~attrcert.settings.AttributionSpec` and
            :class:`~attrcert.settings.SolverOptions` by name.
    """
    spec, solver = resolve(attribution, solver, shortcuts, "smooth")
    check_selection(options, pixels)
    run = prepare_run(RunInputs(model, x, spec, solver), None)
    return smooth_run(run, options, pixels=pixels, limits=limits,
                      hooks=Hooks(as_progress(progress), on_batch), collect=collect)


def smooth_run(run: Run, options: SmoothingOptions, *, pixels: PixelOptions | None = None,
               limits: LimitOptions | None = None, hooks: Hooks = NO_HOOKS,
               collect: OnSample | None = None) -> list[Record]:
    """:func:`smooth` on a prepared run (one without the Jacobian: ``prepare_run(inputs,
    None)``), with its value objects; image by image, each image's logits checked when it
    comes.

    Raises:
        MemoryBudgetError: before the work, when one image does not fit the budget.
    """
    run.plan.require((ATTRIBUTION, NOISE))
    model, x, method = run.model, run.x, run.attribution
    copies, points = run.plan.copies_per_noise_pass(options.samples, options.samples_per_pass,
                                                    pixels is not None)
    total = options.samples * (2 if pixels is not None else 1)
    step = tick(hooks.progress, NOISE)
    records = []
    for i in range(x.shape[0]):
        start = time.perf_counter()
        index = run.indices[i]
        with torch.no_grad():
            logits = model(x[i : i + 1])
        if not bool(torch.isfinite(logits).all()):
            raise ModelOutputError(f"the model returned logits that are not finite for sample "
                                   f"{index}", index)
        predicted = int(logits[0].argmax())
        target = predicted if run.targets is None else int(run.targets[i])
        fn = attribution_fn(model, method, target, points)
        digest = image_digest(x[i], target, options.seed)
        g = _finite(fn(x[i : i + 1]).reshape(1, -1).to("cpu", torch.float64), index, "x")

        def report(done: int, offset: int = 0) -> None:
            if step is not None:
                step(offset + done, total)

        h_sum = torch.zeros(x[i].numel(), dtype=torch.float64)
        zeros = 0
        for chunk in noisy_attributions(fn, x[i], kind="uniform", scale=options.radius,
                                        samples=options.samples, digest=digest,
                                        per_pass=copies, progress=report):
            _finite(chunk, index, "a noisy copy")
            zeros += int((chunk.norm(dim=1) == 0).sum())
            for row in bounded(chunk, options.bound, options.clip is not None):
                h_sum += row  # one row at a time: the same sum however the passes are cut
        smoothed = h_sum / options.samples
        cert, clean_bins = None, None
        if pixels is not None:
            shape = x.shape[1:]
            sample_bins = torch.cat([
                bins(plane(_finite(chunk, index, "a noisy copy"), shape), pixels.top_k)
                for chunk in noisy_attributions(
                    fn, x[i], kind="gaussian", scale=pixels.sigma, samples=options.samples,
                    digest=digest, per_pass=copies,
                    progress=lambda done: report(done, options.samples))])
            cert = certify_bins(sample_bins, selection=pixels.selection,
                                tau=pixel_tau(options.eps, pixels.sigma),
                                alpha=options.alpha, correction=pixels.correction,
                                levels=pixels.levels)
            clean_bins = bins(plane(g, shape), pixels.top_k)[0]
        rec = smoothing_record(
            sample=run.sample(index, target, predicted), method=method.name,
            options=options, d=x[i].numel(), attr_norm=float(g.norm()),
            h_norm=float(smoothed.norm()), zero_attributions=zeros, limits=limits,
            pixels=pixels, pixel_certificate=cert)
        rec["seconds"] = time.perf_counter() - start
        records.append(rec)
        hw = x.shape[2:]
        sample = SmoothedSample(
            image=x[i].detach().to("cpu", torch.float32),
            attribution=g.reshape(x.shape[1:]).float(),
            smoothed=smoothed.reshape(x.shape[1:]).float(),
            certified=None if cert is None else cert.certified.reshape(hw),
            clean_bins=None if clean_bins is None else clean_bins.reshape(hw))
        for hook in (hooks.on_batch, collect):
            if hook is not None:
                hook([rec], sample)
    return records
