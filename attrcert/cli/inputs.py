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
from ..config import AttributionSpec
from ..distributed import Shard, load_shard_images, shard_image_size
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
from ..results import ASSUMPTION, OUTPUT_SUFFIXES
from ..smoothness import find_nonsmooth
from ..writing import check_output_path
from .options import Common, Method
from .output import err


@dataclass
class Loaded:
    model: torch.nn.Module
    images: Images
    target: torch.Tensor | None
    baseline: torch.Tensor | None
    nonsmooth: list[str]
    #: How class folders became targets (:func:`attrcert.loading.classes.folder_targets`).
    class_rule: str | None = None
    #: With a shard (``--shard``, torchrun): the indices among all images of the rows of
    #: ``images.tensor``, which holds only the shard; ``images.sources`` still names all.
    rows: list[int] | None = None


def check_output_paths(opts: Common) -> None:
    if opts.output is not None:
        check_output_path(opts.output, "--output")
        if opts.output.suffix.lower() not in OUTPUT_SUFFIXES:
            raise OptionError(f"--output {opts.output}: use a .json, .jsonl or .csv file")
    if opts.save_attributions is not None:
        check_output_path(opts.save_attributions, "--save-attributions")
        if opts.save_attributions.suffix.lower() != ".safetensors":
            raise OptionError("--save-attributions needs a .safetensors file name")


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


def load_inputs(opts: Common, shard: Shard | None = None) -> Loaded:
    """Model, images, labels and baseline, checked against each other; with ``shard``,
    only the shard's images (:func:`attrcert.distributed.load_shard_images`)."""
    check_output_paths(opts)
    model = load_model_reporting(opts.model, opts.arch, opts.trust_pickle)
    mean, std = normalization(opts)
    if mean is not None and std is not None:
        model = with_normalization(model, mean, std)
    geometry = opts.geometry()
    channels = folder_channels(model, opts.images, geometry, shard)
    rows = None
    if shard is None:
        images = load_images(opts.images, channels=channels, geometry=geometry)
    else:
        images, rows = load_shard_images(opts.images, shard, channels=channels,
                                         geometry=geometry)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = model(images.tensor[:1])
        except InputError:  # a static-shape export names the shape it needs
            raise
        except Exception as exc:  # the model's own error: say which shape it was given
            raise InputError(f"the model fails on images of shape "
                             f"{tuple(images.tensor.shape[1:])}: {exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if out.ndim != 2 or out.shape[0] != 1:
        raise InputError(f"the model returned shape {tuple(out.shape)} for one image: "
                         "attrcert needs logits of shape (N, k)")
    if not torch.isfinite(out).all():
        raise nonfinite(opts.model, images.sources[0 if rows is None else rows[0]])
    model = batched(model, images.tensor[:1])
    note_static_batch(model, opts.model)
    k = int(out.shape[1])
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
        base = load_images(Path(opts.baseline), geometry=geometry, channels=channels).tensor
        if base.shape[0] != 1 or base.shape[1:] != images.tensor.shape[1:]:
            raise InputError(f"--baseline {opts.baseline} has shape {tuple(base.shape)}: "
                             f"need one image of shape {tuple(images.tensor.shape[1:])}")
        baseline = base[0]
    nonsmooth = find_nonsmooth(model, images.tensor[:1])
    return Loaded(model, images, target, baseline, nonsmooth, class_rule=rule, rows=rows)


def note_static_batch(model: torch.nn.Module, path: Path) -> None:
    """One line on stderr when ``model`` runs a fixed number of rows per call."""
    for module in model.modules():
        if isinstance(module, StaticBatch):
            rows = f"{module.batch} row{'s' if module.batch > 1 else ''}"
            err.print(f"note: {path} {module.reason}: attrcert runs it on chunks of {rows} "
                      "(batched by torch.vmap where that gives the numbers of calling it "
                      "chunk by chunk; see README 'Your model')")
            return


def normalization(opts: Common) -> tuple[list[float] | None, list[float] | None]:
    """``--mean`` / ``--std``, else the preset's, else the library's for ``--arch``."""
    pre = opts.preprocessing()
    return pre.mean, pre.std


def nonfinite(model: Path, source: str) -> InputError:
    return InputError(f"model {model} returns logits that are not finite (NaN or infinite) "
                      f"for {source}: check its weights and its input range; such a model "
                      "cannot be certified")


def run_config(opts: Common, command: str, loaded: Loaded) -> dict[str, Any]:
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
        "device": opts.device,
        "dtype": opts.dtype.value,
        "spectral": opts.spectral.value,
        "tol": opts.tol,
        "smooth": not loaded.nonsmooth,
        "nonsmooth_ops": loaded.nonsmooth,
        "assumption": ASSUMPTION,
        "attack_checked": False,
        **opts.extra_config,
    }


def input_shape(net: torch.nn.Module, images: Path | None,
                geometry: Geometry) -> tuple[int, ...]:
    """``(C, H, W)`` the model takes: from ``images`` (after ``geometry``), the exported
    graph, or the size ``geometry`` gives."""
    if images is not None:
        channels = folder_channels(net, images, geometry)
        return tuple(load_images(images, channels=channels, geometry=geometry).tensor.shape[1:])
    for module in net.modules():
        shape = exported_input(module)
        if shape is not None and len(shape) == 4:
            return tuple(int(s) for s in shape[1:])
    size = geometry.crop or geometry.size
    if size is not None:
        channels = infer_input_channels(net, *size)
        if channels is not None:
            return (channels, *size)
    raise OptionError("cannot tell this model's input shape: pass IMAGES or --size H W")


def attribution_spec(opts: Common, loaded: Loaded, rows: list[int]) -> AttributionSpec:
    """The attribution of ``opts`` with the labels of the images at ``rows`` as targets."""
    target = loaded.target[rows] if loaded.target is not None else None
    return AttributionSpec(method=opts.method.value, steps=opts.steps,
                           baseline=loaded.baseline, target=target)

