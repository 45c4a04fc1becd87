"""``--arch timm:NAME`` and ``--arch torchvision:NAME``: a model library's architecture,
built untrained (timm's ``pretrained=False``, torchvision's ``weights=None``: nothing is
downloaded or read but the user's weights), sized from the weights (classes, input
channels), and the preprocessing the library records for that name.

``NAME`` may carry keyword arguments for the library's constructor, as Python literals:
``timm:vit_tiny_patch16_224(img_size=32, patch_size=8)``; a timm name may carry its
pretrained tag (``timm:resnet50.tv_in1k``), which selects that tag's preprocessing. Both
libraries stay optional: a missing one is one line with the ``pip`` command.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from ..errors import LoadError, OptionError, one_line
from .transforms import INTERPOLATIONS, Geometry, Preset

__all__ = ["LIBRARIES", "LibraryArch", "build_library_model", "library_preset",
           "parse_library_arch"]

LIBRARIES = ("timm", "torchvision")
#: Constructor arguments that would download or read files: never passed on.
REFUSED_KWARGS = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                            "checkpoint_path", "cache_dir", "weights", "weights_backbone",
                            "progress"})
_NAME = re.compile(r"^(?P<name>[A-Za-z0-9_][A-Za-z0-9_.\-]*)\s*(?:\((?P<args>.*)\))?$", re.S)
#: torchvision's classification heads, as state-dict prefixes, in the order tried.
_TORCHVISION_HEADS = ("fc", "heads.head", "head", "classifier")


@dataclass(frozen=True)
class LibraryArch:
    """A parsed ``--arch timm:NAME(...)`` / ``torchvision:NAME(...)``.

    Attributes:
        library: ``"timm"`` or ``"torchvision"``.
        name: the architecture's name (a timm name may end in ``.tag``).
        kwargs: keyword arguments for the constructor, as given.
        text: the ``--arch`` value, for messages.
    """

    library: str
    name: str
    kwargs: tuple[tuple[str, Any], ...]
    text: str


def parse_library_arch(arch: str | None) -> LibraryArch | None:
    """The :class:`LibraryArch` of ``arch``, or ``None`` when it names no library
    (``module:factory``, ``file.py:factory``).

    Raises:
        LoadError: a malformed name or keyword arguments that are not Python literals.
    """
    if not isinstance(arch, str):
        return None
    library, sep, rest = arch.partition(":")
    if not sep or library.strip() not in LIBRARIES:
        return None
    library = library.strip()
    found = _NAME.match(rest.strip())
    if not found:
        raise LoadError(f"--arch {arch!r}: expected {library}:NAME or {library}:NAME(key=value, "
                        "...), e.g. timm:resnet50 or timm:vit_tiny_patch16_224(img_size=64)")
    kwargs: dict[str, Any] = {}
    if found.group("args") is not None and found.group("args").strip():
        try:
            call = ast.parse(f"f({found.group('args')})", mode="eval").body
            if not isinstance(call, ast.Call) or call.args:
                raise ValueError("only key=value arguments")
            for keyword in call.keywords:
                if keyword.arg is None:
                    raise ValueError("no ** arguments")
                kwargs[keyword.arg] = ast.literal_eval(keyword.value)
        except (SyntaxError, ValueError, TypeError, RecursionError) as exc:
            raise LoadError(f"--arch {arch!r}: the arguments in parentheses must be key=value "
                            f"with Python literals as values ({one_line(exc)})") from None
    refused = sorted(REFUSED_KWARGS & kwargs.keys())
    if refused:
        raise LoadError(f"--arch {arch!r}: {refused[0]}= is not allowed: attrcert never "
                        "downloads or reads weights other than the MODEL file")
    return LibraryArch(library, found.group("name"), tuple(kwargs.items()), arch)


def _library(spec: LibraryArch) -> ModuleType:
    try:
        return importlib.import_module(spec.library)
    except ImportError:
        raise LoadError(f"--arch {spec.text} needs {spec.library}, which is not installed: "
                        f"pip install {spec.library}") from None


def _unknown(spec: LibraryArch, known: list[str]) -> LoadError:
    close = difflib.get_close_matches(spec.name, known, n=4, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return LoadError(f"--arch {spec.text}: {spec.library} has no model {spec.name!r}{hint}")


def _head_classes(state: Mapping[str, Tensor], heads: list[str]) -> int | None:
    """The number of classes of the first head among ``heads`` found in ``state``."""
    for head in heads:
        weight = state.get(f"{head}.weight")
        if isinstance(weight, Tensor) and weight.ndim >= 1:
            return int(weight.shape[0])
    return None


def _timm_cfg(name: str) -> Any:
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(name)


def _build_timm(spec: LibraryArch, state: Mapping[str, Tensor]) -> nn.Module:
    timm = _library(spec)
    if not timm.is_model(spec.name):
        raise _unknown(spec, timm.list_models())
    cfg = _timm_cfg(spec.name)
    kwargs = dict(spec.kwargs)
    if cfg is not None and "num_classes" not in kwargs:
        heads = cfg.classifier if isinstance(cfg.classifier, (tuple, list)) else [
            cfg.classifier]
        classes = _head_classes(state, [h for h in heads if isinstance(h, str)])
        if classes is not None:
            kwargs["num_classes"] = classes
    if cfg is not None and isinstance(cfg.first_conv, str) and "in_chans" not in kwargs:
        first = state.get(f"{cfg.first_conv}.weight")
        if isinstance(first, Tensor) and first.ndim == 4 and first.shape[1] != 3:
            kwargs["in_chans"] = int(first.shape[1])
    return _construct(spec, lambda: timm.create_model(spec.name, pretrained=False, **kwargs),
                      kwargs)


def _torchvision_names() -> list[str]:
    from torchvision import models  # type: ignore[import-untyped]

    return list(models.list_models(module=models))  # classification models only


def _build_torchvision(spec: LibraryArch, state: Mapping[str, Tensor]) -> nn.Module:
    _library(spec)
    from torchvision import models

    if spec.name not in _torchvision_names():
        raise _unknown(spec, _torchvision_names())
    kwargs = dict(spec.kwargs)
    if "num_classes" not in kwargs:
        numbered = sorted((int(k.split(".")[1]) for k in state
                           if re.match(r"^classifier\.\d+\.weight$", k)), reverse=True)
        heads = [*_TORCHVISION_HEADS, *(f"classifier.{i}" for i in numbered)]
        classes = _head_classes(state, heads)
        if classes is not None:
            kwargs["num_classes"] = classes
    if spec.name in {"inception_v3", "googlenet"} and "aux_logits" not in kwargs:
        kwargs["aux_logits"] = any(k.startswith(("AuxLogits.", "aux1.")) for k in state)
    return _construct(spec, lambda: models.get_model(spec.name, weights=None, **kwargs),
                      kwargs)


def _construct(spec: LibraryArch, build: Any, kwargs: dict[str, Any]) -> nn.Module:
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build()
    except Exception as exc:
        raise LoadError(f"--arch {spec.text}: {spec.library} cannot build {spec.name}"
                        f"({shown}): {one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise LoadError(f"--arch {spec.text}: {spec.library} returned a "
                        f"{type(model).__name__}, not a torch.nn.Module")
    return model


def build_library_model(spec: LibraryArch, state: Mapping[str, Tensor]) -> nn.Module:
    """The untrained model ``spec`` names, with as many classes (and input channels, for
    timm) as the weights ``state`` hold, unless the arguments of ``spec`` set them.

    Raises:
        LoadError: the library is missing, the name unknown, or the constructor failed.
    """
    if spec.library == "timm":
        return _build_timm(spec, state)
    return _build_torchvision(spec, state)


def _square(size: Any) -> tuple[int, int] | None:
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int)
                                                                  for s in size):
        return int(size[0]), int(size[1])
    return None


def _timm_preset(spec: LibraryArch, geometry: bool) -> Preset | None:
    cfg = _timm_cfg(spec.name)
    if cfg is None:
        return None
    from timm.data import resolve_data_config

    kwargs = dict(spec.kwargs)
    args: dict[str, Any] = {}
    size = _square(kwargs.get("img_size"))
    if size is not None:
        args["input_size"] = (int(kwargs.get("in_chans", 3)), *size)
    config = resolve_data_config(args, pretrained_cfg=cfg.to_dict())
    _, height, width = config["input_size"]
    crop_pct = config.get("crop_pct") or 0.875
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    mode = config.get("crop_mode") or "center"
    interpolation = config.get("interpolation")
    interpolation = interpolation if interpolation in INTERPOLATIONS else "bilinear"
    shape = Geometry(interpolation=interpolation)
    if geometry and mode == "border":
        raise OptionError(f"timm's preprocessing of {spec.name} pads the image (crop_mode "
                          "'border'), which attrcert does not reproduce: pass --size H W or "
                          "--resize S --crop H W")
    if mode == "squash" or scale[0] != scale[1]:
        shape = Geometry(size=scale, crop=(height, width), interpolation=interpolation)
    elif mode == "center":
        shape = Geometry(shorter=scale[0], crop=(height, width), interpolation=interpolation)
    return Preset(mean=tuple(config["mean"]), std=tuple(config["std"]), geometry=shape)


def _torchvision_preset(spec: LibraryArch) -> Preset | None:
    from torchvision import models

    try:
        weights = models.get_model_weights(spec.name).DEFAULT
        transform = weights.transforms()
        crop = int(transform.crop_size[0])
        resize = int(transform.resize_size[0])
        mean, std = tuple(transform.mean), tuple(transform.std)
        interpolation = str(transform.interpolation.value)
    except Exception:  # no weights enum, or not an image-classification transform
        return None
    size = _square(dict(spec.kwargs).get("image_size"))
    if size is not None and size[0] == size[1]:
        resize, crop = math.floor(size[0] * resize / crop), size[0]
    interpolation = interpolation if interpolation in INTERPOLATIONS else "bilinear"
    return Preset(mean=mean, std=std, geometry=Geometry(shorter=resize, crop=(crop, crop),
                                                        interpolation=interpolation))


def library_preset(spec: LibraryArch, geometry: bool = True) -> Preset | None:
    """The evaluation preprocessing the library records for ``spec``: timm's pretrained
    config (``resolve_data_config``: input size, resize to ``input / crop_pct``, centre
    crop, interpolation, mean, std), or the transforms of torchvision's default weights;
    the input size follows ``img_size=`` (timm) or ``image_size=`` (torchvision) when
    given. ``None`` when the library records none.

    Raises:
        LoadError: the library is missing or does not know the name.
        OptionError: ``geometry`` is asked for and timm's is one attrcert cannot
            reproduce (crop mode ``border``).
    """
    _library(spec)
    if spec.library == "timm":
        import timm

        if not timm.is_model(spec.name):
            raise _unknown(spec, timm.list_models())
        return _timm_preset(spec, geometry)
    if spec.name not in _torchvision_names():
        raise _unknown(spec, _torchvision_names())
    return _torchvision_preset(spec)
