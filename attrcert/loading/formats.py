"""What a file holds, by its content (magic numbers, zip layout, pickle opcodes), never by
its suffix. Nothing here unpickles or imports anything from the file."""

from __future__ import annotations

import pickletools
import struct
import zipfile
from pathlib import Path

__all__ = ["KIND_NAMES", "is_safetensors", "sniff_model"]


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy (non-zip) torch.save
_PICKLE_SNIFF_OPS = 64
KIND_NAMES = {
    "export": "torch.export archive",
    "torchscript": "TorchScript archive",
    "safetensors": "safetensors file",
    "state_dict": "torch.save file",
    "torch_legacy": "legacy torch.save file",
    "pickle": "pickle",
}


def is_safetensors(path: Path, head: bytes) -> bool:
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
    if is_safetensors(path, head):
        return "safetensors"
    if head.startswith((PNG_MAGIC, JPEG_MAGIC)):
        return "image"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "zip"
        inner = [n.partition("/")[2] for n in names]  # below the archive's root folder
        if any(n in {"serialized_exported_program.json", "archive_format"}
               or n.startswith("models/") for n in inner):
            return "export"  # not any ".../models/...": TorchScript of timm.models has those
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "state_dict"
        return "zip"
    if head.startswith(ZIP_MAGIC):
        return "zip"  # a zip without its central directory: truncated
    if head[:1] == b"\x80":  # PROTO opcode: pickle protocol 2 or later
        return _pickle_kind(path) or "unknown"
    return "unknown"
