"""Models from files (:func:`load_model`), by content rather than by file suffix.

- torch.export archives (``.pt2``): read by :mod:`attrcert.loading.export_archive`, which
  refuses every part of the archive that would run code when loaded; one exported with a
  static batch runs a chunk of that many rows per call
  (:class:`~attrcert.loading.batching.StaticBatch`);
- TorchScript archives: TorchScript's own unpickler, which builds no Python objects;
- weights only (a state dict), as safetensors or as ``torch.save(model.state_dict())``
  (read with ``torch.load(weights_only=True)``): rebuilt with ``--arch module:factory`` or
  ``--arch path/to/file.py:factory`` (:mod:`attrcert.loading.arch`), or with
  ``--arch timm:NAME`` / ``--arch torchvision:NAME`` (:mod:`attrcert.loading.libraries`);
- anything else that is a pickle (``torch.save(model)``, legacy ``torch.save`` files, plain
  ``pickle.dump`` files) runs code from the file when loaded: refused unless
  ``trust_pickle=True`` (``--trust-pickle``), and then loaded with a
  :class:`~attrcert.loading.pickles.UntrustedPickleWarning`.

Every failure is a :class:`~attrcert.errors.LoadError` with a one-line message that says what
is wrong and what to do; no torch traceback escapes.
"""

from __future__ import annotations

import contextlib
import pickle
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import LoadError, one_line
from .arch import load_into_arch, state_dict_of, weights_only_error
from .batching import with_static_batch
from .export_archive import load_export_archive, quiet_torch
from .formats import KIND_NAMES, sniff_model
from .pickles import (
    UntrustedPickleWarning,
    pickle_parses,
    pickle_reason,
    refuse_pickle,
    safe_torch_load,
)

_WHOLE_MODEL = "a torch.export (.pt2) or TorchScript archive"


def _warn_untrusted(message: str) -> None:
    warnings.warn(message, UntrustedPickleWarning, stacklevel=4)


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
        raise LoadError(f"cannot unpickle {path}: {one_line(exc)}") from None
    if isinstance(obj, nn.Module):
        with contextlib.suppress(NotImplementedError):
            obj.eval()
        return obj
    state = state_dict_of(obj, path)
    if arch is None:
        raise weights_only_error(path)
    return load_into_arch(state, arch, path)


def _load_model_cpu(path: Path, kind: str, arch: str | None, trust_pickle: bool) -> nn.Module:
    if kind == "export":
        return with_static_batch(load_export_archive(path, trust_pickle, _warn_untrusted))
    if kind == "torchscript":
        with warnings.catch_warnings(), quiet_torch():
            warnings.simplefilter("ignore")  # TorchScript is deprecated in torch >= 2.10
            return torch.jit.load(str(path), map_location="cpu")
    if kind == "safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
        if arch is None:
            raise weights_only_error(path)
        return load_into_arch(state, arch, path)
    if kind in {"state_dict", "torch_legacy"}:
        try:
            obj = safe_torch_load(path)
        except pickle.UnpicklingError as exc:  # the safe loader met an object it won't build
            if not pickle_parses(path, kind):
                raise LoadError(f"cannot load model {path}: a corrupt or truncated "
                                f"{KIND_NAMES[kind]} (its pickle does not decode)") from None
            if not trust_pickle:
                raise refuse_pickle(path, pickle_reason(exc)) from None
            return _load_untrusted(path, kind, arch)
        if isinstance(obj, nn.Module):  # allowlisted by the user via add_safe_globals
            return obj.eval()
        state = state_dict_of(obj, path)
        if arch is None:
            raise weights_only_error(path)
        return load_into_arch(state, arch, path)
    if kind == "pickle":  # torch.load cannot read a plain pickle safely: it needs the magic
        if not trust_pickle:
            raise refuse_pickle(path, "a plain Python pickle, not a torch.save file")
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
            Or ``"timm:NAME"`` / ``"torchvision:NAME"`` (optionally ``NAME(key=value, ...)``):
            the library's architecture, built untrained with the weights' class count.
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
        raise LoadError(f"cannot read model file {path}: {one_line(exc)}") from None
    try:
        model = _load_model_cpu(path, kind, arch, trust_pickle)
    except LoadError:
        raise
    except Exception as exc:  # torch raises many types for corrupt archives
        raise LoadError(f"cannot load model {path} (a corrupt or truncated "
                        f"{KIND_NAMES.get(kind, 'file')}?): {one_line(exc)}") from None
    try:
        return model.to(device)
    except Exception as exc:
        raise LoadError(f"cannot move model {path} to {device}: {one_line(exc)}") from None


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
