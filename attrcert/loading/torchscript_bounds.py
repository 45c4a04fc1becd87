"""How long TorchScript code can run, read from its source before torch compiles it: every
loop has a proved trip bound and the whole call tree a bounded number of calls.

A ``for`` loop must run over ``range(B)``, a ``while`` loop must be the form TorchScript
writes for a ``for`` loop with an early exit (a counter from a constant ``>= 0``, increased by
one per pass, the loop going on only while the counter is below ``B``), where the bound ``B``
(:func:`bound`) is a constant or the length of a list, tuple, dict or string (``torch.len(xs)``
where ``xs`` comes from ``torch.size``, ``torch.unbind``, a literal or a ``List[...]``
parameter; never a tensor's size, which ``expand`` makes 1e15 for free) or a tensor's rank
(``torch.dim(x)``), less or a fraction of it. A length costs memory as long as the list, so a
loop over one is linear in what the model already built; such a loop may not hold another
one nor call the archive's functions (which could hold one): no quadratic work from a short
file. :class:`Work` adds up the calls of a method, each callee's own calls included
(resolved through the classes' attribute types), loops counted at their bound: past
:data:`MAX_WORK`, or with recursion, or with a call it cannot resolve, the archive is refused.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["DATA", "MAX_WORK", "Function", "Program", "Refusal", "Work", "bound", "definitions",
           "dotted", "function_alias", "function_definitions"]

#: The most calls one method may make, its callees' included, loops at their bounds.
MAX_WORK = 1_000_000
#: A loop bound that is the length of a list (or a rank): linear in memory the model holds.
DATA = -1


class Refusal(Exception):
    """Code attrcert will not let torch compile: ``what`` it does, in ``function``."""

    def __init__(self, function: Function, what: str) -> None:
        super().__init__(what)
        self.function, self.what = function, what


@dataclass
class Function:
    """A function or method of the archive's code."""

    qualname: str  #: ``__torch__.a.b.C.forward`` or ``__torch__.a.b.f``
    node: ast.FunctionDef
    entry: str  #: the archive entry it is in
    owner: str | None = None  #: its class's qualified name


@dataclass
class Program:
    """The archive's code: functions, and each class's attribute types and methods."""

    functions: dict[str, Function] = field(default_factory=dict)
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)
    methods: dict[str, dict[str, Function]] = field(default_factory=dict)


def dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of names, else ``None``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _in_order(stmts: list[ast.stmt]) -> Iterator[ast.stmt]:
    for stmt in stmts:
        yield stmt
        for name in ("body", "orelse"):
            yield from _in_order(getattr(stmt, name, []))


def definitions(stmts: list[ast.stmt]) -> dict[str, list[ast.expr | None]]:
    """Every value assigned to each name anywhere in ``stmts`` (``None``: not known)."""
    defs: dict[str, list[ast.expr | None]] = {}
    for stmt in _in_order(stmts):
        pairs: list[tuple[ast.expr, ast.expr | None]] = []
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Tuple) and isinstance(stmt.value, ast.Tuple) \
                        and len(target.elts) == len(stmt.value.elts):
                    pairs.extend(zip(target.elts, stmt.value.elts, strict=True))
                else:
                    pairs.append((target, stmt.value if isinstance(target, ast.Name) else None))
        elif isinstance(stmt, ast.AnnAssign | ast.AugAssign):
            pairs.append((stmt.target, stmt.value if isinstance(stmt, ast.AnnAssign) else None))
        elif isinstance(stmt, ast.For):
            pairs.append((stmt.target, None))
        for target, value in pairs:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    defs.setdefault(name.id, []).append(value if name is target else None)
    return defs


def function_definitions(node: ast.FunctionDef) -> dict[str, list[ast.expr | None]]:
    """:func:`definitions` of a function's body, each parameter defined as
    ``annotate(<its annotation>, <itself>)`` (so that a list parameter is known as one)."""
    defs = definitions(node.body)
    for arg in node.args.args:
        value = (ast.Call(func=ast.Name("annotate"), args=[arg.annotation, ast.Name(arg.arg)],
                          keywords=[]) if arg.annotation is not None else None)
        defs.setdefault(arg.arg, []).insert(0, value)
    return defs


#: Calls that return a container (list, tuple, dict) whose length bounds a loop: the
#: memory it takes is as long as the loop (unlike a tensor's size, which ``expand`` makes
#: anything for free).
CONTAINERS = frozenset({"torch.size", "torch.unbind", "torch.split", "torch.split_with_sizes",
                        "torch.chunk", "torch.unsafe_chunk", "torch.tensor_split",
                        "torch.unsafe_split", "torch.list", "torch.keys", "torch.values",
                        "torch.items", "torch.copy"})
_CONTAINER_TYPES = ("List[", "Dict[", "Tuple[", "str")


def _container(expr: ast.expr | None, defs: dict[str, list[ast.expr | None]],
               depth: int = 0) -> bool:
    """Whether ``expr`` is a list, tuple, dict or string (not a tensor), as far as its
    definition tells."""
    if expr is None or depth > 32:
        return False
    if isinstance(expr, ast.List | ast.Tuple | ast.Dict):
        return True
    if isinstance(expr, ast.Name):
        return _container(_single(expr.id, defs), defs, depth + 1)
    if not isinstance(expr, ast.Call):
        return False
    name = dotted(expr.func)
    if name in {"annotate", "unchecked_cast"} and expr.args:
        return ast.unparse(expr.args[0]).startswith(_CONTAINER_TYPES)
    return name in CONTAINERS


def function_alias(name: str, defs: dict[str, list[ast.expr | None]]) -> str | None:
    """The archive function a local name stands for (TorchScript writes
    ``_0 = __torch__.torch.nn.functional.relu`` and then ``_0(x)``), else ``None``."""
    target = dotted(_single(name, defs)) if name in defs else None  # type: ignore[arg-type]
    return target if target is not None and target.startswith("__torch__.") else None


def _single(name: str, defs: dict[str, list[ast.expr | None]]) -> ast.expr | None:
    values = defs.get(name, [])
    return values[0] if len(values) == 1 else None


def _int(node: ast.expr | None) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


def bound(expr: ast.expr | None, defs: dict[str, list[ast.expr | None]],
          inner: dict[str, list[ast.expr | None]] | None = None, depth: int = 0) -> int | None:
    """An upper bound on the integer ``expr``: a constant, :data:`DATA` (a length or rank),
    or ``None`` (none proved). Names resolve through their one assignment in ``defs``, and
    must not be assigned in ``inner`` (the loop's own body)."""
    if expr is None or depth > 32:
        return None
    value = _int(expr)
    if value is not None:
        return value if value >= 0 else None
    if isinstance(expr, ast.Name):
        if inner is not None and expr.id in inner:
            return None
        return bound(_single(expr.id, defs), defs, inner, depth + 1)
    if not isinstance(expr, ast.Call) or expr.keywords:
        return None
    name, args = dotted(expr.func), expr.args
    if name == "torch.dim" and len(args) == 1:
        return DATA
    if name in {"torch.len", "len"} and len(args) == 1:
        return DATA if _container(args[0], defs) else None
    if name == "ops.prim.min" and len(args) == 1:
        items = args[0]
        if isinstance(items, ast.Name) and (inner is None or items.id not in inner):
            items = _single(items.id, defs)  # type: ignore[assignment]
        if not isinstance(items, ast.List):
            return None
        found = [b for b in (bound(e, defs, inner, depth + 1) for e in items.elts)
                 if b is not None]
        consts = [b for b in found if b != DATA]
        return min(consts) if consts else (DATA if found else None)
    if len(args) != 2:
        return None
    if name in {"torch.sub", "torch.floordiv", "torch.__round_to_zero_floordiv"}:
        by = _int(args[1])
        if by is None or by < (0 if name == "torch.sub" else 1):
            return None
        return bound(args[0], defs, inner, depth + 1)
    if name == "torch.add":
        for a, b in ((args[0], args[1]), (args[1], args[0])):
            extra, base = _int(b), bound(a, defs, inner, depth + 1)
            if extra is not None and extra >= 0 and base is not None:
                return DATA if base == DATA else base + extra
    return None


def for_trips(loop: ast.For, defs: dict[str, list[ast.expr | None]]) -> int | None:
    """The most passes of ``for v in range(...)`` (:data:`DATA`: a length), else ``None``."""
    it = loop.iter
    if not (isinstance(it, ast.Call) and dotted(it.func) == "range" and not it.keywords
            and 1 <= len(it.args) <= 3):
        return None
    if len(it.args) >= 2 and (_int(it.args[0]) is None or _int(it.args[0]) < 0):  # type: ignore[operator]
        return None
    if len(it.args) == 3 and (_int(it.args[2]) is None or _int(it.args[2]) < 1):  # type: ignore[operator]
        return None
    return bound(it.args[1] if len(it.args) >= 2 else it.args[0], defs, definitions(loop.body))


def while_trips(loop: ast.While, defs: dict[str, list[ast.expr | None]]) -> int | None:
    """The most passes of a ``while`` loop of the form TorchScript writes for a ``for`` loop
    with an early exit (see the module docs), else ``None``."""
    if not isinstance(loop.test, ast.Name) or loop.orelse or any(
            isinstance(n, ast.Break | ast.Continue) for s in loop.body for n in ast.walk(s)):
        return None
    inner = definitions(loop.body)

    def resolve(node: ast.expr | None) -> ast.expr | None:
        if isinstance(node, ast.Name) and node.id in inner:
            return _single(node.id, inner)
        return node

    cond = resolve(_single(loop.test.id, inner))
    tests = [cond]
    if isinstance(cond, ast.Call) and dotted(cond.func) == "torch.__and__" and len(cond.args) == 2:
        tests = [resolve(a) for a in cond.args]
    for test in tests:
        if not (isinstance(test, ast.Call) and dotted(test.func) == "torch.lt"
                and len(test.args) == 2 and isinstance(test.args[0], ast.Name)):
            continue
        step = resolve(test.args[0])
        if not (isinstance(step, ast.Call) and dotted(step.func) == "torch.add"
                and len(step.args) == 2 and isinstance(step.args[0], ast.Name)
                and _int(step.args[1]) == 1):
            continue
        counter = step.args[0].id
        if not (len(inner.get(counter, [])) == 1 and isinstance(inner[counter][0], ast.Name)
                and inner[counter][0].id == test.args[0].id):  # type: ignore[union-attr]
            continue
        starts = [v for v in defs.get(counter, []) if v is not inner[counter][0]]
        start = _int(starts[0]) if len(starts) == 1 else None
        if start is None or start < 0:
            continue
        if not isinstance(test.args[1], ast.Name | ast.Constant):
            continue  # a bound evaluated once per pass could grow with the loop
        limit = bound(test.args[1], defs, inner)
        if limit is not None:
            return limit if limit == DATA else limit + 1
    return None


class Work:
    """The calls a function makes, its callees' included (see the module docs)."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.memo: dict[str, int] = {}
        self.stack: list[str] = []

    def of(self, fn: Function) -> int:
        """The work of ``fn``; raises :class:`Refusal`."""
        if fn.qualname in self.memo:
            return self.memo[fn.qualname]
        if fn.qualname in self.stack:
            raise Refusal(fn, "calls itself (recursion), which attrcert cannot bound")
        self.stack.append(fn.qualname)
        types = self._types(fn)
        defs = function_definitions(fn.node)
        work = self._block(fn.node.body, fn, types, defs, False)
        self.stack.pop()
        if work > MAX_WORK:
            raise Refusal(fn, f"makes more than {MAX_WORK} calls (its loops and callees "
                          "counted), a hang for a model")
        self.memo[fn.qualname] = work
        return work

    def _types(self, fn: Function) -> dict[str, str]:
        types = {a.arg: ast.unparse(a.annotation) for a in fn.node.args.args if a.annotation}
        for stmt in _in_order(fn.node.body):
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                    and isinstance(stmt.targets[0], ast.Name):
                kind = self._type(stmt.value, types)
                if kind is not None:
                    types[stmt.targets[0].id] = kind
        return types

    def _type(self, expr: ast.expr, types: dict[str, str]) -> str | None:
        if isinstance(expr, ast.Name):
            return types.get(expr.id)
        if isinstance(expr, ast.Attribute):
            owner = self._type(expr.value, types)
            return self.program.attributes.get(owner or "", {}).get(expr.attr)
        if isinstance(expr, ast.Call) and dotted(expr.func) == "getattr" and len(expr.args) == 2 \
                and isinstance(expr.args[1], ast.Constant) and isinstance(expr.args[1].value, str):
            owner = self._type(expr.args[0], types)
            return self.program.attributes.get(owner or "", {}).get(expr.args[1].value)
        return None

    def _block(self, stmts: list[ast.stmt], fn: Function, types: dict[str, str],
               defs: dict[str, list[ast.expr | None]], in_data: bool) -> int:
        total = 0
        for stmt in stmts:
            if isinstance(stmt, ast.For | ast.While):
                trips = (for_trips(stmt, defs) if isinstance(stmt, ast.For)
                         else while_trips(stmt, defs))
                head = stmt.iter if isinstance(stmt, ast.For) else stmt.test
                if trips is None:
                    raise Refusal(fn, f"holds a loop without a proved bound ({_head(stmt)})")
                if trips == DATA and in_data:
                    raise Refusal(fn, f"holds a loop over a length inside another one "
                                  f"({_head(stmt)})")
                body = self._block(stmt.body, fn, types, defs, in_data or trips == DATA)
                total += self._calls(head, fn, types, defs, in_data) + max(trips, 1) * (1 + body)
            elif isinstance(stmt, ast.If):
                total += (self._calls(stmt.test, fn, types, defs, in_data)
                          + self._block(stmt.body, fn, types, defs, in_data)
                          + self._block(stmt.orelse, fn, types, defs, in_data))
            else:
                total += self._calls(stmt, fn, types, defs, in_data)
            if total > MAX_WORK:
                raise Refusal(fn, f"makes more than {MAX_WORK} calls (its loops and callees "
                              "counted), a hang for a model")
        return total

    def _calls(self, node: ast.AST, fn: Function, types: dict[str, str],
               defs: dict[str, list[ast.expr | None]], in_data: bool) -> int:
        total = 0
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            callee = self._callee(call, fn, types, defs)
            if callee is not None and in_data:
                raise Refusal(fn, f"calls {callee.qualname} inside a loop over a length")
            total += 1 + (self.of(callee) if callee is not None else 0)
        return total

    def _callee(self, call: ast.Call, fn: Function, types: dict[str, str],
                defs: dict[str, list[ast.expr | None]]) -> Function | None:
        """The archive function ``call`` runs; ``None`` for an operator or builtin."""
        name = dotted(call.func)
        if name is not None and "." not in name:
            name = function_alias(name, defs) or name
        if name is not None and name.startswith("__torch__."):
            if name in self.program.functions:
                return self.program.functions[name]
            if name in self.program.methods:
                return self.program.methods[name].get("__init__")
            raise Refusal(fn, f"calls {name[:80]}, which the archive does not define")
        if name is not None and (name.split(".")[0] in {"torch", "ops"} or "." not in name):
            return None
        if not isinstance(call.func, ast.Attribute):
            raise Refusal(fn, f"calls a value ({ast.unparse(call.func)[:60]})")
        owner = self._type(call.func.value, types)
        method = self.program.methods.get(owner or "", {}).get(call.func.attr)
        if method is None:
            raise Refusal(fn, f"calls the method {call.func.attr!r} of "
                          f"{ast.unparse(call.func.value)[:40]}, whose code attrcert cannot "
                          "find in the archive")
        return method


def _head(loop: ast.For | ast.While) -> str:
    if isinstance(loop, ast.For):
        return f"for ... in {ast.unparse(loop.iter)[:60]}"
    return f"while {ast.unparse(loop.test)[:60]}"
