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
entry, refused unless ``trust_pickle`` (``--trust-pickle``, which then loads the file with
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
import keyword
import logging
import math
import re
import tokenize
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import LoadError, one_line

__all__ = ["Finding", "check_graph", "inspect_archive", "load_export_archive", "quiet_torch"]

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

#: Operator namespaces whose ops compute on tensors only (``torch.ops.<ns>.<op>``).
SAFE_NAMESPACES = frozenset({"aten", "prims"})
#: Higher-order ops that run subgraphs of the archive (which are checked in turn).
SAFE_HIGHER_ORDER = frozenset({"cond", "while_loop", "map_impl", "scan", "invoke_subgraph",
                               "wrap_with_set_grad_enabled", "wrap_with_autocast",
                               "auto_functionalized", "auto_functionalized_v2", "with_effects"})
#: ATen ops that touch the file system.
REFUSED_OPS = frozenset({"aten.from_file"})
SAFE_OPERATOR = frozenset({"getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow",
                           "neg", "pos", "abs", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_",
                           "xor", "not_", "invert"})
SAFE_TORCH = frozenset({"sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_ite",
                        "sym_sqrt", "sym_sum", "_sym_sqrt"})
_OP_TARGET = re.compile(r"^torch\.ops\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?$")
#: Names that may appear in a symbolic shape expression: sympy's constructors and the
#: functions torch registers for sympify (``torch.utils._sympy.functions``).
SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs",
    "floor", "ceiling", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "Equality", "Unequality", "And", "Or", "Not",
    "Piecewise", "ITE", "oo", "zoo", "nan", "true", "false", "True", "False", "None", "sqrt",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "TrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
    "RoundDecimal", "ToFloat", "Identity", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or",
})
ASSUMPTIONS = frozenset({"positive", "negative", "integer", "real", "nonnegative", "nonpositive",
                         "finite", "infinite", "zero", "nonzero", "commutative", "even", "odd",
                         "rational", "extended_real", "extended_positive", "extended_negative",
                         "extended_nonnegative", "extended_nonpositive", "prime", "composite"})
#: Shape-symbol names torch writes (``s0``, ``u3``, ``zuf0`` ...): letters then digits, so
#: that no Python builtin (``eval``, ``open``) can pass for one.
_SYMBOL = re.compile(r"^[a-z]{1,4}[0-9]+$")
_EXPR_OPS = frozenset({"(", ")", ",", "+", "-", "*", "/", "**", "//", "%", "=", "<", ">", "<=",
                       ">=", "==", "!=", "&", "|", "~"})
_GUARD_NAMES = frozenset({"L", "and", "or", "not", "size", "stride", "storage_offset", "dim"})
_GUARD_OPS = _EXPR_OPS - {"="} | {"[", "]", "."}
_STRING = re.compile(r"""^(?:'[A-Za-z][A-Za-z0-9_]*'|"[A-Za-z][A-Za-z0-9_]*")$""")
_FQN = re.compile(r"^[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*$")
_RECORD = re.compile(r"^[A-Za-z0-9_.-]+$")
MAX_EXPRESSION = 10_000
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


@dataclass(frozen=True)
class Finding:
    """A part of the archive that would run code when torch loads it.

    Attributes:
        entry: the archive entry (or ``entry: field``) it is in.
        what: what it is, for the user.
    """

    entry: str
    what: str

    def message(self, path: Path) -> str:
        """The one-line refusal."""
        return (f"{path} is refused: its entry {self.entry} {self.what}, which would run code "
                "from the file when loaded; pass --trust-pickle only if you trust its source, "
                "or export the model again with torch.export.save from a plain nn.Module")


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
    for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > 64 * max(
                info.compress_size, 1):
            raise _Corrupt(f"entry {info.filename} expands {info.file_size} bytes from "
                           f"{info.compress_size} (a zip bomb?)")
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
        if not isinstance(fqn, str) or not _FQN.match(fqn):
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


def _tokens(text: str) -> list[tokenize.TokenInfo]:
    if len(text) > MAX_EXPRESSION or "\n" in text or "\r" in text:
        raise ValueError("too long or several lines")
    return [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
            if t.type not in {tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER}]


def expression_is_plain(text: str) -> bool:
    """Whether a symbolic shape expression (which torch hands to ``sympy.sympify``, that is
    to ``eval``) holds only sympy constructors, shape symbols, numbers and arithmetic: no
    attribute access, no subscripts, no other names."""
    try:
        for tok in _tokens(text):
            if tok.type == tokenize.NAME:
                if not (tok.string in SYMPY_NAMES or tok.string in ASSUMPTIONS
                        or _SYMBOL.match(tok.string)):
                    return False
            elif tok.type == tokenize.OP:
                if tok.string not in _EXPR_OPS:
                    return False
            elif tok.type == tokenize.STRING:
                if not _STRING.match(tok.string):
                    return False
            elif tok.type != tokenize.NUMBER:
                return False
    except (tokenize.TokenError, IndentationError, SyntaxError, ValueError):
        return False
    return True


def guard_is_plain(text: str) -> bool:
    """Whether a shape guard (``exec``\\ d by ``.module()``) only compares sizes and strides
    of the inputs (``L['x'].size()[0] <= 1024``) with numbers."""
    try:
        for tok in _tokens(text):
            if tok.type == tokenize.NAME:
                if not (tok.string in _GUARD_NAMES or tok.string in SYMPY_NAMES):
                    return False
            elif tok.type == tokenize.OP:
                if tok.string not in _GUARD_OPS:
                    return False
            elif tok.type == tokenize.STRING:
                if not _STRING.match(tok.string):
                    return False
            elif tok.type != tokenize.NUMBER:
                return False
    except (tokenize.TokenError, IndentationError, SyntaxError, ValueError):
        return False
    return True


def target_is_safe(target: str) -> bool:
    """Whether a node target (a dotted name torch resolves by ``getattr``) is a tensor
    operator of :data:`SAFE_NAMESPACES`, a checked higher-order op, or pure arithmetic."""
    found = _OP_TARGET.match(target)
    if found:
        namespace, op, overload = found.groups()
        if namespace == "higher_order":
            return overload is None and op in SAFE_HIGHER_ORDER
        return namespace in SAFE_NAMESPACES and f"{namespace}.{op}" not in REFUSED_OPS
    head, _, name = target.partition(".")
    if "." in name:
        return False
    if head == "_operator":
        return name in SAFE_OPERATOR
    if head == "torch":
        return name in SAFE_TORCH
    if head == "math":
        return callable(getattr(math, name, None)) and not name.startswith("_")
    return False


def _walk(obj: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """``(path, key, value)`` for every dict entry in ``obj``, depth first."""
    stack = [(obj, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                yield where, str(key), value
                stack.append((value, f"{where}/{key}"))
        elif isinstance(node, list):
            stack.extend((value, where) for value in node)


def _check_program(program: Any, entry: str, archive: Archive) -> None:
    """Findings in one ``models/*.json``: node targets, operator arguments, shape
    expressions, guards, and the names torch writes into generated code."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise _Corrupt(f"entry {entry} is not a serialized exported program")

    def find(where: str, what: str) -> None:
        archive.findings.append(Finding(f"{entry}: {where}", what))

    for guard in program.get("guards_code") or []:
        if not isinstance(guard, str) or not guard_is_plain(guard):
            find("guards_code", f"holds code that torch executes ({str(guard)[:60]!r})")
    for name in program.get("range_constraints") or {}:
        if not _SYMBOL.match(str(name)):
            find("range_constraints", f"names the shape symbol {str(name)[:60]!r}")
    for where, key, value in _walk(program["graph_module"]):
        if key == "nodes" and isinstance(value, list):
            for node in value:
                target = node.get("target") if isinstance(node, dict) else None
                if not isinstance(target, str) or not target_is_safe(target):
                    find("graph", f"calls {str(target)[:80]!r}, which is not a tensor "
                         "operator attrcert allows (aten, prims)")
        elif key == "as_operator":
            if not isinstance(value, str) or not target_is_safe(value):
                find("graph", f"passes the operator {str(value)[:80]!r}")
        elif key == "expr_str":
            if not isinstance(value, str) or not expression_is_plain(value):
                find(where.rsplit("/", 1)[-1] or "graph",
                     f"holds a shape expression that is not plain arithmetic "
                     f"({str(value)[:60]!r}; torch evaluates it with sympy.sympify)")
        elif key == "forward_arg_names" and isinstance(value, list):
            for arg in value:
                if not isinstance(arg, str) or not arg.isidentifier() or keyword.iskeyword(arg):
                    find("forward_arg_names", f"names the argument {str(arg)[:60]!r}, which "
                         "torch writes into generated code")
        elif key == "in_spec" and isinstance(value, str):
            _check_in_spec(value, find)
        elif key.endswith("_name") or key == "fqn":
            if isinstance(value, str) and value and not _FQN.match(value):
                find("signature", f"names the attribute {value[:60]!r}, which torch writes "
                     "into generated code")
        elif key == "as_graph" and isinstance(value, dict):
            name = value.get("name")
            if not isinstance(name, str) or not _FQN.match(name):
                find("graph", f"names the subgraph {str(name)[:60]!r}, which torch writes "
                     "into generated code")


def _check_in_spec(text: str, find: Any) -> None:
    """Keyword-argument names of the input spec become parameter names of generated code."""
    try:
        spec = json.loads(text)
    except (ValueError, RecursionError):
        find("in_spec", "is not valid JSON")
        return
    for _, key, value in _walk(spec):
        if key == "context" and isinstance(value, str) and value.startswith("["):
            try:
                names = json.loads(value)
            except (ValueError, RecursionError):
                continue
            for name in names if isinstance(names, list) else []:
                if isinstance(name, str) and not (name.isidentifier()
                                                  and not keyword.iskeyword(name)):
                    find("in_spec", f"names the keyword argument {name[:60]!r}, which torch "
                         "writes into generated code")


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
                    _check_program(_read_json(zf, archive.entry(name)), archive.entry(name),
                                   archive)
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


def check_graph(module: nn.Module, path: Path) -> None:
    """Every call in the loaded graph (and its subgraphs) is a tensor operator of
    :data:`SAFE_NAMESPACES`, a checked higher-order op or pure arithmetic."""
    import operator

    for gm in (m for m in module.modules() if isinstance(m, torch.fx.GraphModule)):
        for node in gm.graph.nodes:
            if node.op in {"placeholder", "output", "get_attr"}:
                continue
            target = node.target
            if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
                ns = target.namespace
                if ns in SAFE_NAMESPACES and f"{ns}.{target._opname}" not in REFUSED_OPS:
                    continue
            if node.op == "call_function" and isinstance(target, torch._ops.HigherOrderOperator):
                if target.name() in SAFE_HIGHER_ORDER:
                    continue
            if node.op == "call_function" and (
                    getattr(operator, getattr(target, "__name__", ""), None) is target
                    or getattr(math, getattr(target, "__name__", ""), None) is target
                    or getattr(target, "__name__", "") in SAFE_TORCH):
                continue
            if node.op == "call_module" and isinstance(gm.get_submodule(str(target)),
                                                       torch.fx.GraphModule):
                continue
            raise LoadError(f"{path} is refused: its graph calls {target!r} ({node.op}), which "
                            "is not a tensor operator attrcert allows; pass --trust-pickle "
                            "only if you trust its source")


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
                warn(f"loading {path} with --trust-pickle: its entry {first.entry} "
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
