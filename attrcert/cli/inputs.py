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
    PRESETS,
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
from ..loading.smoothing import beta_smooth, differentiable_hard
from ..results import ASSUMPTION, OUTPUT_SUFFIXES, Record
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

    def fields(self, rec: Record) -> None:
        """Add ``predicted_smoothed``, ``smoothed_agrees`` and ``beta_smooth`` to a record
        right after ``predicted``, which becomes the original model's prediction."""
        original = self.predictions[int(rec["index"])]
        items = list(rec.items())
        rec.clear()
        for key, value in items:
            rec[key] = value
            if key == "predicted":
                rec.update(predicted=original, predicted_smoothed=value,
                           smoothed_agrees=original == value, beta_smooth=self.beta)


def floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise OptionError(f"--{name} {text!r}: give numbers separated by commas") from None
    if not values:
        raise OptionError(f"--{name} is empty: give one number per channel")
    return values


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
        except Exception as exc:  # the model's own error: say which shape it was given
            raise InputError(f"the model fails on images of shape "
                             f"{tuple(images.tensor.shape[1:])}: {exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if out.ndim != 2 or out.shape[0] != 1:
        raise InputError(f"the model returned shape {tuple(out.shape)} for one image: "
                         "attrcert needs logits of shape (N, k)")
    if not torch.isfinite(out).all():
        raise nonfinite(opts.model, images.sources[0 if rows is None else rows[0]])
    k = int(out.shape[1])
    target = (load_labels(opts.labels, images.sources, num_classes=k) if opts.labels
              else _folder_labels(images, opts.images, k))
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
    return Loaded(model, images, target, baseline, nonsmooth, rows, smoothing)


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


def smoothing_notes(opts: Common, loaded: Loaded) -> list[str]:
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


def _folder_labels(images: Images, folder: Path, k: int) -> torch.Tensor | None:
    """The labels of class folders, checked against the model's ``k`` classes."""
    if images.labels is None:
        return None
    top = int(images.labels.max())
    if top >= k:
        where = images.sources[int(images.labels.argmax())]
        raise InputError(f"{folder}: the class folder of {where} means label {top}, but the "
                         f"model has {k} classes (class folders are numbered in sorted order, "
                         "or by their names when all are integers): pass --labels FILE.csv")
    return images.labels


def normalization(opts: Common) -> tuple[list[float] | None, list[float] | None]:
    """``--mean`` / ``--std``, else the preset's."""
    mean, std = floats(opts.mean, "mean"), floats(opts.std, "std")
    if (mean is None) != (std is None):
        raise OptionError("give --mean and --std together")
    if mean is None and opts.preset is not None:
        preset = PRESETS[opts.preset.value]
        mean, std = list(preset.mean), list(preset.std)
    return mean, std


def nonfinite(model: Path, source: str) -> InputError:
    return InputError(f"model {model} returns logits that are not finite (NaN or infinite) "
                      f"for {source}: check its weights and its input range; such a model "
                      "cannot be certified")


def run_config(opts: Common, command: str, loaded: Loaded) -> dict[str, Any]:
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
        "mean": normalization(opts)[0],
        "std": normalization(opts)[1],
        **({"preset": opts.preset.value} if opts.preset is not None else {}),
        **({"geometry": opts.geometry_config()} if not opts.geometry().identity else {}),
        "device": opts.device,
        "dtype": opts.dtype.value,
        "spectral": opts.spectral.value,
        "tol": opts.tol,
        **({"beta_smooth": loaded.smoothing.beta,
            "beta_smoothed_ops": loaded.smoothing.smoothed_ops} if loaded.smoothing else {}),
        "smooth": not loaded.nonsmooth,
        "nonsmooth_ops": loaded.nonsmooth,
        "assumption": ASSUMPTION,
        "attack_checked": False,
        **opts.extra_config,
    }


def input_shape(net: torch.nn.Module, images: Path | None,
                size: tuple[int, int] | None) -> tuple[int, ...]:
    """``(C, H, W)`` the model takes: from ``images``, the exported graph, or ``size``."""
    if images is not None:
        geometry = Geometry(size=size)
        channels = folder_channels(net, images, geometry)
        return tuple(load_images(images, channels=channels, geometry=geometry).tensor.shape[1:])
    for node in getattr(getattr(net, "graph", None), "nodes", []):
        val = node.meta.get("val") if hasattr(node, "meta") else None
        if node.op == "placeholder" and isinstance(val, torch.Tensor) and val.ndim == 4:
            return tuple(int(s) for s in val.shape[1:])
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

