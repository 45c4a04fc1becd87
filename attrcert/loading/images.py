"""Images (:func:`load_images`): a folder of PNG/JPEG files, a folder of class folders (as
torchvision's ``ImageFolder``), one image file, or one tensor file
(:mod:`attrcert.loading.tensors`) of shape ``(N, C, H, W)`` or ``(C, H, W)``; returned as
float32 ``(N, C, H, W)`` in ``[0, 1]``, resized and cropped by a
:class:`~attrcert.loading.transforms.Geometry`.

Image files are decoded only as PNG or JPEG, chosen by their content (Pillow's other
decoders never see them: a TIFF of floats or an EPS file handed to Ghostscript, each named
``.png``, is refused). Every failure is an :class:`~attrcert.errors.InputError` with a
one-line message; no numpy or Pillow traceback escapes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, OptionError, one_line
from .formats import JPEG_MAGIC, PNG_MAGIC
from .tensors import VALUE_RANGES, read_tensor_file
from .transforms import Geometry

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
#: The Pillow decoders an image file may reach.
DECODERS = ("PNG", "JPEG")


@dataclass(frozen=True)
class Images:
    """A batch of images ``(N, C, H, W)`` in ``[0, 1]`` with one source name per image.

    Attributes:
        tensor: the images.
        sources: a name per image: the file name, ``class/file`` in a folder of class
            folders, or ``file[i]`` for a tensor file.
        labels: ``(N,)`` class indices read from class folders (else ``None``).
        classes: the class folders' names, in label order (else ``None``).
    """

    tensor: Tensor
    sources: list[str]
    labels: Tensor | None = None
    classes: list[str] | None = None


@dataclass(frozen=True)
class Listing:
    """The image files of a folder, in order, with their names and class labels.

    A folder that holds PNG/JPEG files is read flat (sorted by name; subfolders ignored).
    A folder that holds none but has subfolders that do is read as torchvision's
    ``ImageFolder``: each subfolder is a class, its files sorted by name; the classes are
    numbered in sorted order of their names, except when every name is an integer in ASCII
    digits (``0/``, ``17/``, ``281/``), which is then the label itself (two folders meaning
    one label, ``0/`` and ``00/``, are refused).
    """

    files: list[Path]
    sources: list[str]
    labels: list[int] | None = None
    classes: list[str] | None = field(default=None)


def _images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith(".") and p.is_file()), key=lambda p: p.name)


def list_images(folder: Path) -> Listing:
    """The :class:`Listing` of ``folder`` (flat, or class folders)."""
    try:
        flat = _images_in(folder)
        if flat:
            return Listing(flat, [f.name for f in flat])
        classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(
            ".") and _images_in(p))
    except OSError as exc:
        raise InputError(f"cannot list images in {folder}: {one_line(exc)}") from None
    if not classes:
        raise InputError(f"folder {folder} has no PNG or JPEG images (nor class folders "
                         "holding them)")
    names = [c.name for c in classes]
    numbered = all(n.isascii() and n.isdigit() for n in names)  # "²".isdigit() is True
    if numbered:
        seen: dict[int, str] = {}
        for n in names:
            if int(n) in seen:
                raise InputError(f"{folder}: class folders {seen[int(n)]}/ and {n}/ both mean "
                                 f"label {int(n)}: rename or merge one of them")
            seen[int(n)] = n
    files, sources, labels = [], [], []
    for index, cls in enumerate(classes):
        for file in _images_in(cls):
            files.append(file)
            sources.append(f"{cls.name}/{file.name}")
            labels.append(int(cls.name) if numbered else index)
    return Listing(files, sources, labels, names)


def image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` in order (see :class:`Listing`)."""
    return list_images(folder).files


def first_image_size(folder: Path) -> tuple[int, int]:
    """``(H, W)`` of the first image of ``folder``, read from its header only."""
    return image_size(image_files(folder)[0])


def image_size(file: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file, read from its header only."""
    from PIL import Image

    try:
        with Image.open(file, formats=DECODERS) as im:
            return im.height, im.width
    except Image.UnidentifiedImageError:
        raise not_png_or_jpeg(file) from None
    except Exception as exc:
        raise InputError(f"cannot read image {file}: {exc.__class__.__name__}") from None


def not_png_or_jpeg(file: Path) -> InputError:
    return InputError(f"image {file} is not a PNG or JPEG file (by its content, whatever its "
                      "name): convert it to PNG")


def _geometry(size: tuple[int, int] | None, geometry: Geometry | None) -> Geometry:
    if size is not None and geometry is not None:
        raise OptionError("give either size or geometry, not both")
    return geometry if geometry is not None else Geometry(size=size)


def load_images(
    path: str | Path,
    *,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    geometry: Geometry | None = None,
    value_range: str = "unit",
) -> Images:
    """Images from a folder (flat or class folders, :class:`Listing`), one PNG/JPEG file,
    or one ``.pt``/``.npy``/``.safetensors`` tensor file (the format is detected by
    content).

    Args:
        path: the folder or file.
        channels: 1 (grayscale, ITU-R 601 luma as Pillow's ``"L"``) or 3 (RGB); ``None``
            keeps what the files hold (grayscale files as 1 channel, others as RGB).
        size: ``(H, W)`` to resize to (bilinear, antialiased when shrinking, as Pillow);
            the same as ``geometry=Geometry(size=size)``.
        geometry: resize and centre crop (:class:`~attrcert.loading.transforms.Geometry`).
        value_range: the values of a float tensor file (:data:`VALUE_RANGES`): ``"unit"``
            in ``[0, 1]`` (others refused), ``"255"`` in ``[0, 255]`` (divided by 255),
            ``"any"`` taken as they are.

    Returns:
        :class:`Images`: float32 ``(N, C, H, W)``, 8-bit (and 16-bit) images scaled to
        ``[0, 1]``, float tensors as given; labels from class folders.

    Raises:
        InputError: anything that cannot be read, with what to do.
        OptionError: ``channels`` not 1 or 3, a bad size or geometry.
    """
    if channels is not None and channels not in (1, 3):
        raise OptionError(f"channels must be 1 or 3, got {channels!r}")
    if value_range not in VALUE_RANGES:
        raise OptionError(f"value_range must be one of {', '.join(VALUE_RANGES)}, got "
                          f"{value_range!r}")
    shape = _geometry(size, geometry)
    path = Path(path)
    if path.is_dir():
        listing = list_images(path)
        images = load_image_files(listing.files, channels, shape, where=f"images in {path}")
        return _labelled(images, listing)
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
        return load_image_files([path], channels, shape, where=str(path))
    tensor = read_tensor_file(path, head, channels, value_range)
    if not shape.identity:
        try:
            tensor = shape.apply_tensor(tensor)
        except OptionError as exc:
            raise InputError(f"{path}: {exc}") from None
    return Images(tensor.contiguous(), [f"{path.name}[{i}]" for i in range(tensor.shape[0])])


def _labelled(images: Images, listing: Listing) -> Images:
    """``images`` with the names (all of the listing) and labels of class folders."""
    labels = (None if listing.labels is None
              else torch.tensor(listing.labels, dtype=torch.long))
    return Images(images.tensor, listing.sources, labels, listing.classes)


def load_listed(listing: Listing, rows: list[int], channels: int | None, geometry: Geometry,
                where: str) -> Images:
    """The images at ``rows`` of ``listing`` (a shard), named and labelled as all of it:
    ``sources`` and ``labels`` cover every file, ``tensor`` only ``rows``."""
    images = load_image_files([listing.files[i] for i in rows], channels, geometry, where)
    return _labelled(images, listing)


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


def read_image(file: Path, channels: int | None,
               geometry: Geometry | tuple[int, int] | None) -> np.ndarray:
    """One image file as ``(H, W, C)`` float32 in ``[0, 1]``, transformed by ``geometry``
    (or resized to ``(H, W)``)."""
    from PIL import Image

    shape = geometry if isinstance(geometry, Geometry) else Geometry(size=geometry)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file, formats=DECODERS) as im:
                arr = _image_array(im, channels)
    except Image.UnidentifiedImageError:
        raise not_png_or_jpeg(file) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"image {file} exceeds Pillow's decompression-bomb limit of "
                         f"{Image.MAX_IMAGE_PIXELS} pixels (PIL.Image.MAX_IMAGE_PIXELS); "
                         "resize it first") from None
    except Exception as exc:
        raise InputError(f"cannot read image {file} (corrupt or truncated?): "
                         f"{one_line(exc)}") from None
    try:
        return shape.apply_array(arr)
    except OptionError as exc:
        raise InputError(f"image {file}: {exc}") from None


def load_image_files(files: list[Path], channels: int | None,
                     geometry: Geometry | tuple[int, int] | None, where: str) -> Images:
    """The image ``files`` as one batch (they must end up the same size)."""
    arrays = [read_image(file, channels, geometry) for file in files]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) != 1:
        listed = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:4])
        raise InputError(f"{where} differ in size (H x W: {listed}): pass --size H W to "
                         "resize them, or --preset imagenet (resize 256, crop 224)")
    depths = {a.shape[2] for a in arrays}
    if len(depths) != 1:
        first_gray = next(f.name for f, a in zip(files, arrays, strict=True) if a.shape[2] == 1)
        first_rgb = next(f.name for f, a in zip(files, arrays, strict=True) if a.shape[2] == 3)
        raise InputError(f"{where} mix grayscale ({first_gray}) and colour ({first_rgb}) "
                         "images: pass channels=1 or channels=3")
    tensor = torch.from_numpy(np.ascontiguousarray(np.stack(arrays))).permute(0, 3, 1, 2)
    return Images(tensor.contiguous(), [f.name for f in files])
