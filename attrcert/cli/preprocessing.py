"""The preprocessing a command applies (:func:`resolve_preprocessing`): ``--mean``/``--std``
and ``--size``/``--resize``/``--crop`` where given, else those of ``--preset``, else those
the library records for ``--arch timm:NAME`` / ``torchvision:NAME``, else none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import OptionError
from ..loading import PRESETS, Geometry
from ..loading.libraries import library_preset, parse_library_arch

__all__ = ["Preprocessing", "floats", "resolve_preprocessing"]


def floats(text: str | None, name: str) -> list[float] | None:
    """``--mean`` / ``--std``: numbers separated by commas (or spaces)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise OptionError(f"--{name} {text!r}: give numbers separated by commas") from None
    if not values:
        raise OptionError(f"--{name} is empty: give one number per channel")
    return values


@dataclass(frozen=True)
class Preprocessing:
    """How images are brought to the model's input.

    Attributes:
        source: where the defaults came from: a ``--preset`` name, the ``--arch`` value
            (``timm:resnet50``), or ``None``.
        mean, std: the normalisation folded into the model (``None``: none).
        geometry: resize and centre crop.
    """

    source: str | None
    mean: list[float] | None
    std: list[float] | None
    geometry: Geometry

    def geometry_config(self) -> dict[str, Any]:
        """The geometry as the configuration records it."""
        shape = self.geometry
        return {"size": list(shape.size) if shape.size else None, "resize": shape.shorter,
                "crop": list(shape.crop) if shape.crop else None,
                **({"interpolation": shape.interpolation}
                   if shape.interpolation != "bilinear" else {})}

    def describe(self) -> str:
        """One line for people: ``resize shorter side 256 (bicubic), centre crop 224x224,
        mean ..., std ... (from timm:resnet50)``."""
        shape, parts = self.geometry, []
        if shape.size is not None:
            parts.append(f"resize to {shape.size[0]}x{shape.size[1]} ({shape.interpolation})")
        if shape.shorter is not None:
            parts.append(f"resize shorter side to {shape.shorter} ({shape.interpolation})")
        if shape.crop is not None:
            parts.append(f"centre crop {shape.crop[0]}x{shape.crop[1]}")
        if self.mean is not None and self.std is not None:
            parts.append(f"mean {','.join(f'{v:g}' for v in self.mean)}, "
                         f"std {','.join(f'{v:g}' for v in self.std)}")
        text = ", ".join(parts) or "none (images as loaded, no normalisation)"
        return f"{text} (from {self.source})" if self.source else text


def resolve_preprocessing(*, preset: str | None, arch: str | None, mean: str | None,
                          std: str | None, size: tuple[int, int] | None, resize: int | None,
                          crop: tuple[int, int] | None) -> Preprocessing:
    """The :class:`Preprocessing` of these options (see the module docs).

    Raises:
        OptionError: ``--size`` with ``--resize``, ``--mean`` without ``--std`` (or the
            reverse), values that are not numbers, a library preprocessing attrcert
            cannot reproduce.
        LoadError: a library ``--arch`` that is not installed or does not know the name.
    """
    if size is not None and resize is not None:
        raise OptionError("give either --size H W or --resize S, not both")
    own_geometry = size is not None or resize is not None or crop is not None
    source, base = None, None
    if preset is not None:
        source, base = preset, PRESETS[preset]
    else:
        library = parse_library_arch(arch)
        if library is not None:
            base = library_preset(library, geometry=not own_geometry)
            source = arch if base is not None else None
    mean_values, std_values = floats(mean, "mean"), floats(std, "std")
    if (mean_values is None) != (std_values is None):
        raise OptionError("give --mean and --std together")
    if mean_values is None and base is not None:
        mean_values, std_values = list(base.mean), list(base.std)
    interpolation = base.geometry.interpolation if base is not None else "bilinear"
    if own_geometry:
        geometry = Geometry(size=size, shorter=resize, crop=crop, interpolation=interpolation)
    else:
        geometry = base.geometry if base is not None else Geometry()
    return Preprocessing(source, mean_values, std_values, geometry)
