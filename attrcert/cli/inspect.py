"""``attrcert inspect``: a model's format, input shape, classes and smoothness report."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import torch
import typer

from ..document import dumps_strict
from ..errors import InputError, one_line
from ..loading import sniff_model, with_normalization
from ..loading.batching import batched, static_batch_of
from ..loading.model_checks import check_logits
from ..smoothness import find_nonsmooth, nonsmooth_message
from ..writing import stdout_to_stderr, write_stdout
from .inputs import input_shape, load_model_reporting
from .options import (
    ArchOpt,
    CropOpt,
    Format,
    FormatOpt,
    MeanOpt,
    ModelArg,
    PresetOpt,
    ResizeOpt,
    SizeOpt,
    StdOpt,
    TrustOpt,
)
from .output import print_stdout, terminal_safe
from .preprocessing import resolve_preprocessing


def inspect(
    model: ModelArg,
    images: Annotated[Path | None, typer.Argument(
        help="Optional images, to know the input shape of a TorchScript model.",
        show_default=False)] = None,
    size: SizeOpt = None,
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    preset: PresetOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    arch: ArchOpt = None,
    trust_pickle: TrustOpt = False,
    format: FormatOpt = Format.table,
) -> None:
    """Describe a model: format, input shape, classes, preprocessing, and the smoothness
    report.

    Example: attrcert inspect sample_models/digits_relu_maxpool.pt2
    """
    pre = resolve_preprocessing(preset=preset.value if preset is not None else None,
                                arch=arch, mean=mean, std=std, size=size, resize=resize,
                                crop=crop)
    with stdout_to_stderr():  # what the model prints must not mix with the results
        net = load_model_reporting(model, arch, trust_pickle)
        if pre.mean is not None and pre.std is not None:
            net = with_normalization(net, pre.mean, pre.std)
        shape = input_shape(net, images, pre.geometry, model)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            example = torch.zeros(1, *shape)
            try:
                out = net(example)
            except InputError:  # a static-shape export names the shape it needs
                raise
            except Exception as exc:  # the model's own error: one line, with the shape it got
                raise InputError(f"the model fails on an input of shape {tuple(shape)}: "
                                 f"{one_line(exc)}") from None
        check_logits(out, 1, model, ["an input of zeros"])
        net = batched(net, example)
        ops = find_nonsmooth(net, example)
    info: dict[str, object] = {
        "model": str(model),
        "format": sniff_model(model),
        "input_shape": list(shape),
        "classes": int(out.shape[-1]),
        "parameters": sum(p.numel() for p in net.parameters()),
        "preprocessing": pre.describe(),
        "static_batch": static_batch_of(net),
        "smooth": not ops,
        "nonsmooth_ops": ops,
    }
    if format is Format.json:
        write_stdout(dumps_strict(info, indent=2) + "\n")
        return
    shown = {k: v for k, v in info.items() if k != "static_batch" or v is not None}
    lines = [terminal_safe(f"{key:>14}: "
                           f"{', '.join(ops) or 'none' if key == 'nonsmooth_ops' else value}")
             for key, value in shown.items()]
    lines.append(f"warning: {nonsmooth_message(ops)}" if ops else
                 "no non-smooth operations found: the bounds' smoothness assumption can hold "
                 "(local linearity still depends on eps)")
    print_stdout(*lines)
