"""The serialized exported program of a ``.pt2`` archive (``models/*.json``): the parts that
``torch.export.load`` evaluates or executes, and the checks that find them.

torch resolves every node target by ``getattr`` from ``torch`` (:func:`target_is_safe`),
hands every shape expression to ``sympy.sympify``, that is to ``eval``
(:func:`expression_is_plain`), ``exec``\\ s the guards (:func:`guard_is_plain`), and writes
the forward's argument names, keyword names and attribute names into Python code that it
``exec``\\ s. :func:`program_findings` lists each of these that is not plain.
"""

from __future__ import annotations

import io
import json
import keyword
import math
import re
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FQN", "Finding", "expression_is_plain", "guard_is_plain", "program_findings",
           "target_is_safe"]

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
FQN = re.compile(r"^[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*$")
MAX_EXPRESSION = 10_000


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



def _tokens(text: str) -> list[tokenize.TokenInfo]:
    if len(text) > MAX_EXPRESSION or "\n" in text or "\r" in text:
        raise ValueError("too long or several lines")
    return [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
            if t.type not in {tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER}]


def _only(text: str, name_ok: Callable[[str], bool], ops: frozenset[str]) -> bool:
    """Whether ``text`` is one line of Python tokens: names that ``name_ok`` accepts,
    operators among ``ops``, numbers, and identifier-like string literals."""
    try:
        for tok in _tokens(text):
            ok = (name_ok(tok.string) if tok.type == tokenize.NAME
                  else tok.string in ops if tok.type == tokenize.OP
                  else bool(_STRING.match(tok.string)) if tok.type == tokenize.STRING
                  else tok.type == tokenize.NUMBER)
            if not ok:
                return False
    except (tokenize.TokenError, IndentationError, SyntaxError, ValueError):
        return False
    return True


def expression_is_plain(text: str) -> bool:
    """Whether a symbolic shape expression (which torch hands to ``sympy.sympify``, that is
    to ``eval``) holds only sympy constructors, shape symbols, numbers and arithmetic: no
    attribute access, no subscripts, no other names."""
    return _only(text, lambda name: name in SYMPY_NAMES or name in ASSUMPTIONS
                 or bool(_SYMBOL.match(name)), _EXPR_OPS)


def guard_is_plain(text: str) -> bool:
    """Whether a shape guard (``exec``\\ d by ``.module()``) only compares sizes and strides
    of the inputs (``L['x'].size()[0] <= 1024``) with numbers."""
    return _only(text, lambda name: name in _GUARD_NAMES or name in SYMPY_NAMES, _GUARD_OPS)


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


def program_findings(program: Any, entry: str) -> list[Finding]:
    """Findings in one ``models/*.json`` (parsed): node targets, operator arguments, shape
    expressions, guards, and the names torch writes into generated code.

    Raises:
        ValueError: ``program`` is not a serialized exported program.
    """
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise ValueError(f"entry {entry} is not a serialized exported program")
    findings: list[Finding] = []

    def find(where: str, what: str) -> None:
        findings.append(Finding(f"{entry}: {where}", what))

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
            if isinstance(value, str) and value and not FQN.match(value):
                find("signature", f"names the attribute {value[:60]!r}, which torch writes "
                     "into generated code")
        elif key == "as_graph" and isinstance(value, dict):
            name = value.get("name")
            if not isinstance(name, str) or not FQN.match(name):
                find("graph", f"names the subgraph {str(name)[:60]!r}, which torch writes "
                     "into generated code")
    return findings


def _check_in_spec(text: str, find: Callable[[str, str], None]) -> None:
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

