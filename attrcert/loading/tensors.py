"""Image tensors from files: ``.pt`` (``torch.load(weights_only=True)``, which runs no
code), ``.npy`` (no pickles; big-endian arrays converted), ``.safetensors`` (exactly one
tensor); returned as float32 ``(N, C, H, W)``: 8-bit integers (and other integers in
0..255) scaled by 1/255, ``uint16`` by 1/65535, floats in ``[0, 1]`` (or as
``value_range`` says), checked finite and non-empty. Refused with one line: unsigned 32-
and 64-bit integers (no pixel scale), tensors on the meta device (no values), quantized
tensors, and views that repeat a small storage (an ``expand``\\ ed tensor of a few KB that
would take gigabytes once materialised, :data:`MAX_REPEATED_BYTES`)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, one_line
from .formats import KIND_NAMES, NPY_MAGIC, is_safetensors, sniff_model
from .pickles import pickle_parses, pickle_reason, safe_torch_load

__all__ = ["MAX_REPEATED_BYTES", "VALUE_RANGES", "read_tensor_file"]

#: What float values a tensor file's images hold: ``unit`` in [0, 1] (anything else is
#: refused), ``255`` in [0, 255] (divided by 255), ``any`` (taken as they are).
VALUE_RANGES = ("unit", "255", "any")
#: A tensor whose elements repeat its storage (stride 0, ``expand``) may claim at most this
#: many bytes as float32: more is refused before it is materialised.
MAX_REPEATED_BYTES = 1 << 28


def read_tensor_file(path: Path, head: bytes, channels: int | None,
                     value_range: str = "unit") -> Tensor:
    """The images in the tensor file ``path`` (whose first bytes are ``head``), with
    ``channels`` channels (1 or 3; ``None`` keeps the file's), float values read as
    ``value_range`` says (:data:`VALUE_RANGES`)."""
    tensor = _to_image_tensor(_load_tensor_file(path, head), path, value_range)
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


def _check_storage(tensor: Tensor, path: Path) -> None:
    """Refuse tensors without values and views that claim more than their storage holds."""
    if tensor.is_meta:
        raise InputError(f"{path} holds a tensor on the meta device (a shape without values): "
                         "save the images themselves")
    if tensor.is_quantized:
        raise InputError(f"{path} holds a quantized tensor: save tensor.dequantize() (floats "
                         "in [0, 1]) or uint8 images instead")
    if tensor.layout != torch.strided:
        raise InputError(f"{path} holds a {tensor.layout} tensor: expected a dense tensor")
    if tensor.dtype in (torch.uint32, torch.uint64):
        raise InputError(f"{path} holds {tensor.dtype} values: unsigned 32- and 64-bit "
                         "integers have no pixel scale; save uint8 (0..255), uint16 "
                         "(0..65535) or floats in [0, 1]")
    stored = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
    claimed = tensor.numel() * 4  # bytes as float32
    if tensor.numel() > stored and claimed > MAX_REPEATED_BYTES:
        raise InputError(f"{path} holds a tensor of shape {tuple(tensor.shape)} that repeats "
                         f"{stored * tensor.element_size()} bytes of data into "
                         f"{claimed / 2**30:.1f} GiB (an expanded view): save "
                         "tensor.contiguous() if you mean it")


def _scale(tensor: Tensor, path: Path, value_range: str) -> Tensor:
    """float32 pixel values: integers by their scale, floats as ``value_range`` says."""
    if tensor.dtype == torch.bool:
        return tensor.float()
    if not tensor.is_floating_point():
        wide = tensor.to(torch.int64) if tensor.dtype == torch.uint16 else tensor
        first, last = int(wide.min()), int(wide.max())
        top = 65535 if tensor.dtype == torch.uint16 else 255
        if first < 0 or last > top:
            raise InputError(f"{path} holds {tensor.dtype} values in {first}..{last}: "
                             f"{tensor.dtype} images must be 0..{top} (they are scaled by "
                             f"1/{top}); save floats in [0, 1] instead")
        return wide.float() / float(top)
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise InputError(f"{path} contains NaN or infinite values")
    low, high = float(tensor.min()), float(tensor.max())
    if value_range == "255":
        if low < 0 or high > 255:
            raise InputError(f"{path} holds values in [{low:.4g}, {high:.4g}], outside [0, 255] "
                             "(--input-range 255)")
        return tensor / 255.0
    if value_range == "unit" and (low < 0 or high > 1):
        raise InputError(f"{path} holds float values in [{low:.4g}, {high:.4g}], outside [0, 1] "
                         "(eps is in units of [0, 1] pixels): pass --input-range 255 for 0..255 "
                         "values; for normalised images save the raw ones and pass --mean/--std, "
                         "or pass --input-range any to take them as they are")
    return tensor


def _to_image_tensor(obj: object, path: Path, value_range: str = "unit") -> Tensor:
    """float32 ``(N, C, H, W)`` (:func:`_scale`), checked before anything is materialised."""
    if not isinstance(obj, Tensor):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a tensor")
    tensor = obj
    _check_storage(tensor, path)
    if tensor.is_complex():
        raise InputError(f"{path} holds complex values: expected real pixel values")
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4:
        raise InputError(f"{path} holds a tensor of shape {tuple(obj.shape)}: "
                         "expected (N, C, H, W) or (C, H, W)")
    if tensor.numel() == 0:
        raise InputError(f"{path} holds no images (shape {tuple(obj.shape)})")
    return _scale(tensor, path, value_range)


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
