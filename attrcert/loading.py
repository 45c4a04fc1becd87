"""Loading models, images and labels, by content rather than by file suffix.

Models (:func:`load_model`):

- torch.export archives (``.pt2``) and TorchScript archives: whole models, loaded without
  running pickled Python code;
- weights only (a state dict), as safetensors or as ``torch.save(model.state_dict())``
  (read with ``torch.load(weights_only=True)``): rebuilt with ``--arch module:factory`` or
  ``--arch path/to/file.py:factory``;
- anything else that is a pickle (``torch.save(model)``, legacy ``torch.save`` files, plain
  ``pickle.dump`` files) runs code from the file when loaded: refused unless
  ``trust_pickle=True`` (``--trust-pickle``), and then loaded with a
  :class:`UntrustedPickleWarning`.

Images (:func:`load_images`): a folder of PNG/JPEG files (sorted by name), one image file,
or one tensor file (``.pt`` through ``torch.load(weights_only=True)``, ``.npy`` without
pickles, ``.safetensors`` with exactly one tensor) of shape ``(N, C, H, W)`` or
``(C, H, W)``; returned as float32 ``(N, C, H, W)``, 8-bit images scaled to ``[0, 1]``.

Every failure is an :class:`~attrcert.errors.AttrcertError` with a one-line message that
says what is wrong and what to do; no torch, numpy or Pillow traceback escapes.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import numbers
import os
import pickle
import pickletools
import re
import struct
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError, LoadError, OptionError

__all__ = [
    "IMAGE_SUFFIXES",
    "Images",
    "Normalized",
    "UntrustedPickleWarning",
    "infer_input_channels",
    "load_images",
    "load_labels",
    "load_model",
    "sniff_model",
    "with_normalization",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy (non-zip) torch.save
_PICKLE_SNIFF_OPS = 64
_KIND_NAMES = {
    "export": "torch.export archive",
    "torchscript": "TorchScript archive",
    "safetensors": "safetensors file",
    "state_dict": "torch.save file",
    "torch_legacy": "legacy torch.save file",
    "pickle": "pickle",
}
_WHOLE_MODEL = "a torch.export (.pt2) or TorchScript archive"


class UntrustedPickleWarning(UserWarning):
    """A model was unpickled with ``--trust-pickle``: that ran code from the file."""


# --------------------------------------------------------------------------- sniffing


def _is_safetensors(path: Path, head: bytes) -> bool:
    """An 8-byte little-endian header length that fits the file, then a JSON object."""
    if len(head) < 10 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= path.stat().st_size - 8


def _pickle_kind(path: Path) -> str | None:
    """``"torch_legacy"``, ``"pickle"`` or ``None``, by parsing (never running) the first pickle.

    :func:`pickletools.genops` only decodes opcodes: nothing is imported, built or called.
    """
    ops: list[tuple[str, object]] = []
    try:
        with path.open("rb") as fh:
            for opcode, arg, _ in pickletools.genops(fh):
                if opcode.name not in {"PROTO", "FRAME"}:
                    ops.append((opcode.name, arg))
                if len(ops) >= _PICKLE_SNIFF_OPS:
                    return "pickle"  # a long valid opcode stream: surely a pickle
    except Exception:  # genops raises ValueError on bytes that are not a pickle
        return None
    if len(ops) == 2 and ops[0][1] == _TORCH_LEGACY_MAGIC:
        return "torch_legacy"  # the magic number, then (in later pickles) the data
    return "pickle" if len(ops) >= 2 else None


def sniff_model(path: Path) -> str:
    """What a model file holds, from its content (never from its suffix).

    One of ``"export"`` (torch.export archive), ``"torchscript"``, ``"safetensors"``,
    ``"state_dict"`` (a zip ``torch.save`` file: a state dict or a pickled object),
    ``"torch_legacy"`` (a non-zip ``torch.save`` file), ``"pickle"`` (a plain pickle),
    ``"image"`` (PNG/JPEG), ``"zip"`` (another or a corrupt zip archive), ``"empty"`` or
    ``"unknown"``. Nothing in the file is unpickled.
    """
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(16)
    if not head:
        return "empty"
    if _is_safetensors(path, head):
        return "safetensors"
    if head.startswith((_PNG_MAGIC, _JPEG_MAGIC)):
        return "image"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "zip"
        if any(n.endswith("serialized_exported_program.json") or "/models/" in n
               or n.endswith("archive_format") for n in names):
            return "export"
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "state_dict"
        return "zip"
    if head.startswith(_ZIP_MAGIC):
        return "zip"  # a zip without its central directory: truncated
    if head[:1] == b"\x80":  # PROTO opcode: pickle protocol 2 or later
        return _pickle_kind(path) or "unknown"
    return "unknown"


# --------------------------------------------------------------------------- models


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (torch messages run over many lines)."""
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    return f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__


def _pickle_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a pickle, for the user."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it needs the Python object {found.group(1)}"
    found = re.search(r"Trying to load unsupported GLOBAL (\S+)", text)
    if found:
        return f"it needs the Python object {found.group(1)}"
    if "Unsupported operand" in text:
        return ("it uses pickle opcodes that the safe loader does not read (pickle protocol 4 "
                "or later?)")
    return "it holds objects that the safe loader does not read"


def _pickle_parses(path: Path, kind: str) -> bool:
    """Whether the pickles of a ``torch.save`` file decode (opcodes only, nothing runs).

    Tells a truncated or corrupt pickle from one that needs arbitrary Python objects: both
    make ``torch.load(weights_only=True)`` raise ``UnpicklingError``.
    """
    try:
        if kind == "state_dict":
            with zipfile.ZipFile(path) as zf:
                name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
                for _ in pickletools.genops(io.BytesIO(zf.read(name))):
                    pass
            return True
        with path.open("rb") as fh:  # legacy: magic, protocol, sys info, then the data
            for _ in range(4):
                for _ in pickletools.genops(fh):
                    pass
        return True
    except Exception:
        return False


def _refuse_pickle(path: Path, reason: str) -> LoadError:
    return LoadError(
        f"{path} is a pickle that cannot be loaded safely ({reason}); loading it would run "
        "code from the file: pass --trust-pickle only if you trust its source, or export "
        "the model with torch.export (.pt2) or save its state dict as safetensors "
        "and pass --arch"
    )


def _safe_torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)``: never runs pickled code. Raises as torch does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Detected pickle protocol 4 ..." and similar
        return torch.load(path, map_location="cpu", weights_only=True)


def _parse_arch(arch: str) -> tuple[str, str]:
    if not isinstance(arch, str) or ":" not in arch:
        raise LoadError(f"--arch {arch!r} is not of the form module:factory or "
                        "path/to/file.py:factory")
    target, factory = (part.strip() for part in arch.rsplit(":", 1))
    if not target or not factory or not all(p.isidentifier() for p in factory.split(".")):
        raise LoadError(f"--arch {arch!r} is not of the form module:factory or "
                        "path/to/file.py:factory (factory: a Python name)")
    return target, factory


@contextlib.contextmanager
def _on_sys_path(*folders: str) -> Iterator[None]:
    """``folders`` (those not there yet) at the front of ``sys.path`` for the duration."""
    added = [folder for folder in dict.fromkeys(folders) if folder not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def _import_arch_module(target: str, arch: str) -> object:
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if is_file:
        file = Path(target).expanduser()
        file = file if file.is_absolute() else Path.cwd() / file
        if not file.is_file():
            raise LoadError(f"--arch {arch}: file {target} does not exist")
        stem = re.sub(r"\W", "_", file.stem)
        name = f"_attrcert_arch_{stem}_{abs(hash(str(file.resolve()))):x}"
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            raise LoadError(f"--arch {arch}: cannot import {target} (not a Python file?)")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            with _on_sys_path(str(file.parent), os.getcwd()):  # its siblings, as a script
                spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            sys.modules.pop(name, None)
            raise LoadError(f"--arch {arch}: importing {target} failed: "
                            f"{_one_line(exc)}") from None
        return module
    try:
        with _on_sys_path(os.getcwd()):
            return importlib.import_module(target)
    except (Exception, SystemExit) as exc:
        raise LoadError(f"--arch {arch}: cannot import module {target} ({_one_line(exc)}); "
                        "run from the folder that holds it, or pass path/to/file.py:factory"
                        ) from None


def _build_arch(arch: str) -> nn.Module:
    target, factory_name = _parse_arch(arch)
    obj: object = _import_arch_module(target, arch)
    for part in factory_name.split("."):
        if not hasattr(obj, part):
            raise LoadError(f"--arch {arch}: {target} has no attribute {factory_name}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise LoadError(f"--arch {arch}: {target}.{factory_name} is not callable")
    try:
        model = obj()
    except Exception as exc:
        raise LoadError(f"--arch {arch}: calling {factory_name}() failed: "
                        f"{_one_line(exc)} (the factory must take no arguments)") from None
    if not isinstance(model, nn.Module):
        raise LoadError(f"--arch {arch}: {factory_name}() returned a {type(model).__name__}, "
                        "not a torch.nn.Module")
    return model


def _state_dict_of(obj: object, path: Path) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping) or not obj:
        raise LoadError(f"{path} holds a {type(obj).__name__}, not a model or a state dict")
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise LoadError(f"{path} holds a dict that is not a state dict (name -> tensor): for a "
                        "training checkpoint, save checkpoint['state_dict'] on its own")
    return dict(obj)


def _mismatch(model: nn.Module, state: Mapping[str, Tensor]) -> str:
    """One line on how ``state`` does not fit ``model`` (keys and shapes)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(own[k].shape) != tuple(state[k].shape)]

    def few(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")

    parts = []
    if missing:
        parts.append(f"missing keys {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {few(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch (file vs model) {few(shapes)}")
    hint = ""
    if unexpected and all(k.startswith("module.") for k in unexpected):
        hint = " (keys start with 'module.': saved from DataParallel; strip that prefix)"
    return "; ".join(parts) + hint


def _load_into_arch(state: Mapping[str, Tensor], arch: str, path: Path) -> nn.Module:
    model = _build_arch(arch)
    problem = _mismatch(model, state)
    if problem:
        raise LoadError(f"the weights in {path} do not fit --arch {arch}: {problem}")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise LoadError(f"the weights in {path} do not fit --arch {arch}: "
                        f"{' '.join(str(exc).split())}") from None
    return model.eval()


def _weights_only(path: Path) -> LoadError:
    return LoadError(f"{path} holds weights only (a state dict): pass --arch module:factory "
                     "(or --arch path/to/file.py:factory) to build the model")


def _load_untrusted(path: Path, kind: str, arch: str | None) -> nn.Module:
    """``--trust-pickle``: unpickle for real (this runs code from the file)."""
    warnings.warn(f"unpickling {path} with --trust-pickle: this runs code from the file",
                  UntrustedPickleWarning, stacklevel=3)
    try:
        if kind == "pickle":
            with path.open("rb") as fh:
                obj = pickle.load(fh)  # runs code: the user passed --trust-pickle
        else:
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise LoadError(f"cannot unpickle {path}: {_one_line(exc)}") from None
    if isinstance(obj, nn.Module):
        with contextlib.suppress(NotImplementedError):
            obj.eval()
        return obj
    state = _state_dict_of(obj, path)
    if arch is None:
        raise _weights_only(path)
    return _load_into_arch(state, arch, path)


def _load_model_cpu(path: Path, kind: str, arch: str | None, trust_pickle: bool) -> nn.Module:
    if kind == "export":
        return torch.export.load(str(path)).module()
    if kind == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript is deprecated in torch >= 2.10
            return torch.jit.load(str(path), map_location="cpu")
    if kind == "safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
        if arch is None:
            raise _weights_only(path)
        return _load_into_arch(state, arch, path)
    if kind in {"state_dict", "torch_legacy"}:
        try:
            obj = _safe_torch_load(path)
        except pickle.UnpicklingError as exc:  # the safe loader met an object it won't build
            if not _pickle_parses(path, kind):
                raise LoadError(f"cannot load model {path}: a corrupt or truncated "
                                f"{_KIND_NAMES[kind]} (its pickle does not decode)") from None
            if not trust_pickle:
                raise _refuse_pickle(path, _pickle_reason(exc)) from None
            return _load_untrusted(path, kind, arch)
        if isinstance(obj, nn.Module):  # allowlisted by the user via add_safe_globals
            return obj.eval()
        state = _state_dict_of(obj, path)
        if arch is None:
            raise _weights_only(path)
        return _load_into_arch(state, arch, path)
    if kind == "pickle":  # torch.load cannot read a plain pickle safely: it needs the magic
        if not trust_pickle:
            raise _refuse_pickle(path, "a plain Python pickle, not a torch.save file")
        return _load_untrusted(path, kind, arch)
    if kind == "empty":
        raise LoadError(f"model file {path} is empty")
    if kind == "image":
        raise LoadError(f"{path} is an image, not a torch.export (.pt2), TorchScript or "
                        "safetensors model: pass the model first, then the images")
    if kind == "zip":
        raise LoadError(f"{path} is a truncated, corrupt or unknown zip archive, not a "
                        "torch.export (.pt2) or TorchScript model: export the model again")
    raise LoadError(f"{path} is not a torch.export (.pt2), TorchScript, safetensors or "
                    "torch.save model file")


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    trust_pickle: bool = False,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A classifier from a model file, its format detected by content (see the module docs).

    Args:
        path: torch.export archive, TorchScript archive, safetensors weights, a
            ``torch.save``'d state dict, or (with ``trust_pickle``) a pickled module.
        arch: ``"module:factory"`` (imported with the working directory on ``sys.path``) or
            ``"path/to/file.py:factory"``; the factory takes no arguments and returns the
            untrained ``nn.Module`` into which weights-only files are loaded (strictly).
            Ignored for whole-model archives.
        trust_pickle: unpickle files that need arbitrary Python objects (runs code from the
            file; emits :class:`UntrustedPickleWarning`). Without it they are refused
            without being unpickled.
        device: where to put the model.

    Raises:
        LoadError: for every file that cannot or must not be loaded, with what to do.
    """
    path = Path(path)
    if not path.exists():
        raise LoadError(f"model file {path} does not exist")
    if not path.is_file():
        raise LoadError(f"model path {path} is not a file: pass {_WHOLE_MODEL}, or "
                        "safetensors weights with --arch")
    try:
        kind = sniff_model(path)
    except OSError as exc:
        raise LoadError(f"cannot read model file {path}: {_one_line(exc)}") from None
    try:
        model = _load_model_cpu(path, kind, arch, trust_pickle)
    except LoadError:
        raise
    except Exception as exc:  # torch raises many types for corrupt archives
        raise LoadError(f"cannot load model {path} (a corrupt or truncated "
                        f"{_KIND_NAMES.get(kind, 'file')}?): {_one_line(exc)}") from None
    try:
        return model.to(device)
    except Exception as exc:
        raise LoadError(f"cannot move model {path} to {device}: {_one_line(exc)}") from None


# --------------------------------------------------------------------------- images


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
        return _load_image_files(image_files(path), channels, size, where=f"images in {path}")
    if not path.exists():
        raise InputError(f"images path {path} does not exist")
    if not path.is_file():
        raise InputError(f"images path {path} is neither a folder nor a file")
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise InputError(f"cannot read images from {path}: {_one_line(exc)}") from None
    if head.startswith((_PNG_MAGIC, _JPEG_MAGIC)):
        return _load_image_files([path], channels, size, where=str(path))
    tensor = _to_image_tensor(_load_tensor_file(path, head), path)
    tensor = _convert_channels(tensor, channels, path)
    if size is not None and tuple(tensor.shape[-2:]) != tuple(size):
        tensor = F.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False,
                               antialias=True)
    return Images(tensor.contiguous(), [f"{path.name}[{i}]" for i in range(tensor.shape[0])])


def _refused_tensor_pickle(path: Path, reason: str) -> InputError:
    return InputError(f"{path} is refused: {reason}, and loading it would run code from the "
                      "file; save a plain tensor with torch.save(tensor), or use .npy or "
                      ".safetensors")


def _load_tensor_file(path: Path, head: bytes) -> object:
    """The object in a tensor file, by content: npy, safetensors, else ``torch.load``."""
    try:
        if head.startswith(_NPY_MAGIC):
            try:
                return torch.from_numpy(np.load(path, allow_pickle=False))
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise _refused_tensor_pickle(path, "the .npy file holds Python objects "
                                                 "(a pickle)") from None
                raise
        if _is_safetensors(path, head):
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
            return _safe_torch_load(path)
        except pickle.UnpicklingError as exc:
            if not _pickle_parses(path, kind):
                raise InputError(f"cannot read images from {path}: a corrupt or truncated "
                                 f"{_KIND_NAMES[kind]} (its pickle does not decode)") from None
            raise _refused_tensor_pickle(path, _pickle_reason(exc)) from None
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read images from {path} (expected a folder of PNG/JPEG "
                         f"files or a .pt, .npy or .safetensors tensor): {_one_line(exc)}"
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


def _read_image(file: Path, channels: int | None, size: tuple[int, int] | None) -> np.ndarray:
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
                         f"{_one_line(exc)}") from None
    if size is not None and arr.shape[:2] != tuple(size):
        arr = _resize(arr, size)
    return arr


def _load_image_files(
    files: list[Path], channels: int | None, size: tuple[int, int] | None, where: str
) -> Images:
    arrays = [_read_image(file, channels, size) for file in files]
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


# --------------------------------------------------------------------------- models, helpers


def infer_input_channels(model: nn.Module, height: int, width: int) -> int | None:
    """The number of input channels (1 or 3) that ``model`` accepts at ``height x width``.

    Runs the model on zeros ``(1, C, H, W)`` for ``C`` = 1, then 3 (without gradients,
    warnings silenced, in eval mode where the model allows it; its training flag is put
    back) and returns the first ``C`` whose output is 2-D ``(1, k)``; ``None`` if neither.
    """
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    with contextlib.suppress(NotImplementedError):
        model.eval()
    try:
        for channels in (1, 3):
            x = torch.zeros(1, channels, height, width, device=device, dtype=dtype)
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = model(x)
            except Exception:
                continue
            if isinstance(out, Tensor) and out.ndim == 2:
                return channels
        return None
    finally:
        if was_training:
            with contextlib.suppress(NotImplementedError):
                model.train(True)


class Normalized(nn.Module):
    """``model((x - mean) / std)``, with ``mean`` and ``std`` as ``(1, C, 1, 1)`` buffers.

    ``train()``/``eval()`` set this module's flag and pass it on to the children that
    accept it: a torch.export module (which refuses both) is left as it was exported.
    """

    def __init__(self, model: nn.Module, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        """The wrapped model on the normalized input."""
        channels = self.mean.shape[1]
        if channels != 1 and x.ndim == 4 and x.shape[1] != channels:
            raise OptionError(f"--mean/--std have {channels} values but the images have "
                              f"{x.shape[1]} channels")
        return self.model((x - self.mean) / self.std)

    def train(self, mode: bool = True) -> Normalized:
        """Set the training flag here and in every child that accepts it."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        for child in self.children():
            with contextlib.suppress(NotImplementedError):
                child.train(mode)
        return self


def _stats(values: Sequence[float], name: str) -> Tensor:
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise OptionError(f"--{name} must be numbers, got {values!r}") from None
    if not floats:
        raise OptionError(f"--{name} needs at least one value")
    if not all(np.isfinite(floats)):
        raise OptionError(f"--{name} must be finite, got {floats}")
    return torch.tensor(floats, dtype=torch.float32).view(1, -1, 1, 1)


def with_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]
                       ) -> Normalized:
    """``model`` behind per-channel normalization ``(x - mean) / std`` (see :class:`Normalized`).

    ``mean`` and ``std`` hold one value per channel, or one value for all channels. The
    wrapper's parameters are the model's, so ``next(wrapper.parameters())`` tells its device
    and dtype; it is differentiable twice wherever the model is.

    Raises:
        OptionError: empty or non-finite values, ``std <= 0``, or lengths that differ
            (other than 1).
    """
    mean_t, std_t = _stats(mean, "mean"), _stats(std, "std")
    if (std_t <= 0).any():
        raise OptionError(f"--std must be positive, got {std_t.flatten().tolist()}")
    if mean_t.shape[1] != std_t.shape[1] and 1 not in (mean_t.shape[1], std_t.shape[1]):
        raise OptionError(f"--mean has {mean_t.shape[1]} values and --std {std_t.shape[1]}: "
                          "give one per channel (or one for all)")
    channels = max(mean_t.shape[1], std_t.shape[1])
    mean_t = mean_t.expand(1, channels, 1, 1).clone()
    std_t = std_t.expand(1, channels, 1, 1).clone()
    param = next(iter(model.parameters()), None)
    if param is not None and param.is_floating_point():
        mean_t, std_t = (t.to(device=param.device, dtype=param.dtype) for t in (mean_t, std_t))
    return Normalized(model, mean_t, std_t)


# --------------------------------------------------------------------------- labels


def load_labels(path: str | Path, sources: list[str], num_classes: int | None = None) -> Tensor:
    """Targets (int64, one per source) from a CSV with header ``name,label``.

    Names must match ``sources`` exactly (file names for a folder, ``"file[i]"`` for a
    tensor file); every image needs a label, every name must be an image, and labels must be
    integers in ``0 .. num_classes - 1`` (``>= 0`` when ``num_classes`` is ``None``).

    Raises:
        InputError: with a one-line message naming the first offending name or row.
    """
    import csv

    path = Path(path)
    if not path.is_file():
        raise InputError(f"labels file {path} does not exist")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            if "name" not in header or "label" not in header:
                raise InputError(f"labels file {path} needs a header line with columns "
                                 f"name,label (found: {','.join(header) or 'nothing'})")
            i_name, i_label = header.index("name"), header.index("label")
            rows: dict[str, str] = {}
            for line, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) <= max(i_name, i_label):
                    raise InputError(f"{path} line {line}: expected name,label, got "
                                     f"{','.join(row)!r}")
                name, label = row[i_name].strip(), row[i_label].strip()
                if name in rows:
                    raise InputError(f"{path} line {line}: {name} is labelled twice")
                rows[name] = label
    except InputError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read labels {path} (need a CSV with columns name,label): "
                         f"{_one_line(exc)}") from None
    known = set(sources)
    unknown = [name for name in rows if name not in known]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        example = f", e.g. {sources[0]}" if sources else ""
        raise InputError(f"{path} labels {unknown[0]}, which is not among the images{more}; "
                         f"names must match the image names exactly{example}")
    missing = [s for s in sources if s not in rows]
    if missing:
        raise InputError(f"{path} has no label for {missing[0]}"
                         + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    labels = []
    for name in sources:
        text = rows[name]
        try:
            value = int(text)
        except ValueError:
            raise InputError(f"{path}: the label of {name} is {text!r}, not an integer") from None
        if value < 0 or (num_classes is not None and value >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise InputError(f"{path}: the label of {name} is {value}, outside {bound}")
        labels.append(value)
    return torch.tensor(labels, dtype=torch.long)
