"""Image tensors from files: ``.pt`` (``torch.load(weights_only=True)``, which runs no
code), ``.npy`` (no pickles; big-endian arrays converted), ``.safetensors`` (exactly one
tensor); returned as float32 ``(N, C, H, W)``, integer images scaled by 1/255, checked
finite and non-empty."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, one_line
from .formats import KIND_NAMES, NPY_MAGIC, is_safetensors, sniff_model
from .pickles import pickle_parses, pickle_reason, safe_torch_load

__all__ = ["read_tensor_file"]


def read_tensor_file(path: Path, head: bytes, channels: int | None) -> Tensor:
    """The images in the tensor file ``path`` (whose first bytes are ``head``), with
    ``channels`` channels (1 or 3; ``None`` keeps the file's)."""
    tensor = _to_image_tensor(_load_tensor_file(path, head), path)
    return _convert_channels(tensor, channels, path)


def _native_order(arr: np.ndarray) -> np.ndarray:
    """``arr`` in the machine's byte order (a big-endian ``.npy`` is a valid image tensor,
    but torch only wraps native-order arrays)."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def _refused_tensor_pickle(path: Path, reason: str) -> InputError:
    return InputError(f"{path} is refused: {reason}, and loading it would run code from the "
                      "file; save a plain tensor with torch.save(tensor), or use .npy or "
                      ".safetensors")


def _load_tensor_file(path: Path, head: bytes) -> object:
    """The object in a tensor file, by content: npy, safetensors, else ``torch.load``."""
    try:
        if head.startswith(NPY_MAGIC):
            try:
                return torch.from_numpy(_native_order(np.load(path, allow_pickle=False)))
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise _refused_tensor_pickle(path, "the .npy file holds Python objects "
                                                 "(a pickle)") from None
                raise
        if is_safetensors(path, head):
            from safetensors.torch import load_file

            tensors = load_file(str(path), device="cpu")
            if len(tensors) != 1:
                raise InputError(f"{path} holds {len(tensors)} tensors "
                                 f"({', '.join(sorted(tensors)[:4])}): expected exactly one")
            return next(iter(tensors.values()))
        kind = sniff_model(path)
        if kind == "empty":
            raise InputError(f"images file {path} is empty")
        if kind == "pickle":
            raise _refused_tensor_pickle(path, "it is a plain Python pickle, not a torch.save "
                                         "file")
        if kind not in {"state_dict", "torch_legacy"}:
            raise InputError(f"{path} is not a folder of images nor a .pt, .npy or "
                             ".safetensors tensor file")
        try:
            return safe_torch_load(path)
        except pickle.UnpicklingError as exc:
            if not pickle_parses(path, kind):
                raise InputError(f"cannot read images from {path}: a corrupt or truncated "
                                 f"{KIND_NAMES[kind]} (its pickle does not decode)") from None
            raise _refused_tensor_pickle(path, pickle_reason(exc)) from None
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read images from {path} (expected a folder of PNG/JPEG "
                         f"files or a .pt, .npy or .safetensors tensor): {one_line(exc)}"
                         ) from None


def _to_image_tensor(obj: object, path: Path) -> Tensor:
    """float32 ``(N, C, H, W)``, integers scaled by 1/255, checked finite and non-empty."""
    if not isinstance(obj, Tensor):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a tensor")
    tensor = obj
    if tensor.layout != torch.strided:
        raise InputError(f"{path} holds a {tensor.layout} tensor: expected a dense tensor")
    if tensor.is_complex():
        raise InputError(f"{path} holds complex values: expected real pixel values")
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4:
        raise InputError(f"{path} holds a tensor of shape {tuple(obj.shape)}: "
                         "expected (N, C, H, W) or (C, H, W)")
    if tensor.numel() == 0:
        raise InputError(f"{path} holds no images (shape {tuple(obj.shape)})")
    if tensor.dtype == torch.bool:
        tensor = tensor.float()
    elif not tensor.is_floating_point():
        low, high = int(tensor.min()), int(tensor.max())
        if low < 0 or high > 255:
            raise InputError(f"{path} holds {tensor.dtype} values in {low}..{high}: integer "
                             "images must be 0..255 (they are scaled by 1/255); save floats "
                             "in [0, 1] instead")
        tensor = tensor.float() / 255.0
    else:
        tensor = tensor.float()
        if not torch.isfinite(tensor).all():
            raise InputError(f"{path} contains NaN or infinite values")
    return tensor


def _convert_channels(tensor: Tensor, channels: int | None, path: Path) -> Tensor:
    have = tensor.shape[1]
    if channels is None or have == channels:
        return tensor
    if have == 1 and channels == 3:
        return tensor.repeat(1, 3, 1, 1)
    if have == 3 and channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=tensor.dtype).view(1, 3, 1, 1)
        return (tensor * luma).sum(dim=1, keepdim=True)
    raise InputError(f"{path} holds images with {have} channels: cannot convert them to "
                     f"{channels}; expected 1 or 3 channels")
