"""Pickles: why the safe loader refused one, whether it decodes at all, and the safe loader
itself (``torch.load(weights_only=True)``, which never runs pickled code)."""

from __future__ import annotations

import io
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

import torch

from ..errors import LoadError

#: How past a refusal: the option's names and what it does.
TRUST_ADVICE = ("pass --trust-code (or --trust-pickle) only if you trust its source: it runs "
                "code from the file")


class UntrustedPickleWarning(UserWarning):
    """A model was unpickled with ``--trust-pickle``: that ran code from the file."""


def pickle_reason(exc: BaseException) -> str:
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


def pickle_parses(path: Path, kind: str) -> bool:
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


def refuse_pickle(path: Path, reason: str) -> LoadError:
    return LoadError(
        f"{path} is a pickle that cannot be loaded safely ({reason}); loading it would run "
        "code from the file: export the model with torch.export (.pt2) or save its state "
        f"dict as safetensors and pass --arch, or {TRUST_ADVICE}"
    )


def safe_torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)``: never runs pickled code. Raises as torch does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Detected pickle protocol 4 ..." and similar
        return torch.load(path, map_location="cpu", weights_only=True)
