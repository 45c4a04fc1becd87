"""What a command loads, checked against each other: the model (with its warnings as one
line each on stderr), the images (all, or one shard's), labels and baseline; and the
configuration that every record's ``config_hash`` digests."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..devices import check_device
from ..distributed import Shard, load_shard_images, shard_image_size
from ..document import ASSUMPTION
from ..errors import InputError, OptionError
from ..loading import (
    Geometry,
    Images,
    UntrustedPickleWarning,
    WeightsConvertedWarning,
    first_image_size,
    infer_input_channels,
    load_images,
    load_labels,
    load_model,
    sniff_model,
    with_normalization,
)
from ..loading.batching import (
    StaticBatch,
    batched,
    exported_input,
    static_batch_of,
    static_row_shape,
)
from ..loading.classes import folder_targets
from ..loading.model_checks import check_deterministic, check_logits, nonfinite_logits
from ..loading.smoothing import beta_smooth, differentiable_hard
from ..loading.torchscript_code import traced_input_shape
from ..run import BetaSmoothed
from ..settings import AttributionSpec, SolverOptions
from ..smoothness import find_nonsmooth
from .files import check_output_paths, input_digests
from .options import CommandOptions, Method
from .output import err


@dataclass
class Loaded:
    """What a command loaded, checked against each other: the model (its logits checked on
    the first images: ``classes`` of them; its non-smooth operations found once), the
    images, the targets of all images (``None``: the predictions) and the baseline."""

    model: torch.nn.Module
    images: Images
    target: torch.Tensor | None
    baseline: torch.Tensor | None
    nonsmooth: list[str]
    classes: int
    #: How class folders became targets (:func:`attrcert.loading.classes.folder_targets`).
    class_rule: str | None = None
    #: With a shard (``--shard``, torchrun): the indices among all images of the rows of
    #: ``images.tensor``, which holds only the shard; ``images.sources`` still names all.
    rows: list[int] | None = None
    #: With ``--beta-smooth``: ``model`` is the smoothed copy; what was smoothed and the
    #: original model's predictions.
    smoothing: Smoothing | None = None


@dataclass
class Smoothing:
    """``--beta-smooth``: ``beta``, the original model's operations that were smoothed, and
    its prediction for each image (by index among all images)."""

    beta: float
    smoothed_ops: list[str]
    predictions: dict[int, int]

    def smoothed(self) -> BetaSmoothed:
        """What the records say of it (:meth:`attrcert.run.Run.sample`): ``predicted`` the
        original model's prediction, then ``predicted_smoothed``, ``smoothed_agrees`` and
        ``beta_smooth``."""
        return BetaSmoothed(self.beta, self.predictions)


def folder_channels(model: torch.nn.Module, images: Path, geometry: Geometry,
                    shard: Shard | None = None) -> int | None:
    """For a folder of images, the channel count the model accepts (1 or 3, by a trial
    forward at the size the first image (of the shard) has after ``geometry``);
    ``None`` for tensor files, which keep their own."""
    if not images.is_dir():
        return None
    raw = first_image_size(images) if shard is None else shard_image_size(images, shard)
    height, width = geometry.output(*raw)
    row = static_row_shape(model)
    if row is not None and len(row) == 3:
        if (height, width) != row[1:]:
            raise InputError(f"the model was exported for {row[1]}x{row[2]} inputs, but the "
                             f"images are {height}x{width} after preprocessing: pass --size "
                             f"{row[1]} {row[2]} (or the --resize/--crop that give it)")
        return row[0]
    channels = infer_input_channels(model, height, width)
    if channels is None:
        raise InputError(f"the model accepts neither 1- nor 3-channel images of "
                         f"{height}x{width}: pass --size H W or a tensor file")
    return channels


def load_model_reporting(path: Path, arch: str | None, trust_pickle: bool) -> torch.nn.Module:
    """:func:`load_model`, with its warnings (``--trust-pickle``) as one line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UntrustedPickleWarning)
        warnings.simplefilter("always", WeightsConvertedWarning)
        model = load_model(path, arch=arch, trust_pickle=trust_pickle)
    for w in caught:
        err.print(f"warning: {w.message}")
    return model


def load_inputs(opts: CommandOptions, shard: Shard | None = None) -> Loaded:
    """Model, images, labels and baseline, checked against each other; with ``shard``,
    only the shard's images (:func:`attrcert.distributed.load_shard_images`)."""
    check_output_paths(opts, shard)
    if opts.device != "auto":
        check_device(opts.device)
    model = load_model_reporting(opts.model, opts.arch, opts.trust_pickle)
    mean, std = normalization(opts)
    if mean is not None and std is not None:
        model = with_normalization(model, mean, std)
    geometry = opts.geometry()
    channels = folder_channels(model, opts.images, geometry, shard)
    rows = None
    if shard is None:
        images = load_images(opts.images, channels=channels, geometry=geometry,
                             value_range=opts.value_range)
    else:
        images, rows = load_shard_images(opts.images, shard, channels=channels,
                                         geometry=geometry, value_range=opts.value_range)
    k = trial_forward(model, images, rows, opts.model)
    model = batched(model, images.tensor[:1])
    note_static_batch(model, opts.model)
    rule = None
    if opts.labels:
        target = load_labels(opts.labels, images.sources, num_classes=k)
    elif images.labels is not None and images.classes is not None:
        folders = folder_targets(images.classes, images.sources, k, opts.images)
        target, rule = folders.targets, folders.rule
    else:
        target = None
    baseline = None
    if opts.baseline != "zero":
        if opts.method is not Method.integrated_gradients:
            raise OptionError("--baseline applies only to --method integrated_gradients")
        base = load_images(Path(opts.baseline), geometry=geometry, channels=channels,
                           value_range=opts.value_range).tensor
        if base.shape[0] != 1 or base.shape[1:] != images.tensor.shape[1:]:
            raise InputError(f"--baseline {opts.baseline} has shape {tuple(base.shape)}: "
                             f"need one image of shape {tuple(images.tensor.shape[1:])}")
        baseline = base[0]
    nonsmooth = find_nonsmooth(model, images.tensor[:1])
    smoothing = None
    if opts.beta_smooth is not None:
        smoothing = _original_predictions(model, images, rows, opts.beta_smooth, nonsmooth)
        if target is None:  # the smoothed net explains the class the original predicts
            target = torch.zeros(len(images.sources), dtype=torch.long)
            for index, label in smoothing.predictions.items():
                target[index] = label
        model = beta_smooth(model, opts.beta_smooth, images.tensor[:2])
        nonsmooth = find_nonsmooth(model, images.tensor[:1])
    elif any(op.startswith("Hardsigmoid") for op in nonsmooth):  # its backward has no
        model = differentiable_hard(model, images.tensor[:1])  # derivative: rewritten
    return Loaded(model, images, target, baseline, nonsmooth, k, class_rule=rule, rows=rows,
                  smoothing=smoothing)


def _original_predictions(model: torch.nn.Module, images: Images, rows: list[int] | None,
                          beta: float, nonsmooth: list[str]) -> Smoothing:
    """The original model's prediction for each loaded image, 16 at a time (one at a time
    for a model exported with a fixed batch size)."""
    x = images.tensor
    preds: list[int] = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, x.shape[0], 16):
            part = x[start: start + 16]
            try:
                out = model(part)
            except Exception:
                out = torch.cat([model(part[i: i + 1]) for i in range(part.shape[0])])
            preds.extend(int(p) for p in out.argmax(1))
    indices = rows if rows is not None else range(x.shape[0])
    return Smoothing(beta, list(nonsmooth), dict(zip(indices, preds, strict=True)))


#: The non-smooth operations (:func:`find_nonsmooth`'s names) that make a network piecewise
#: linear, and that ``--beta-smooth`` smooths.
PIECEWISE_LINEAR = ("ReLU", "LeakyReLU", "PReLU", "ReLU6", "Hardtanh", "clamp", "maximum",
                    "minimum", "max-pooling")


def smoothing_notes(opts: CommandOptions, loaded: Loaded) -> list[str]:
    """What a run says up front about what it explains (one line each, for stderr)."""
    if loaded.smoothing is not None:
        done = ", ".join(loaded.smoothing.smoothed_ops) or "nothing (no ReLU-like operation)"
        return [f"note: explaining the beta-smoothed copy of the model (beta = "
                f"{loaded.smoothing.beta:g}; smoothed: {done}): the bounds certify the "
                "smoothed explanation, not the original's, for the class the original "
                "model predicts (or --labels)"]
    kinks = [op for op in loaded.nonsmooth if op.startswith(PIECEWISE_LINEAR)]
    if opts.method is Method.saliency and kinks:
        return [f"note: saliency of a model with {', '.join(kinks)}: where it is piecewise "
                "linear, its Jacobian is zero almost everywhere and T_e = 0 says nothing "
                "(such samples are marked 'degenerate'); --beta-smooth BETA certifies a "
                "smoothed explanation"]
    return []


def trial_forward(model: torch.nn.Module, images: Images, rows: list[int] | None,
                  path: Path) -> int:
    """The number of classes, from the model's logits for the first image (and for the first
    two, or the first twice, which shows a model that slices or reduces the batch, or gives
    the first image other logits), checked by :func:`check_logits` and
    :func:`check_deterministic`. A model that fails on two images is left to fail later."""
    names = [images.sources[i if rows is None else rows[i]]
             for i in range(min(2, images.tensor.shape[0]))]
    first = images.tensor[:1]
    pair = images.tensor[:2] if images.tensor.shape[0] >= 2 else torch.cat([first, first])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = model(first)
        except InputError:  # a static-shape export names the shape it needs
            raise
        except Exception as exc:  # the model's own error: say which shape it was given
            raise InputError(f"the model fails on images of shape "
                             f"{tuple(images.tensor.shape[1:])}: {exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        check_logits(out, 1, path, names[:1])
        try:
            two = model(pair)
        except Exception:  # a fixed batch size: certify reports it if it matters
            two = None
    if two is not None:
        check_logits(two, 2, path, names * 2 if len(names) == 1 else names)
        check_deterministic(out, two[:1], path)
    return int(out.shape[1])


def note_static_batch(model: torch.nn.Module, path: Path) -> None:
    """One line on stderr when ``model`` runs a fixed number of rows per call."""
    for module in model.modules():
        if isinstance(module, StaticBatch):
            rows = f"{module.batch} row{'s' if module.batch > 1 else ''}"
            err.print(f"note: {path} {module.reason}: attrcert runs it on chunks of {rows} "
                      "(batched by torch.vmap where that gives the numbers of calling it "
                      "chunk by chunk; see README 'Your model')")
            return


def normalization(opts: CommandOptions) -> tuple[list[float] | None, list[float] | None]:
    """``--mean`` / ``--std``, else the preset's, else the library's for ``--arch``."""
    pre = opts.preprocessing()
    return pre.mean, pre.std


def nonfinite(model: Path, source: str, what: str = "logits") -> InputError:
    return nonfinite_logits(model, source, what)


def run_config(opts: CommandOptions, loaded: Loaded, solver: SolverOptions, command: str,
               entries: dict[str, Any]) -> dict[str, Any]:
    """The run's configuration, which every record's ``config_hash`` digests: the inputs
    (their paths, their contents' digests), the preprocessing, what loading found, the
    attribution and ``solver`` options, then the ``entries`` of the command's value objects
    (:meth:`attrcert.cli.runner.Job.config`), which may override a common one."""
    pre, batch = opts.preprocessing(), static_batch_of(loaded.model)
    return {
        "command": command,
        "attrcert": __version__,
        "torch": torch.__version__,
        "model": str(opts.model),
        "model_format": sniff_model(opts.model),
        "images": str(opts.images),
        "samples": len(loaded.images.sources),
        "input_shape": list(loaded.images.tensor.shape[1:]),
        "method": opts.method.value,
        "steps": opts.steps if opts.method is Method.integrated_gradients else None,
        "baseline": opts.baseline if opts.method is Method.integrated_gradients else None,
        "labels": (str(opts.labels) if opts.labels else
                   "class folders" if loaded.images.labels is not None else None),
        **({"class_folders": loaded.class_rule} if loaded.class_rule else {}),
        "mean": pre.mean,
        "std": pre.std,
        **({"preset": pre.source} if pre.source else {}),
        **({"geometry": pre.geometry_config()} if not pre.geometry.identity else {}),
        **({"static_batch": batch} if batch is not None else {}),
        **({"input_range": opts.value_range} if opts.value_range != "unit" else {}),
        "device": solver.device,
        "dtype": solver.dtype,
        "spectral": solver.spectral,
        "tol": solver.tol,
        **({"beta_smooth": loaded.smoothing.beta,
            "beta_smoothed_ops": loaded.smoothing.smoothed_ops} if loaded.smoothing else {}),
        "smooth": not loaded.nonsmooth,
        "nonsmooth_ops": loaded.nonsmooth,
        "assumption": ASSUMPTION,
        "attack_checked": False,
        "sha256": input_digests(opts),
        **entries,
    }


def input_shape(net: torch.nn.Module, images: Path | None,
                geometry: Geometry, path: Path | None = None) -> tuple[int, ...]:
    """``(C, H, W)`` the model takes: from ``images`` (after ``geometry``), the exported
    graph, the size ``geometry`` gives, or the example input a traced TorchScript archive at
    ``path`` keeps."""
    if images is not None:
        channels = folder_channels(net, images, geometry)
        loaded = load_images(images, channels=channels, geometry=geometry, value_range="any")
        return tuple(loaded.tensor.shape[1:])  # the shape only: any values do
    for module in net.modules():
        shape = exported_input(module)
        if shape is not None and len(shape) == 4:
            return tuple(int(s) for s in shape[1:])
    size = geometry.crop or geometry.size
    if size is not None:
        channels = infer_input_channels(net, *size)
        if channels is not None:
            return (channels, *size)
    traced = traced_input_shape(path) if isinstance(net, torch.jit.ScriptModule) and path \
        else None
    if traced is not None and len(traced) == 4:
        return traced[1:]
    raise OptionError("cannot tell this model's input shape: pass IMAGES or --size H W")


def attribution_spec(opts: CommandOptions, loaded: Loaded) -> AttributionSpec:
    """The attribution of ``opts`` with the labels of all images as targets (select the
    samples a run takes with :meth:`~attrcert.settings.AttributionSpec.rows`)."""
    return AttributionSpec(method=opts.method.value, steps=opts.steps,
                           baseline=loaded.baseline, target=loaded.target)

