"""Building zoo models and writing them as users do: a ``torch.export`` archive with a
dynamic batch or, as torch's docs export, a static one; a TorchScript trace; the weights as
safetensors for ``--arch``."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .registry import Entry, entry
from .weights import seeded

__all__ = ["build", "export_pt2", "export_static", "export_torchscript", "inputs",
           "save_weights"]


def _library_model(arch: str, classes: int) -> nn.Module:
    """What ``--arch`` builds for ``arch`` (``timm:NAME(key=value, ...)``,
    ``torchvision:NAME``), untrained, with ``classes`` classes."""
    from attrcert.loading.libraries import parse_library_arch

    spec = parse_library_arch(arch)
    if spec is None:
        raise ValueError(f"{arch!r} names no model library")
    kwargs = dict(spec.kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.library == "timm":
            import timm

            return timm.create_model(spec.name, pretrained=False, num_classes=classes,
                                     **kwargs)
        from torchvision import models  # type: ignore[import-untyped]

        return models.get_model(spec.name, weights=None, num_classes=classes, **kwargs)


def build(model: str | Entry, size: int, classes: int, seed: int = 0) -> nn.Module:
    """The zoo model ``model`` (an entry or its key) for ``size`` x ``size`` inputs with
    ``classes`` classes: seeded, eval mode, frozen, with random BatchNorm statistics and,
    for library models, what their initialisation leaves at zero drawn at random
    (:func:`zoo.weights.seeded`)."""
    found = entry(model) if isinstance(model, str) else model
    how = found.sizes[size]
    if isinstance(how, str):
        return seeded(lambda: _library_model(how, classes), seed, revived=True)
    return seeded(lambda: how(classes), seed)


def inputs(n: int, size: int, seed: int = 0, channels: int = 3) -> Tensor:
    """``n`` seeded random images ``(n, channels, size, size)`` in ``[0, 1]``."""
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def export_pt2(model: nn.Module, example: Tensor, path: Path) -> Path:
    """``torch.export`` with a dynamic batch dimension, saved as ``.pt2``."""
    batch = torch.export.Dim("batch")
    two = example[:1].expand(2, *example.shape[1:]) if example.shape[0] == 1 else example
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (two,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    return path


def export_static(model: nn.Module, size: int, path: Path, channels: int = 3) -> Path:
    """``torch.export.export(model, (torch.randn(1, 3, S, S),))``, as torch's docs export:
    the batch is fixed at 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (torch.randn(1, channels, size, size),))
    torch.export.save(program, path)
    return path


def export_torchscript(model: nn.Module, example: Tensor, path: Path, *,
                       fastpath: bool = False) -> Path:
    """``torch.jit.trace`` saved as TorchScript. Traced in eval mode,
    ``nn.TransformerEncoderLayer`` records its fused inference fast path, which has no
    derivative; ``fastpath=False`` traces with it off (what attrcert's error tells a user
    to do), ``True`` as a plain trace does."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(fastpath)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example)
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
    traced.save(str(path))
    return path


def save_weights(model: nn.Module, path: Path) -> Path:
    """The state dict as safetensors (each tensor its own contiguous copy: safetensors
    refuses shared storage)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
              str(path))
    return path
