"""``--arch``: build a model and load a weights-only file (a state dict) into it, strictly.

``--arch module:factory`` (or ``path/to/file.py:factory``) imports the user's Python code
(by design: it builds the model); ``--arch timm:NAME`` and ``--arch torchvision:NAME`` build
a library's architecture untrained (:mod:`attrcert.loading.libraries`). The prefixes that
checkpoints carry (``module.`` from DataParallel, ``model.``, ``_orig_mod.`` from
``torch.compile``) are stripped when every key has them and the model's keys do not."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

from torch import Tensor, nn

from ..errors import LoadError, one_line
from .libraries import build_library_model, parse_library_arch

#: Prefixes that wrappers add to every key of a state dict, stripped by :func:`strip_prefixes`.
PREFIXES = ("module.", "model.", "_orig_mod.")


class WeightsConvertedWarning(UserWarning):
    """A weights file's dtype differs from the model ``--arch`` builds: its tensors were cast."""


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
                            f"{one_line(exc)}") from None
        return module
    try:
        with _on_sys_path(os.getcwd()):
            return importlib.import_module(target)
    except (Exception, SystemExit) as exc:
        raise LoadError(f"--arch {arch}: cannot import module {target} ({one_line(exc)}); "
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
    except (Exception, SystemExit) as exc:  # a factory that exits is bad input too
        raise LoadError(f"--arch {arch}: calling {factory_name}() failed: "
                        f"{one_line(exc)} (the factory must take no arguments)") from None
    if not isinstance(model, nn.Module):
        raise LoadError(f"--arch {arch}: {factory_name}() returned a {type(model).__name__}, "
                        "not a torch.nn.Module")
    return model


def state_dict_of(obj: object, path: Path) -> dict[str, Tensor]:
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


def _warn_converted(model: nn.Module, state: Mapping[str, Tensor], path: Path) -> None:
    """One warning when ``load_state_dict`` will cast weights to the model's dtypes."""
    own = model.state_dict()
    cast = [k for k in own if k in state and state[k].dtype != own[k].dtype]
    if cast:
        first = cast[0]
        more = f" and {len(cast) - 1} more" if len(cast) > 1 else ""
        have = str(state[first].dtype).removeprefix("torch.")
        want = str(own[first].dtype).removeprefix("torch.")
        warnings.warn(f"the weights in {path} are {have} but --arch builds {want} "
                      f"({first}{more}): converted to {want}", WeightsConvertedWarning,
                      stacklevel=4)


def strip_prefixes(state: Mapping[str, Tensor], own: set[str]) -> dict[str, Tensor]:
    """``state`` without the :data:`PREFIXES` that all its keys share and the keys ``own``
    of the model do not (repeatedly: ``module.model.fc.weight`` -> ``fc.weight``)."""
    current = dict(state)
    while current and not set(current) <= own:
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in current) and not (
                    own and all(k.startswith(prefix) for k in own)):
                current = {k[len(prefix):]: v for k, v in current.items()}
                break
        else:
            break
    return current


def load_into_arch(state: Mapping[str, Tensor], arch: str, path: Path) -> nn.Module:
    """The model ``arch`` builds with ``state`` loaded strictly (weights of another dtype
    are cast to the model's, with a :class:`WeightsConvertedWarning`)."""
    library = parse_library_arch(arch)
    model = (build_library_model(library, strip_prefixes(state, set())) if library
             else _build_arch(arch))
    state = strip_prefixes(state, set(model.state_dict()))
    problem = _mismatch(model, state)
    if problem:
        raise LoadError(f"the weights in {path} do not fit --arch {arch}: {problem}")
    _warn_converted(model, state, path)
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise LoadError(f"the weights in {path} do not fit --arch {arch}: "
                        f"{' '.join(str(exc).split())}") from None
    return model.eval()


def weights_only_error(path: Path) -> LoadError:
    return LoadError(f"{path} holds weights only (a state dict): pass --arch timm:NAME, "
                     "--arch torchvision:NAME or --arch path/to/file.py:factory to build "
                     "the model")
