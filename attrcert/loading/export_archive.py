"""torch.export archives (``.pt2``), read without running code from them.

``torch.export.load`` trusts its input. In torch 2.13 it

- unpickles (``torch.load(weights_only=False)``, ``pickle.loads``) every weight and constant
  that the archive's JSON configs mark ``use_pickle``, torchbind and opaque constants, legacy
  weight and constant files, and the sample inputs (``weights_only=True`` first and, when
  that fails, ``weights_only=False``);
- evaluates the graph's symbolic shape expressions with ``sympy.sympify`` (``eval``);
- ``exec``\\ s the archive's ``guards_code`` when ``.module()`` builds the module;
- resolves each node's target by ``getattr`` from the ``torch`` module, so that a target such
  as ``torch.os.system`` calls any function reachable from ``torch`` when the model runs;
- writes the forward's argument names and parameter names into Python code it generates
  and ``exec``\\ s;
- loads AOTInductor shared libraries (native code).

:func:`load_export_archive` first reads the zip with :mod:`zipfile` and its JSON with
:mod:`json` (:func:`inspect_archive`): each of the above is a :class:`Finding` naming its
entry, refused unless ``trust_pickle`` (``--trust-code``, which then loads the file with
torch's own loader after a warning); a corrupt archive (unsafe entry names, a tensor that
reaches past its record, a missing part) is refused outright. It then hands torch a copy of
the archive holding only the entries torch needs, with the sample inputs emptied (they are
not needed to run the model), with torch's logging silenced so that a failure is one line,
and checks every call of the loaded graph once more (:func:`check_graph`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import LoadError, one_line
from .export_program import (
    FQN,
    SAFE_MATH,
    SAFE_OPERATOR,
    SAFE_TORCH,
    Finding,
    operator_allowed,
    program_findings,
)
from .operators import inactive_when, sampling
from .pickles import TRUST_ADVICE

__all__ = ["Archive", "check_graph", "inspect_archive", "load_export_archive", "quiet_torch"]

#: The layout of a torch.export archive (``torch.export.pt2_archive.constants``, format 0).
ARCHIVE_VERSION = "0"
MODEL = "model"
WEIGHTS_DIR = "data/weights/"
CONSTANTS_DIR = "data/constants/"
SAMPLE_INPUTS = "data/sample_inputs/{}.pt"
NATIVE_CODE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia")
#: Entries torch reads to rebuild the model; nothing else is handed to it.
NEEDED = re.compile(r"^(archive_format|archive_version|byteorder|\.data/.*|models/[^/]+\.json|"
                    r"data/weights/[^/]+|data/constants/[^/]+|data/sample_inputs/[^/]+|"
                    r"extra/[^/]+)$")

_RECORD = re.compile(r"^[A-Za-z0-9_.-]+$")
ELEMENT_SIZES = {"BYTE": 1, "CHAR": 1, "SHORT": 2, "INT": 4, "LONG": 8, "HALF": 2, "FLOAT": 4,
                 "DOUBLE": 8, "COMPLEXHALF": 4, "COMPLEXFLOAT": 8, "COMPLEXDOUBLE": 16, "BOOL": 1,
                 "BFLOAT16": 2, "UINT16": 2, "FLOAT8E4M3FN": 1, "FLOAT8E5M2": 1,
                 "FLOAT8E4M3FNUZ": 1, "FLOAT8E5M2FNUZ": 1, "FLOAT8E8M0FNU": 1, "UINT32": 4,
                 "UINT64": 8}
#: ``torch._export.serde.schema.ScalarType``'s codes.
DTYPE_CODES = {1: "BYTE", 2: "CHAR", 3: "SHORT", 4: "INT", 5: "LONG", 6: "HALF", 7: "FLOAT",
               8: "DOUBLE", 9: "COMPLEXHALF", 10: "COMPLEXFLOAT", 11: "COMPLEXDOUBLE", 12: "BOOL",
               13: "BFLOAT16", 28: "UINT16", 29: "FLOAT8E4M3FN", 30: "FLOAT8E5M2",
               31: "FLOAT8E4M3FNUZ", 32: "FLOAT8E5M2FNUZ", 33: "FLOAT8E8M0FNU", 34: "UINT32",
               35: "UINT64"}


@dataclass
class Archive:
    """What :func:`inspect_archive` read: the root folder, the entries, the findings."""

    root: str
    names: list[str]
    findings: list[Finding] = field(default_factory=list)

    def entry(self, name: str) -> str:
        """The full entry name of ``name`` (relative to the root)."""
        return self.root + name


class _Corrupt(Exception):
    """The archive is not a well-formed torch.export archive."""


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """No logging while torch reads an archive: its own tracebacks (``W... torch/export``)
    must not reach stderr, where attrcert prints one line per failure."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


# --------------------------------------------------------------------------- reading the zip


def _root_and_names(zf: zipfile.ZipFile) -> tuple[str, list[str]]:
    names = zf.namelist()
    if not names:
        raise _Corrupt("it holds no entries")
    for name in names:
        if (name.startswith(("/", "\\")) or "\\" in name or "\x00" in name
                or any(part in {"..", "."} for part in name.split("/")) or ":" in name):
            raise _Corrupt(f"entry {name!r} is not a safe archive path")
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        raise _Corrupt("its entries do not share one root folder")
    root = roots.pop() + "/"
    return root, [name[len(root):] for name in names]


def _read_json(zf: zipfile.ZipFile, entry: str) -> Any:
    try:
        return json.loads(zf.read(entry))
    except KeyError:
        raise _Corrupt(f"entry {entry} is missing") from None
    except (ValueError, RecursionError) as exc:
        raise _Corrupt(f"entry {entry} is not valid JSON: {one_line(exc)}") from None


def _payload_config(zf: zipfile.ZipFile, archive: Archive, name: str, folder: str,
                    kind: str) -> None:
    """Check one weights or constants config: no pickles, every tensor inside its record."""
    entry = archive.entry(name)
    config = _read_json(zf, entry)
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise _Corrupt(f"entry {entry} is not a payload config")
    sizes = {info.filename: info.file_size for info in zf.infolist()}
    for fqn, meta in config["config"].items():
        if not isinstance(fqn, str) or not FQN.match(fqn):
            raise _Corrupt(f"{entry} names a {kind} {str(fqn)[:60]!r}, not a module path")
        if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
            raise _Corrupt(f"{entry}: {kind} {fqn} has no path_name")
        record = meta["path_name"]
        if not _RECORD.match(record):
            raise _Corrupt(f"{entry}: {kind} {fqn} names the record {record[:60]!r}")
        where = f"{entry} ({kind} {fqn})"
        if meta.get("use_pickle"):
            archive.findings.append(Finding(where, "is a pickle (\"use_pickle\": true)"))
            continue
        if record.startswith("custom_obj_"):
            archive.findings.append(Finding(where, "is a torchbind object (a pickle)"))
            continue
        if record.startswith("opaque_obj_"):
            archive.findings.append(Finding(where, "is an opaque Python object (a pickle)"))
            continue
        device = (meta.get("tensor_meta") or {}).get("device") if isinstance(
            meta.get("tensor_meta"), dict) else None
        if isinstance(device, dict) and device.get("type") == "meta":
            raise _Corrupt(f"{where} is a meta tensor (a shape without values: the model was "
                           "exported on the meta device)")
        full = archive.root + folder + record
        if full not in sizes:
            raise _Corrupt(f"{where} points to the missing record {folder}{record}")
        _check_extent(meta.get("tensor_meta"), sizes[full], where)


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, dict) and isinstance(value.get("as_int"), int) \
            and not isinstance(value.get("as_int"), bool):
        return int(value["as_int"])
    raise _Corrupt(f"{where}: a size, stride or offset is not a plain integer")


def _check_extent(meta: Any, nbytes: int, where: str) -> None:
    """The tensor ``meta`` describes must lie inside its record of ``nbytes`` bytes."""
    if not isinstance(meta, dict):
        raise _Corrupt(f"{where} has no tensor_meta")
    dtype = DTYPE_CODES.get(meta.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise _Corrupt(f"{where} has an unknown dtype code {meta.get('dtype')!r}")
    shape = [_as_int(s, where) for s in meta.get("sizes", [])]
    strides = [_as_int(s, where) for s in meta.get("strides", [])]
    offset = _as_int(meta.get("storage_offset", {"as_int": 0}), where)
    if len(shape) != len(strides) or min([*shape, *strides, offset, 0]) < 0:
        raise _Corrupt(f"{where} has inconsistent sizes, strides or offset")
    numel = math.prod(shape)
    size = ELEMENT_SIZES[dtype]
    if numel == 0:
        return
    extent = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + 1
    if nbytes == 0 or extent * size > nbytes:
        raise _Corrupt(f"{where} describes {extent * size} bytes but its record holds "
                       f"{nbytes}")


# --------------------------------------------------------------------------- the graph JSON



def inspect_archive(path: Path) -> Archive:
    """Read a torch.export archive without torch: its layout, and every :class:`Finding`.

    Raises:
        LoadError: the archive is corrupt or not a torch.export archive of format 0.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            root, names = _root_and_names(zf)
            archive = Archive(root, names)
            if "archive_format" not in names or "archive_version" not in names:
                if "serialized_exported_program.json" in names or "version" in names:
                    archive.findings.append(Finding(
                        root + "serialized_exported_program.json",
                        "is in the pre-2.7 torch.export format, whose weights are pickles"))
                    return archive
                raise _Corrupt("it has no archive_format/archive_version entries")
            version = zf.read(archive.entry("archive_version")).decode("utf-8", "replace")
            if version.strip() != ARCHIVE_VERSION:
                raise _Corrupt(f"its archive version is {version.strip()[:20]!r}, not "
                               f"{ARCHIVE_VERSION} (made by another torch release?)")
            for folder in NATIVE_CODE_DIRS:
                native = [n for n in names if n.startswith(folder)]
                if native:
                    archive.findings.append(Finding(archive.entry(native[0]),
                                                    "is compiled native code"))
            if f"models/{MODEL}.json" not in names:
                raise _Corrupt(f"entry models/{MODEL}.json is missing")
            for name in names:
                if name.startswith("models/") and name.endswith(".json"):
                    model = name[len("models/"):-len(".json")]
                    try:
                        archive.findings.extend(program_findings(
                            _read_json(zf, archive.entry(name)), archive.entry(name)))
                    except ValueError as exc:
                        raise _Corrupt(str(exc)) from None
                    for legacy in (f"{WEIGHTS_DIR}{model}.pt", f"{CONSTANTS_DIR}{model}.pt"):
                        if legacy in names:
                            archive.findings.append(Finding(archive.entry(legacy),
                                                            "is a legacy pickled file"))
                    _payload_config(zf, archive, f"{WEIGHTS_DIR}{model}_weights_config.json",
                                    WEIGHTS_DIR, "weight")
                    _payload_config(zf, archive,
                                    f"{CONSTANTS_DIR}{model}_constants_config.json",
                                    CONSTANTS_DIR, "constant")
            return archive
    except _Corrupt as exc:
        raise LoadError(f"cannot load model {path}: a corrupt torch.export archive ({exc}); "
                        "export the model again") from None
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as exc:
        raise LoadError(f"cannot load model {path}: a corrupt torch.export archive "
                        f"({one_line(exc)}); export the model again") from None


def _sanitized_copy(path: Path, archive: Archive) -> io.BytesIO:
    """The archive with only :data:`NEEDED` entries, sample inputs emptied (torch then skips
    them: they are only examples, never needed to run the model)."""
    out = io.BytesIO()
    samples = {SAMPLE_INPUTS.format(n[len("models/"):-len(".json")])
               for n in archive.names if n.startswith("models/")}
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for name in archive.names:
            if not NEEDED.match(name):
                continue
            data = b"" if name in samples else zin.read(archive.entry(name))
            zout.writestr(archive.entry(name), data)
    out.seek(0)
    return out


def _node_refusal(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str | None:
    """Why a node of the loaded graph must not run, the same rules as
    :func:`~.export_program.node_refusal` on the archive's JSON (``None``: it may)."""
    import operator

    target = node.target
    name = getattr(target, "__name__", "")
    if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
        if not operator_allowed(target.namespace, target._opname):
            return f"calls {target!r}, which is not a pure tensor operator attrcert allows"
        if target.namespace == "aten" and sampling(target._opname):
            condition = inactive_when(target._opname)
            if condition is None:
                return f"calls {target!r}, which draws random numbers"
            arg, position, value = condition
            given = node.kwargs.get(arg, node.args[position] if len(node.args) > position
                                    else (value if arg == "dropout_p" else None))
            if not (given == value and type(given) is type(value)):
                return f"calls {target!r} so that it draws random numbers"
        return None
    if node.op == "call_function" and isinstance(target, torch._ops.HigherOrderOperator):
        ok = operator_allowed("higher_order", target.name())
    elif node.op == "call_function":
        ok = (getattr(operator, name, None) is target and name in SAFE_OPERATOR) or (
            getattr(math, name, None) is target and name in SAFE_MATH) or (
            getattr(torch, name, None) is target and name in SAFE_TORCH)
    else:
        ok = node.op == "call_module" and isinstance(gm.get_submodule(str(target)),
                                                     torch.fx.GraphModule)
    return None if ok else (f"calls {target!r} ({node.op}), which is not a pure tensor "
                            "operator attrcert allows")


def check_graph(module: nn.Module, path: Path) -> None:
    """Every call in the loaded graph (and its subgraphs) is allowed (:func:`_node_refusal`):
    the archive's JSON was checked before torch read it; this checks what torch built."""
    for gm in (m for m in module.modules() if isinstance(m, torch.fx.GraphModule)):
        for node in gm.graph.nodes:
            if node.op in {"placeholder", "output", "get_attr"}:
                continue
            refusal = _node_refusal(node, gm)
            if refusal is not None:
                raise LoadError(f"{path} is refused: its graph {refusal}; {TRUST_ADVICE}")


def load_export_archive(path: Path, trust_pickle: bool, warn: Any) -> nn.Module:
    """The module of a torch.export archive, loaded without running code from the file.

    Args:
        path: the ``.pt2`` file.
        trust_pickle: load an archive with :class:`Finding`\\ s anyway, with torch's own
            loader (this may run code from the file), after calling ``warn(message)``.
        warn: called with the warning text when ``trust_pickle`` is used.

    Raises:
        LoadError: a finding without ``trust_pickle`` (naming the entry), a corrupt
            archive, or a failure inside torch (one line, torch's log silenced).
    """
    archive = inspect_archive(path)
    if archive.findings and not trust_pickle:
        raise LoadError(archive.findings[0].message(path))
    try:
        with quiet_torch(), contextlib.redirect_stdout(io.StringIO()):
            if archive.findings:
                first = archive.findings[0]
                warn(f"loading {path} with --trust-code: its entry {first.entry} "
                     f"{first.what}, and loading it runs code from the file")
                return torch.export.load(str(path)).module()
            module = torch.export.load(_sanitized_copy(path, archive)).module()
    except LoadError:
        raise
    except Exception as exc:  # torch raises many types for corrupt archives
        raise LoadError(f"cannot load model {path}: a corrupt torch.export archive "
                        f"({one_line(exc)}); export the model again") from None
    check_graph(module, path)
    return module
