"""How images are brought to the model's input: resizing and centre cropping as
torchvision's evaluation transforms do (:class:`Geometry`), and the usual presets
(:data:`PRESETS`: ImageNet's resize 256 / crop 224 and mean/std, CIFAR-10's mean/std).

The normalisation ``(x - mean) / std`` is not applied to the pixels: it is folded into the
model (:func:`attrcert.loading.with_normalization`), so that eps stays in pixel units of the
images as loaded, in ``[0, 1]`` (docs/math.md §1).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from ..errors import OptionError

__all__ = ["INTERPOLATIONS", "PRESETS", "Geometry", "Preset"]

Size = tuple[int, int]
#: Resampling filters of the resize step (as torchvision's and timm's ``interpolation``).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def _check_size(value: object, name: str) -> None:
    if value is None:
        return
    if (not isinstance(value, tuple) or len(value) != 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and int(s) > 0
                       for s in value)):
        raise OptionError(f"{name} must be two positive integers H W, got {value!r}")


@dataclass(frozen=True)
class Geometry:
    """Resize, then centre-crop (torchvision's ``Resize`` then ``CenterCrop``).

    Attributes:
        size: ``(H, W)``: resize to exactly this (the aspect ratio may change).
        shorter: resize so that the shorter side has this length, keeping the aspect ratio
            (torchvision's ``Resize(int)``); not with ``size``.
        crop: ``(H, W)``: then cut this centre out (``CenterCrop``; the image must be at
            least this large after resizing).
        interpolation: the resize filter, one of :data:`INTERPOLATIONS` (antialiased when
            shrinking, except ``nearest``).
    """

    size: Size | None = None
    shorter: int | None = None
    crop: Size | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.size is not None:
            object.__setattr__(self, "size", tuple(self.size))
        if self.crop is not None:
            object.__setattr__(self, "crop", tuple(self.crop))
        _check_size(self.size, "size")
        _check_size(self.crop, "crop")
        if self.shorter is not None and (isinstance(self.shorter, bool)
                                         or int(self.shorter) != self.shorter
                                         or self.shorter < 1):
            raise OptionError(f"shorter side must be a positive integer, got {self.shorter!r}")
        if self.size is not None and self.shorter is not None:
            raise OptionError("give either a size H W or a shorter side, not both")
        if self.interpolation not in INTERPOLATIONS:
            raise OptionError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                              f"got {self.interpolation!r}")

    @property
    def identity(self) -> bool:
        return self.size is None and self.shorter is None and self.crop is None

    def resized(self, height: int, width: int) -> Size:
        """``(H, W)`` after the resize step."""
        if self.size is not None:
            return self.size
        if self.shorter is not None:
            if height <= width:  # as torchvision: the long side is truncated, not rounded
                return self.shorter, int(self.shorter * width / height)
            return int(self.shorter * height / width), self.shorter
        return height, width

    def output(self, height: int, width: int) -> Size:
        """``(H, W)`` of an ``height x width`` image after the whole transform."""
        return self.crop if self.crop is not None else self.resized(height, width)

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, H, W)`` of the centre crop of an ``height x width`` image
        (torchvision's rounding)."""
        crop_h, crop_w = self.crop or (height, width)
        if crop_h > height or crop_w > width:
            raise OptionError(f"cannot crop {crop_h}x{crop_w} from a {height}x{width} image: "
                              "resize it larger first (e.g. --preset imagenet resizes to 256)")
        # torchvision's rounding: int(round(...)) of a float (banker's rounding on .5)
        return (round((height - crop_h) / 2.0), round((width - crop_w) / 2.0), crop_h, crop_w)

    def apply_array(self, arr: np.ndarray) -> np.ndarray:
        """The transform of an ``(H, W, C)`` float image in ``[0, 1]`` (Pillow's filter,
        antialiased when shrinking; in float, channel by channel)."""
        height, width = arr.shape[:2]
        target = self.resized(height, width)
        if target != (height, width):
            arr = _resize(arr, target, self.interpolation)
        if self.crop is not None:
            top, left, h, w = self.crop_box(*arr.shape[:2])
            arr = arr[top:top + h, left:left + w]
        return arr

    def apply_tensor(self, tensor: Tensor) -> Tensor:
        """The transform of an ``(N, C, H, W)`` batch (antialiased, except ``nearest``)."""
        height, width = tensor.shape[-2:]
        target = self.resized(int(height), int(width))
        if target != (height, width):
            if self.interpolation == "nearest":
                tensor = F.interpolate(tensor, size=target, mode="nearest-exact")
            else:
                low, high = tensor.min(), tensor.max()
                tensor = F.interpolate(tensor, size=target, mode=self.interpolation,
                                       align_corners=False, antialias=True)
                if self.interpolation == "bicubic":  # overshoots, where bilinear cannot
                    tensor = tensor.clamp(low, high)
        if self.crop is not None:
            top, left, h, w = self.crop_box(*tensor.shape[-2:])
            tensor = tensor[..., top:top + h, left:left + w]
        return tensor


def _resize(arr: np.ndarray, size: Size, interpolation: str = "bilinear") -> np.ndarray:
    """Resize of an ``(H, W, C)`` float array with Pillow's ``interpolation`` filter,
    channel by channel, in float (clipped to ``[0, 1]``: bicubic overshoots)."""
    from PIL import Image

    height, width = size
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "nearest": Image.Resampling.NEAREST}[interpolation]
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., c], dtype=np.float32))
                         .resize((width, height), resample))
              for c in range(arr.shape[2])]
    return np.clip(np.stack(planes, axis=2), 0.0, 1.0)


@dataclass(frozen=True)
class Preset:
    """The input pipeline a family of models was trained with.

    Attributes:
        mean, std: per-channel normalisation (folded into the model).
        geometry: resize and crop.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    geometry: Geometry = Geometry()


#: ``--preset``: ImageNet's evaluation transform (resize the shorter side to 256, centre
#: crop 224, torchvision's mean/std) and CIFAR-10's mean/std (32 x 32 as stored).
PRESETS: dict[str, Preset] = {
    "imagenet": Preset(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                       geometry=Geometry(shorter=256, crop=(224, 224))),
    "cifar10": Preset(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
}

