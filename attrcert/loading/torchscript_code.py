"""TorchScript archives read before ``torch.jit.load``: the code every class and function
holds (the ``code/`` entries, Python syntax, parsed with :mod:`ast`, never run), and the
pickles' class names.

``torch.jit.load`` compiles that code and runs each ``__setstate__`` while loading; the
model's methods run when attrcert calls it. :func:`torchscript_findings` refuses

- a ``__setstate__`` anywhere (it runs at load, even for ``attrcert inspect``);
- a call of anything but the pure operators of :mod:`.operators` (``torch.from_file``,
  ``print``, ``ops.aten._print``, random-state, distributed, custom or ``quantized``
  operators), TorchScript's own scalar and list operators, a few builtins (``int``,
  ``getattr``, ``annotate``), or the archive's own functions and methods;
- loops without a proved bound, recursion, and more than
  :data:`~.torchscript_bounds.MAX_WORK` calls in all (:mod:`.torchscript_bounds`);
- attribute assignments (a model keeps no state between calls), syntax TorchScript never
  writes (lambdas, imports, ``global``, ``with``), torchbind classes (``torch.classes``:
  native objects, in the code or the pickles).

Everything else (``torch.jit.trace`` and ``torch.jit.script`` of ordinary networks: helper
methods, scripted ``torch.nn.functional``, bounded loops) loads as before.
"""

from __future__ import annotations

import ast
import collections
import io
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any

from .export_program import Finding
from .operators import TORCHSCRIPT_PRIM, aten_allowed, sampling
from .torchscript_bounds import (
    Function,
    Program,
    Refusal,
    Work,
    definitions,
    dotted,
    function_alias,
)

__all__ = ["torchscript_findings", "traced_input_shape"]

#: Bytes of code an archive may hold (ResNet-50, scripted: 0.4 MB).
MAX_CODE = 64 * 2**20
#: Builtins that TorchScript's printer writes, all pure (``print`` is not one).
BUILTINS = frozenset({"annotate", "unchecked_cast", "uninitialized", "getattr", "hasattr",
                      "isinstance", "int", "float", "bool", "str", "complex", "range"})
#: Statements TorchScript writes in a function body.
STATEMENTS = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr, ast.Return, ast.If, ast.For,
              ast.While, ast.Pass, ast.Assert, ast.Raise)
#: Expressions it writes.
EXPRESSIONS = (ast.Call, ast.Name, ast.Constant, ast.Attribute, ast.Subscript, ast.Slice,
               ast.Tuple, ast.List, ast.Dict, ast.UnaryOp, ast.BinOp, ast.BoolOp, ast.Compare,
               ast.IfExp, ast.keyword, ast.expr_context, ast.operator, ast.unaryop,
               ast.boolop, ast.cmpop)
RESERVED = frozenset({"torch", "ops", "__torch__", "CONSTANTS"})
_GLOBAL_OPS = {"GLOBAL", "INST"}


class _Bad(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _qualname(entry: str) -> str:
    """``root/code/__torch__/a/b.py`` -> ``__torch__.a.b``."""
    return entry.split("/code/", 1)[1][: -len(".py")].replace("/", ".")


def torchscript_findings(path: Path) -> list[Finding]:
    """Everything in the TorchScript archive at ``path`` that attrcert refuses to let torch
    load or run (empty: it may be loaded). Nothing is compiled, unpickled or run.

    Raises:
        ValueError: the archive's code is not readable (not UTF-8, not Python syntax, too
            large or too deeply nested).
    """
    program, findings = Program(), []
    with zipfile.ZipFile(path) as zf:
        code = [i for i in zf.infolist() if "/code/" in i.filename and i.filename.endswith(".py")]
        if sum(i.file_size for i in code) > MAX_CODE:
            raise ValueError(f"its code is over {MAX_CODE // 2**20} MiB")
        for info in code:
            try:
                tree = ast.parse(zf.read(info).decode("utf-8"))
            except (SyntaxError, UnicodeDecodeError, RecursionError, MemoryError) as exc:
                raise ValueError(f"{info.filename} is not TorchScript code "
                                 f"({exc.__class__.__name__})") from None
            findings.extend(_module(tree, info.filename, program))
        for name in zf.namelist():
            if name.endswith(".pkl") and not name.endswith(".debug_pkl"):
                findings.extend(_pickle_findings(zf.read(name), name))
    functions = [*program.functions.values(),
                 *(f for methods in program.methods.values() for f in methods.values())]
    for fn in functions:
        try:
            _function(fn)
        except _Bad as bad:
            findings.append(Finding(f"{fn.entry} ({fn.qualname})", bad.what, loads_code=False))
    if not findings:
        work = Work(program)
        for fn in functions:
            try:
                work.of(fn)
            except Refusal as refusal:
                findings.append(Finding(f"{refusal.function.entry} "
                                        f"({refusal.function.qualname})", refusal.what,
                                        loads_code=False))
                break
            except RecursionError:
                findings.append(Finding(fn.entry, "nests its calls too deeply to check",
                                        loads_code=False))
                break
    return findings


def _module(tree: ast.Module, entry: str, program: Program) -> list[Finding]:
    """Record the classes and functions of one code entry; findings for anything else."""
    module = _qualname(entry)
    findings = []
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef):
            name = f"{module}.{stmt.name}"
            program.functions[name] = Function(name, stmt, entry)
        elif isinstance(stmt, ast.ClassDef):
            try:
                _class(stmt, f"{module}.{stmt.name}", entry, program)
            except _Bad as bad:
                findings.append(Finding(f"{entry} (class {stmt.name})", bad.what))
        elif not (isinstance(stmt, ast.Assign | ast.AnnAssign) and _constant(stmt.value)):
            findings.append(Finding(entry, f"holds the statement {ast.unparse(stmt)[:60]!r}, "
                                    "which TorchScript does not write"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "classes" \
                and (dotted(node.value) or "").endswith("torch"):
            findings.append(Finding(entry, "names a torchbind class (torch.classes: native "
                                    "objects with their own loading code)"))
            break
    return findings


def _constant(node: ast.expr | None) -> bool:
    """A literal: ``None``, a constant, ``-1``, a list or tuple of literals."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return node is None or isinstance(node, ast.Constant) or (
        isinstance(node, ast.List | ast.Tuple) and all(_constant(e) for e in node.elts))


def _class(cls: ast.ClassDef, qualname: str, entry: str, program: Program) -> None:
    if cls.decorator_list or cls.keywords:
        raise _Bad("has decorators or class keywords, which TorchScript does not write")
    attributes = program.attributes.setdefault(qualname, {})
    methods = program.methods.setdefault(qualname, {})
    for stmt in cls.body:
        if isinstance(stmt, ast.FunctionDef):
            if stmt.name == "__setstate__":
                raise _Bad("defines __setstate__ (torch runs it while loading the file)")
            if stmt.decorator_list:
                raise _Bad(f"decorates its method {stmt.name}")
            methods[stmt.name] = Function(f"{qualname}.{stmt.name}", stmt, entry, qualname)
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) \
                and _constant(stmt.value):
            attributes[stmt.target.id] = ast.unparse(stmt.annotation)
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
            if isinstance(target, ast.Subscript) and dotted(target.value) == "__annotations__" \
                    and isinstance(target.slice, ast.Constant) \
                    and isinstance(target.slice.value, str):
                attributes[target.slice.value] = ast.unparse(stmt.value)
            elif not (isinstance(target, ast.Name) and _constant(stmt.value)):
                raise _Bad(f"holds {ast.unparse(stmt)[:60]!r}, which TorchScript does not "
                           "write")
        elif not (isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr)
                                                 and isinstance(stmt.value, ast.Constant))):
            raise _Bad(f"holds {ast.unparse(stmt)[:60]!r}, which TorchScript does not write")


def _function(fn: Function) -> None:
    """Raise :class:`_Bad` for the first statement or call of ``fn`` that is not allowed."""
    node = fn.node
    args = node.args
    if node.decorator_list or args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs:
        raise _Bad("has a signature TorchScript does not write")
    for default in args.defaults:
        if not _constant(default):
            raise _Bad("has a default argument that is not a constant")
    loop_ranges = {id(n.iter) for s in node.body for n in ast.walk(s) if isinstance(n, ast.For)}
    defs = definitions(node.body)
    for stmt in node.body:
        for inner in ast.walk(stmt):
            if isinstance(inner, ast.stmt) and not isinstance(inner, STATEMENTS):
                raise _Bad(f"holds {ast.unparse(inner)[:60]!r}, which TorchScript does not "
                           "write")
            if isinstance(inner, ast.expr) and not isinstance(inner, EXPRESSIONS):
                raise _Bad(f"holds the expression {ast.unparse(inner)[:60]!r}, which "
                           "TorchScript does not write")
            if isinstance(inner, ast.For | ast.While) and inner.orelse:
                raise _Bad("holds a loop with an else branch")
            if isinstance(inner, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = inner.targets if isinstance(inner, ast.Assign) else [inner.target]
                for target in targets:
                    _target(target)
            if isinstance(inner, ast.Call):
                if dotted(inner.func) == "range" and id(inner) not in loop_ranges:
                    raise _Bad("calls range() outside a for loop")
                _call(inner, defs)
            elif isinstance(inner, ast.Attribute):
                _chain(inner)


def _target(target: ast.expr) -> None:
    for node in ast.walk(target):
        if isinstance(node, ast.Attribute):
            raise _Bad(f"assigns to the attribute {ast.unparse(node)[:60]} (a model keeps no "
                       "state between calls)")
        if isinstance(node, ast.Name) and node.id in RESERVED:
            raise _Bad(f"assigns to {node.id}")


def _chain(node: ast.Attribute) -> None:
    """An attribute chain on ``torch`` or ``ops`` must name an allowed operator."""
    name = dotted(node)
    if name is None:
        return
    root = name.split(".")[0]
    if root == "torch" or (root == "ops" and name.count(".") == 2):
        _operator(name)
    elif root == "ops" and name.count(".") < 2:
        return  # the head of ops.<namespace>.<op>, checked as a whole
    elif root == "ops":
        raise _Bad(f"calls {name[:80]}, which is not an operator attrcert allows")


def _operator(name: str) -> None:
    parts = name.split(".")
    if parts[0] == "torch" and len(parts) == 2:
        namespace, op = "aten", parts[1]
    elif parts[0] == "ops" and len(parts) == 3:
        namespace, op = parts[1], parts[2]
    else:
        raise _Bad(f"calls {name[:80]}, which is not an operator attrcert allows")
    ok = (aten_allowed(op, torchscript=True) or sampling(op)) if namespace == "aten" else (
        namespace == "prim" and op in TORCHSCRIPT_PRIM)
    if not ok:
        raise _Bad(f"calls {name[:80]} ({namespace}::{op}), which is not a pure tensor operator "
                   "attrcert allows (no file, print, random-state, distributed or native "
                   "operators)")


def _call(call: ast.Call, defs: dict[str, list[ast.expr | None]]) -> None:
    name = dotted(call.func)
    if name is None:
        if not isinstance(call.func, ast.Attribute):
            raise _Bad(f"calls {ast.unparse(call.func)[:60]}, which is not a function")
        return  # a method of a value: resolved (or refused) by Work
    if "." not in name:
        alias = function_alias(name, defs)
        if name not in BUILTINS and alias is None:
            raise _Bad(f"calls {name}(), which is not a pure function attrcert allows")
        return
    root = name.split(".")[0]
    if root in {"torch", "ops"}:
        _operator(name)
    elif root == "__torch__":
        return  # the archive's own function or class: Work resolves it or refuses
    elif root == "CONSTANTS":
        raise _Bad(f"calls the constant {name[:60]}")


def _pickle_findings(data: bytes, entry: str) -> list[Finding]:
    """The classes a pickle of the archive names: torchbind classes (native objects whose
    own code runs when unpickled) are refused. Opcodes are decoded, nothing is built."""
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name in _GLOBAL_OPS and isinstance(arg, str):
                module = arg.split(" ", 1)[0]
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                module = strings[-2]
            else:
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            if module.startswith("__torch__.torch.classes") or module.startswith("torch.classes"):
                return [Finding(entry, f"holds a torchbind object ({module[:60]}: a native "
                                "object with its own loading code)")]
    except Exception:  # torch reports a corrupt pickle itself, in one line
        return []
    return []


class _Shapes(pickle.Unpickler):
    """Reads ``traced_inputs.pkl`` (the example inputs ``torch.jit.trace`` keeps) into the
    shapes of its tensors: the only classes it builds are a dict and the shape tuples."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, *rest: ("tensor", tuple(size))
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return lambda value, tag: value
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> None:
        return None


def traced_input_shape(path: Path) -> tuple[int, ...] | None:
    """The shape of the first example input that ``torch.jit.trace`` kept in the archive
    (``traced_inputs.pkl``), or ``None`` (a scripted model, an older torch, anything odd).
    Nothing from the file is run: only a dict and tuples are built."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/traced_inputs.pkl")), None)
            if name is None or zf.getinfo(name).file_size > 2**20:
                return None
            inputs = _Shapes(io.BytesIO(zf.read(name))).load()
        first = inputs["forward"][0]
        if isinstance(first, tuple) and first[0] == "tensor":
            return tuple(int(s) for s in first[1])
    except Exception:  # any odd pickle: no shape, the user passes IMAGES or --size
        return None
    return None
