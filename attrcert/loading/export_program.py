"""The serialized exported program of a ``.pt2`` archive (``models/*.json``): the parts that
``torch.export.load`` evaluates or executes, and the checks that find them.

torch resolves every node target by ``getattr`` from ``torch`` (:func:`target_is_safe`: only
the pure tensor operators of :mod:`.operators`, checked with their arguments by
:func:`node_refusal`), hands every shape expression to ``sympy.sympify``, that is to ``eval``
(:func:`expression_is_plain`), ``exec``\\ s the guards (:func:`guard_is_plain`), and writes
the forward's argument names, keyword names and attribute names into Python code that it
``exec``\\ s. :func:`program_findings` lists each of these that is not plain, and every
output that is not the model's own (a mutated input or buffer, an effect token).
"""

from __future__ import annotations

import io
import json
import keyword
import re
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .operators import PRIMS, aten_allowed, inactive_when, sampling
from .pickles import TRUST_ADVICE

__all__ = ["FQN", "Finding", "expression_is_plain", "guard_is_plain", "node_refusal",
           "operator_allowed", "program_findings", "target_is_safe"]

#: Higher-order ops that run a subgraph of the archive exactly once (the subgraph's nodes
#: are checked in turn): bounded and pure. ``while_loop`` (unbounded), ``map_impl`` and
#: ``scan`` (as many runs as a dimension, which ``expand`` makes 1e15 for free),
#: ``with_effects`` (ordered side effects), ``auto_functionalized`` (custom mutating ops)
#: and any other are refused.
SAFE_HIGHER_ORDER = frozenset({"cond", "invoke_subgraph", "wrap_with_set_grad_enabled",
                               "wrap_with_autocast"})
#: Python operators on shape values (``pow`` is not one: ``2 ** 10**12`` never ends).
SAFE_OPERATOR = frozenset({"getitem", "add", "sub", "mul", "truediv", "floordiv", "mod",
                           "neg", "pos", "abs", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_",
                           "xor", "not_", "invert"})
SAFE_TORCH = frozenset({"sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_ite",
                        "sym_sqrt", "sym_sum", "_sym_sqrt"})
SAFE_MATH = frozenset({"floor", "ceil", "trunc", "sqrt", "fabs", "isnan", "isinf", "isfinite",
                       "exp", "log", "log2", "log10", "sin", "cos", "tan", "tanh", "copysign"})
#: The outputs a pure program returns: its results (no mutated input, buffer or parameter,
#: no effect token).
PURE_OUTPUTS = frozenset({"user_output"})
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
    """A part of a model archive that attrcert will not let torch load or run.

    Attributes:
        entry: the archive entry (or ``entry: field``) it is in.
        what: what it is, for the user.
        loads_code: whether torch would run it while loading (a pickle, an ``eval``), rather
            than the model calling something impure when it runs.
    """

    entry: str
    what: str
    loads_code: bool = True

    def message(self, path: Path, remedy: str = "export the model again with "
                "torch.export.save from a plain nn.Module in eval mode") -> str:
        """The one-line refusal: what, where, what to do, and the way past it."""
        which = ", which would run code from the file when loaded" if self.loads_code else ""
        return (f"{path} is refused: its entry {self.entry} {self.what}{which}; {remedy}, or "
                f"{TRUST_ADVICE}")


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


def operator_allowed(namespace: str, op: str) -> bool:
    """Whether ``torch.ops.<namespace>.<op>`` is a pure tensor operator (:mod:`.operators`),
    a higher-order op of :data:`SAFE_HIGHER_ORDER`, or a sampling operator that an argument
    can keep from drawing (checked per node by :func:`node_refusal`)."""
    if namespace == "aten":
        return aten_allowed(op) or inactive_when(op) is not None
    if namespace == "prims":
        return op in PRIMS
    return namespace == "higher_order" and op in SAFE_HIGHER_ORDER


def target_is_safe(target: str) -> bool:
    """Whether a node target (a dotted name torch resolves by ``getattr``) is allowed by
    :func:`operator_allowed`, or is pure arithmetic on shapes."""
    found = _OP_TARGET.match(target)
    if found:
        namespace, op, overload = found.groups()
        if namespace == "higher_order" and overload is not None:
            return False
        return operator_allowed(namespace, op)
    head, _, name = target.partition(".")
    if "." in name:
        return False
    if head == "_operator":
        return name in SAFE_OPERATOR
    if head == "torch":
        return name in SAFE_TORCH
    if head == "math":
        return name in SAFE_MATH
    return False


def _literal(arg: Any) -> object:
    """The Python value of a serialized constant argument (``{"as_bool": false}``)."""
    if isinstance(arg, dict) and len(arg) == 1:
        kind, value = next(iter(arg.items()))
        if kind in {"as_bool", "as_float", "as_int"}:
            return value
    return _NOT_LITERAL


_NOT_LITERAL = object()


def node_refusal(node: Any) -> str | None:
    """Why a serialized graph node must not run (``None``: it may): a target outside the
    allowlist, or a sampling operator that would draw (``dropout`` with ``train`` not
    ``False``, attention with ``dropout_p`` not 0)."""
    target = node.get("target") if isinstance(node, dict) else None
    if not isinstance(target, str) or not target_is_safe(target):
        return (f"calls {str(target)[:80]!r}, which is not a pure tensor operator attrcert "
                "allows (no file, print, random-state, distributed or loop operators)")
    found = _OP_TARGET.match(target)
    if found is None or found.group(1) != "aten" or not sampling(found.group(2)):
        return None
    condition = inactive_when(found.group(2))
    inputs = node.get("inputs") if isinstance(node.get("inputs"), list) else []
    args = {i.get("name"): i.get("arg") for i in inputs if isinstance(i, dict)}
    if condition is not None:
        name, _, value = condition
        given = _literal(args[name]) if name in args else (
            value if name == "dropout_p" else _NOT_LITERAL)
        if given is not _NOT_LITERAL and given == value and type(given) is type(value):
            return None
    return (f"calls {target[:80]!r} so that it draws random numbers (a model must compute "
            "the same logits every time)")


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

    def find(where: str, what: str, loads_code: bool = True) -> None:
        findings.append(Finding(f"{entry}: {where}", what, loads_code))

    for guard in program.get("guards_code") or []:
        if not isinstance(guard, str) or not guard_is_plain(guard):
            find("guards_code", f"holds code that torch executes ({str(guard)[:60]!r})")
    for name in program.get("range_constraints") or {}:
        if not _SYMBOL.match(str(name)):
            find("range_constraints", f"names the shape symbol {str(name)[:60]!r}")
    for where, key, value in _walk(program["graph_module"]):
        if key == "nodes" and isinstance(value, list):
            for node in value:
                refusal = node_refusal(node)
                if refusal is not None:
                    find("graph", refusal, loads_code=False)
        elif key == "as_operator":
            if not isinstance(value, str) or not target_is_safe(value):
                find("graph", f"passes the operator {str(value)[:80]!r}, which is not a pure "
                     "tensor operator attrcert allows", loads_code=False)
        elif key == "output_specs" and isinstance(value, list):
            for spec in value:
                kinds = set(spec) if isinstance(spec, dict) else {"?"}
                if not kinds <= PURE_OUTPUTS:
                    find("signature", f"returns a {'/'.join(sorted(kinds))[:40]} output (a "
                         "mutated input, buffer or parameter, or an effect): a model must be "
                         "a pure function of its input", loads_code=False)
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

