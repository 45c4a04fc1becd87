"""Models from files (:func:`load_model`), by content rather than by file suffix.

- torch.export archives (``.pt2``): read by :mod:`attrcert.loading.export_archive`, which
  refuses every part of the archive that would run code when loaded, and every operator
  outside :mod:`attrcert.loading.operators`' allowlist; one exported with a static batch
  runs a chunk of that many rows per call (:class:`~attrcert.loading.batching.StaticBatch`);
- TorchScript archives: their code read first (:mod:`attrcert.loading.torchscript_code`:
  pure operators, bounded loops, no ``__setstate__``), then ``torch.jit.load`` (TorchScript's
  own unpickler, which builds no Python objects), in eval mode;
- weights only (a state dict), as safetensors or as ``torch.save(model.state_dict())``
  (read with ``torch.load(weights_only=True)``): rebuilt with ``--arch module:factory`` or
  ``--arch path/to/file.py:factory`` (:mod:`attrcert.loading.arch`), or with
  ``--arch timm:NAME`` / ``--arch torchvision:NAME`` (:mod:`attrcert.loading.libraries`);
- anything else that is a pickle (``torch.save(model)``, legacy ``torch.save`` files, plain
  ``pickle.dump`` files) runs code from the file when loaded: refused unless
  ``trust_pickle=True`` (``--trust-code``, alias ``--trust-pickle``), and then loaded with a
  :class:`~attrcert.loading.pickles.UntrustedPickleWarning`.

Every zip archive (all but safetensors and legacy pickles) passes
:func:`~attrcert.loading.zipcheck.zip_problem` first, ``--trust-code`` or not; no weight may
be a meta tensor (:func:`~attrcert.loading.model_checks.check_weights`). Every failure is a
:class:`~attrcert.errors.LoadError` with a one-line message that says what is wrong and what
to do; no torch traceback escapes.
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
from .model_checks import check_weights
from .pickles import (
    UntrustedPickleWarning,
    pickle_parses,
    pickle_reason,
    refuse_pickle,
    safe_torch_load,
)
from .torchscript_code import torchscript_findings
from .zipcheck import zip_problem

_WHOLE_MODEL = "a torch.export (.pt2) or TorchScript archive"


def _warn_untrusted(message: str) -> None:
    warnings.warn(message, UntrustedPickleWarning, stacklevel=4)


def _into_arch(state: dict[str, Tensor], arch: str | None, path: Path) -> nn.Module:
    if arch is None:
        raise weights_only_error(path)
    check_weights(state.items(), path, weights_only=True)
    return load_into_arch(state, arch, path)


def _load_torchscript(path: Path, trust_pickle: bool) -> nn.Module:
    """A TorchScript archive whose code :func:`torchscript_findings` accepts (or any, with
    ``trust_pickle``, after a warning), loaded in eval mode."""
    try:
        findings = torchscript_findings(path)
    except ValueError as exc:
        raise LoadError(f"cannot load model {path}: a corrupt TorchScript archive ({exc}); "
                        "save the model again") from None
    remedy = ("save the model again with torch.jit.trace of a plain nn.Module, or export it "
              "with torch.export (.pt2)")
    if findings and not trust_pickle:
        raise LoadError(findings[0].message(path, remedy))
    if findings:
        _warn_untrusted(f"loading {path} with --trust-code: its entry {findings[0].entry} "
                        f"{findings[0].what}, and it runs code from the file")
    with warnings.catch_warnings(), quiet_torch():
        warnings.simplefilter("ignore")  # TorchScript is deprecated in torch >= 2.10
        model = torch.jit.load(str(path), map_location="cpu")
    return model.eval()


def _load_untrusted(path: Path, kind: str, arch: str | None) -> nn.Module:
    """``--trust-code``: unpickle for real (this runs code from the file)."""
    warnings.warn(f"unpickling {path} with --trust-code: this runs code from the file",
                  UntrustedPickleWarning, stacklevel=3)
    try:
        if kind == "pickle":
            with path.open("rb") as fh:
                obj = pickle.load(fh)  # runs code: the user passed --trust-code
        else:
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise LoadError(f"cannot unpickle {path}: {one_line(exc)}") from None
    if isinstance(obj, nn.Module):
        with contextlib.suppress(NotImplementedError):
            obj.eval()
        return obj
    return _into_arch(state_dict_of(obj, path), arch, path)


def _load_model_cpu(path: Path, kind: str, arch: str | None, trust_pickle: bool) -> nn.Module:
    if kind in {"export", "torchscript", "state_dict"}:
        problem = zip_problem(path)
        if problem is not None:
            raise LoadError(f"{path} is refused: {problem}; save or export the model again")
    if kind == "export":
        return with_static_batch(load_export_archive(path, trust_pickle, _warn_untrusted))
    if kind == "torchscript":
        return _load_torchscript(path, trust_pickle)
    if kind == "safetensors":
        from safetensors.torch import load_file

        return _into_arch(load_file(str(path), device="cpu"), arch, path)
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
        return _into_arch(state_dict_of(obj, path), arch, path)
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
    check_weights([*model.named_parameters(), *model.named_buffers()], path, weights_only=False)
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
