"""Where a run computes: the device and dtype of the model and its inputs.

:func:`place` puts them there (copying a model that must move, so the caller's stays where
it was); :func:`prepare` also checks, once, that the model returns logits ``(N, k)``: the
check of the library's entry points (the CLI checks at load,
:func:`attrcert.loading.model_checks.check_logits`).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor

from .attributions import Model
from .errors import OptionError

__all__ = ["check_device", "output_classes", "place", "prepare", "resolve_device"]


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


def _runs_in(model: torch.nn.Module, x: Tensor, dtype: torch.dtype) -> None:
    """A model converted to ``dtype`` must run in it: a graph that fixes a dtype inside
    (an exported cast, timm's ViT with ``dynamic_img_size``) fails only when first called,
    so it is called once on one sample and refused in one line."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model(x)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            if not any(word in first.lower() for word in ("dtype", "scalar type", "double",
                                                          "float")):
                raise
            name = str(dtype).removeprefix("torch.")
            raise OptionError(f"the model does not run in {name} ({first}): its graph fixes "
                              "another dtype inside; use float32 (--dtype float32, the default)"
                              ) from None


def place(
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
            if dtype is not None and param.dtype != dtype and x.shape[0]:
                _runs_in(model, x[:1].detach().to(device=target_device, dtype=dtype), dtype)
        if dtype is None:
            dtype = param.dtype if param is not None else x.dtype
    x = x.detach().to(device=target_device, dtype=dtype or x.dtype)
    if not torch.isfinite(x).all():
        raise OptionError("the inputs contain NaN or infinite values")
    return model, x


def output_classes(model: Model, x: Tensor) -> Tensor:
    """The logits of ``x[:1]`` ``(1, k)``, checked to be what the bounds need: logits
    ``(N, k)``, one row per sample (their finiteness is checked sample by sample later)."""
    with torch.no_grad():
        out = model(x[:1])
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != 1 or out.shape[1] == 0:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise OptionError(f"the model returned shape {shape}: expected logits (N, k)")
    return out


def prepare(
    model: Model,
    x: Tensor,
    *,
    dtype: torch.dtype | str | None,
    device: torch.device | str | None,
) -> tuple[Model, Tensor]:
    """:func:`place`, then :func:`output_classes`: the library's entry points' preparation."""
    model, x = place(model, x, dtype=dtype, device=device)
    output_classes(model, x)
    return model, x
