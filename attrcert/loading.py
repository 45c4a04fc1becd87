"""Loading models and images, by content rather than by file suffix.

Models: torch.export archives (``.pt2``) and TorchScript archives. Neither runs
pickled Python code when loaded. Pickled ``nn.Module`` files are refused (they run
code on load). Images: a folder of PNG/JPEG files (sorted by name) or one tensor file
(``.pt`` through ``torch.load(weights_only=True)``, ``.npy`` without pickles,
``.safetensors``) of shape ``(N, C, H, W)`` or ``(C, H, W)``, values in ``[0, 1]``.
"""

from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import InputError, LoadError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def sniff_model(path: Path) -> str:
    """``"export"``, ``"torchscript"``, ``"state_dict"``, ``"safetensors"`` or ``"unknown"``."""
    with path.open("rb") as fh:
        head = fh.read(16)
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if not zipfile.is_zipfile(path):
        return "unknown"
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if any(n.endswith("serialized_exported_program.json") or "/models/" in n
           or n.endswith("archive_format") for n in names):
        return "export"
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "state_dict"
    return "unknown"


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a classifier from a torch.export ``.pt2`` or a TorchScript archive.

    Raises :class:`LoadError` with what to do for anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"model file {path} does not exist")
    kind = sniff_model(path)
    try:
        if kind == "export":
            return torch.export.load(str(path)).module().to(device)
        if kind == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript is deprecated in torch >= 2.10
                return torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises many types for corrupt archives
        raise LoadError(f"cannot load model {path}: {exc.__class__.__name__}: {exc}") from None
    if kind in {"state_dict", "safetensors"}:
        raise LoadError(f"{path} holds weights only, not a model: export the model with "
                        "torch.export (.pt2) or TorchScript")
    raise LoadError(f"{path} is not a torch.export (.pt2) or TorchScript model archive")


@dataclass(frozen=True)
class Images:
    """A batch of images ``(N, C, H, W)`` in ``[0, 1]`` with one source name per image."""

    tensor: Tensor
    sources: list[str]


def load_images(path: str | Path) -> Images:
    """Images from a folder of PNG/JPEG files or one tensor file (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    if not path.is_file():
        raise InputError(f"images path {path} does not exist")
    tensor = _load_tensor_file(path)
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4:
        raise InputError(f"{path} holds a tensor of shape {tuple(tensor.shape)}: "
                         "expected (N, C, H, W) or (C, H, W)")
    tensor = tensor.float() if not tensor.is_floating_point() else tensor
    if not torch.isfinite(tensor).all():
        raise InputError(f"{path} contains NaN or infinite values")
    return Images(tensor, [f"{path.name}[{i}]" for i in range(tensor.shape[0])])


def _load_tensor_file(path: Path) -> Tensor:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if len(tensors) != 1:
                raise InputError(f"{path} holds {len(tensors)} tensors: expected exactly one")
            return next(iter(tensors.values()))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read images from {path}: {exc.__class__.__name__}") from None
    if not isinstance(obj, Tensor):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a tensor")
    return obj


def _load_folder(path: Path) -> Images:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"folder {path} has no PNG or JPEG images")
    arrays = []
    for file in files:
        try:
            with Image.open(file) as im:
                arrays.append(np.asarray(im.convert("L" if im.mode in {"L", "1", "P", "I"}
                                                    else "RGB"), dtype=np.float32) / 255.0)
        except Exception as exc:
            raise InputError(f"cannot read image {file}: {exc.__class__.__name__}") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise InputError(f"images in {path} differ in size or channels: {sorted(shapes)}")
    batch = np.stack(arrays)
    tensor = torch.from_numpy(batch)
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    return Images(tensor.contiguous(), [f.name for f in files])


def load_labels(path: str | Path, sources: list[str]) -> Tensor:
    """Targets from a ``name,label`` CSV, in the order of ``sources``."""
    import csv

    path = Path(path)
    try:
        with path.open(newline="") as fh:
            rows = {row["name"]: row["label"] for row in csv.DictReader(fh)}
    except (OSError, KeyError, csv.Error) as exc:
        raise InputError(f"cannot read labels {path}: need a CSV with columns name,label "
                         f"({exc.__class__.__name__})") from None
    missing = [s for s in sources if s not in rows]
    if missing:
        raise InputError(f"{path} has no label for {missing[0]}"
                         + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    try:
        return torch.tensor([int(rows[s]) for s in sources])
    except ValueError:
        raise InputError(f"{path}: labels must be integers") from None
