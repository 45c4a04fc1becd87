"""Images (:func:`load_images`): a folder of PNG/JPEG files (sorted by name), one image
file, or one tensor file (``.pt`` through ``torch.load(weights_only=True)``, ``.npy`` without
pickles, ``.safetensors`` with exactly one tensor) of shape ``(N, C, H, W)`` or
``(C, H, W)``; returned as float32 ``(N, C, H, W)``, 8-bit images scaled to ``[0, 1]``.

Every failure is an :class:`~attrcert.errors.InputError` with a one-line message; no numpy
or Pillow traceback escapes.
"""

from __future__ import annotations

import numbers
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, OptionError, one_line
from .formats import JPEG_MAGIC, KIND_NAMES, NPY_MAGIC, PNG_MAGIC, is_safetensors, sniff_model
from .pickles import pickle_parses, pickle_reason, safe_torch_load

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class Images:
    """A batch of images ``(N, C, H, W)`` in ``[0, 1]`` with one source name per image."""

    tensor: Tensor
    sources: list[str]


def _check_options(channels: int | None, size: tuple[int, int] | None) -> None:
    if channels is not None and channels not in (1, 3):
        raise OptionError(f"channels must be 1 or 3, got {channels!r}")
    if size is not None:
        if (len(size) != 2 or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                                      and s > 0 for s in size)):
            raise OptionError(f"size must be two positive integers H W, got {size!r}")


def image_files(folder: Path) -> list[Path]:
    """The PNG/JPEG files of ``folder``, sorted by name (hidden files skipped)."""
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                    and not p.name.startswith(".") and p.is_file()), key=lambda p: p.name)
    if not files:
        raise InputError(f"folder {folder} has no PNG or JPEG images")
    return files


def first_image_size(folder: Path) -> tuple[int, int]:
    """``(H, W)`` of the first image of ``folder``, read from its header only."""
    from PIL import Image

    first = image_files(folder)[0]
    try:
        with Image.open(first) as im:
            return im.height, im.width
    except Exception as exc:
        raise InputError(f"cannot read image {first}: {exc.__class__.__name__}") from None


def load_images(
    path: str | Path,
    *,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
) -> Images:
    """Images from a folder of PNG/JPEG files, one image file, or one tensor file.

    Args:
        path: a folder (PNG/JPEG files sorted by name; other files are ignored), one
            PNG/JPEG file, or a ``.pt``/``.npy``/``.safetensors`` tensor file of shape
            ``(N, C, H, W)`` or ``(C, H, W)`` (the format is detected by content).
        channels: 1 (grayscale, ITU-R 601 luma as Pillow's ``"L"``) or 3 (RGB); ``None``
            keeps what the files hold (grayscale files as 1 channel, others as RGB).
        size: ``(H, W)`` to resize to (bilinear, antialiased when shrinking, as Pillow).

    Returns:
        :class:`Images`: float32 ``(N, C, H, W)``, 8-bit (and 16-bit) images scaled to
        ``[0, 1]``, float tensors as given; ``sources`` are file names, or
        ``"name[i]"`` for a tensor file.

    Raises:
        InputError: anything that cannot be read, with what to do.
        OptionError: ``channels`` not 1 or 3, ``size`` not two positive integers.
    """
    _check_options(channels, size)
    path = Path(path)
    if path.is_dir():
        return load_image_files(image_files(path), channels, size, where=f"images in {path}")
    if not path.exists():
        raise InputError(f"images path {path} does not exist")
    if not path.is_file():
        raise InputError(f"images path {path} is neither a folder nor a file")
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise InputError(f"cannot read images from {path}: {one_line(exc)}") from None
    if head.startswith((PNG_MAGIC, JPEG_MAGIC)):
        return load_image_files([path], channels, size, where=str(path))
    tensor = _to_image_tensor(_load_tensor_file(path, head), path)
    tensor = _convert_channels(tensor, channels, path)
    if size is not None and tuple(tensor.shape[-2:]) != tuple(size):
        tensor = F.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False,
                               antialias=True)
    return Images(tensor.contiguous(), [f"{path.name}[{i}]" for i in range(tensor.shape[0])])


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


def _grayscale(im: object) -> bool:
    """Whether a Pillow image holds gray levels only (without decoding non-palette modes)."""
    mode = im.mode  # type: ignore[attr-defined]
    if mode in {"1", "L", "LA", "La", "I", "F"} or mode.startswith("I;16"):
        return True
    if mode in {"P", "PA"}:
        rgb = np.asarray(im.convert("RGB"))  # type: ignore[attr-defined]
        return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    return False


def _image_array(im: object, channels: int | None) -> np.ndarray:
    """``(H, W, C)`` float32 in ``[0, 1]`` from a Pillow image."""
    mode = im.mode  # type: ignore[attr-defined]
    gray = _grayscale(im) if channels is None else channels == 1
    if mode.startswith("I;16") or mode == "I":  # 16-bit PNG: convert("L") would clip at 255
        values = np.asarray(im, dtype=np.float32) / 65535.0
        arr = np.clip(values, 0.0, 1.0)[..., None]
        return arr if gray else np.repeat(arr, 3, axis=2)
    converted = im.convert("L" if gray else "RGB")  # type: ignore[attr-defined]
    arr = np.asarray(converted, dtype=np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``(H, W, C)`` float array, channel by channel, in float."""
    from PIL import Image

    height, width = size
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., c], dtype=np.float32))
                         .resize((width, height), Image.Resampling.BILINEAR))
              for c in range(arr.shape[2])]
    return np.clip(np.stack(planes, axis=2), 0.0, 1.0)


def read_image(file: Path, channels: int | None, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                arr = _image_array(im, channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"image {file} exceeds Pillow's decompression-bomb limit of "
                         f"{Image.MAX_IMAGE_PIXELS} pixels (PIL.Image.MAX_IMAGE_PIXELS); "
                         "resize it first") from None
    except Exception as exc:
        raise InputError(f"cannot read image {file} (corrupt or truncated?): "
                         f"{one_line(exc)}") from None
    if size is not None and arr.shape[:2] != tuple(size):
        arr = _resize(arr, size)
    return arr


def load_image_files(
    files: list[Path], channels: int | None, size: tuple[int, int] | None, where: str
) -> Images:
    arrays = [read_image(file, channels, size) for file in files]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) != 1:
        listed = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:4])
        raise InputError(f"{where} differ in size (H x W: {listed}): pass --size H W to "
                         "resize them")
    depths = {a.shape[2] for a in arrays}
    if len(depths) != 1:
        first_gray = next(f.name for f, a in zip(files, arrays, strict=True) if a.shape[2] == 1)
        first_rgb = next(f.name for f, a in zip(files, arrays, strict=True) if a.shape[2] == 3)
        raise InputError(f"{where} mix grayscale ({first_gray}) and colour ({first_rgb}) "
                         "images: pass channels=1 or channels=3")
    tensor = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return Images(tensor.contiguous(), [f.name for f in files])
