"""The package's layout rules (issue 14), checked by reading the source with :mod:`ast`:

- no module under ``attrcert/`` has more than :data:`MAX_LINES` lines;
- the modules of ``attrcert`` import each other without a cycle (every import counts: at
  the top, inside a function, or under ``TYPE_CHECKING``);
- no module imports a private (``_underscore``) name of another attrcert module, neither as
  ``from .x import _name`` nor as ``x._name`` after ``from . import x``.

Nothing is imported or run: the rules hold for the text of the files.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attrcert"
MAX_LINES = 400

# being split in parallel; remove from this list when split
OVERSIZED_KNOWN: set[str] = set()
# being split in parallel; remove from this list when split
# (each entry: the modules of one import cycle, sorted)
CYCLES_KNOWN: set[tuple[str, ...]] = set()
# being split in parallel; remove from this list when split
# (each entry: (importing module, imported module, private name))
PRIVATE_IMPORTS_KNOWN: set[tuple[str, str, str]] = set()


@dataclass(frozen=True)
class Module:
    name: str  # dotted: attrcert.attack.pgd
    path: Path
    is_package: bool  # an __init__.py

    @property
    def relpath(self) -> str:
        return self.path.relative_to(PACKAGE.parent).as_posix()


def modules() -> dict[str, Module]:
    """Every module of attrcert by its dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        found[name] = Module(name, path, is_package)
    return found


def _base(module: Module, node: ast.ImportFrom) -> str:
    """The dotted module a ``from ... import`` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    package = module.name.split(".")
    if not module.is_package:
        package = package[:-1]
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


@dataclass(frozen=True)
class Imported:
    """One imported attrcert name: ``target`` the module it comes from, ``name`` the name
    (``None`` for a whole module), ``alias`` what the importer calls it."""

    target: str
    name: str | None
    alias: str


def imports(module: Module, known: dict[str, Module]) -> list[Imported]:
    """The attrcert modules and names ``module`` imports, anywhere in its text."""
    out = []
    for node in ast.walk(ast.parse(module.path.read_text(), str(module.path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "attrcert" and a.name in known:
                    out.append(Imported(a.name, None, a.asname or a.name))
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, node)
            if base.split(".")[0] != "attrcert":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:  # from . import bounds: the module bounds
                    out.append(Imported(sub, None, a.asname or a.name))
                elif base in known:
                    out.append(Imported(base, a.name, a.asname or a.name))
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {i.target for i in imports(m, known)} - {name} for name, m in known.items()}


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[tuple[str, ...]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def private_imports() -> set[tuple[str, str, str]]:
    """``(importer, module, name)`` for every private name taken from another module."""
    known = modules()
    found = set()
    for name, module in known.items():
        imported = imports(module, known)
        for i in imported:
            if i.name is not None and _private(i.name) and i.target != name:
                found.add((name, i.target, i.name))
        aliases = {i.alias: i.target for i in imported if i.name is None and i.target != name}
        tree = ast.parse(module.path.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and _private(node.attr)):
                found.add((name, aliases[node.value.id], node.attr))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# --- the checker itself -----------------------------------------------------------------

def test_the_cycle_finder_finds_cycles_and_only_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {("a", "b", "c")}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == set()
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}) == {("a", "b"), ("c", "d")}


def test_relative_imports_are_resolved():
    graph = import_graph()
    assert "attrcert.attributions" in graph["attrcert"]  # from .attributions import ...
    assert "attrcert.attributions.base" in graph["attrcert.attributions"]
    assert "attrcert.bounds" in graph["attrcert.report.compute"]  # from .. import bounds
    assert "attrcert.report.figures" in graph["attrcert.report.html"]  # lazy import


# --- the rules ----------------------------------------------------------------------------

def test_no_module_is_longer_than_the_limit():
    lengths = {m.relpath: len(m.path.read_text().splitlines()) for m in modules().values()}
    over = {p: n for p, n in lengths.items() if n > MAX_LINES}
    new = {p: n for p, n in over.items() if p not in OVERSIZED_KNOWN}
    assert not new, f"modules over {MAX_LINES} lines: {new}: split them along their seams"
    stale = sorted(p for p in OVERSIZED_KNOWN if p not in over)
    assert not stale, f"{stale} no longer over {MAX_LINES} lines (or gone): remove them " \
                      "from OVERSIZED_KNOWN in tests/test_layout.py"


def test_no_import_cycle():
    found = cycles(import_graph())
    new = found - CYCLES_KNOWN
    assert not new, f"import cycles: {sorted(new)}"
    stale = sorted(CYCLES_KNOWN - found)
    assert not stale, f"{stale} is no longer a cycle: remove it from CYCLES_KNOWN"


def test_no_private_name_is_imported_across_modules():
    found = private_imports()
    new = found - PRIVATE_IMPORTS_KNOWN
    assert not new, ("private names imported from another module (make them public, or "
                     f"keep them with their only user): {sorted(new)}")
    stale = sorted(PRIVATE_IMPORTS_KNOWN - found)
    assert not stale, f"{stale} no longer imported: remove from PRIVATE_IMPORTS_KNOWN"


@pytest.mark.parametrize("package", ["attrcert.attack", "attrcert.cli", "attrcert.distributed",
                                     "attrcert.loading", "attrcert.report", "attrcert.smoothing",
                                     "attrcert.sound", "attrcert.sound.operators",
                                     "attrcert.spectral"])
def test_split_packages_import_downwards_only(package):
    """Inside a split package, ``__init__`` only re-exports: no submodule imports it."""
    graph = import_graph()
    inside = [m for m in graph if m.startswith(package + ".")]
    assert inside, f"{package} is not a package"
    for m in inside:
        assert package not in graph[m], f"{m} imports its own package {package}"


def test_entry_points_take_at_most_12_parameters():
    import inspect

    import attrcert

    for func in (attrcert.certify, attrcert.max_eps):
        assert len(inspect.signature(func).parameters) <= 12, func.__name__


#: The most parameters a function of sound mode takes (``self`` not counted): its passes take
#: named option objects (``Balls``, ``PassOptions``), not long lists of loose arguments.
SOUND_MAX_PARAMETERS = 8


def parameter_counts(package: str) -> dict[str, int]:
    """``module:function`` -> its number of parameters (``self``/``cls`` not counted), for
    every function and method defined in ``package``, read from the source."""
    out = {}
    for name, module in modules().items():
        if name != package and not name.startswith(package + "."):
            continue
        for node in ast.walk(ast.parse(module.path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
                n = len(params) + (a.vararg is not None) + (a.kwarg is not None)
                if params and params[0].arg in ("self", "cls"):
                    n -= 1
                out[f"{name}:{node.name}"] = n
    return out


def test_the_parameter_counter_counts_every_kind_of_parameter():
    counts = parameter_counts("attrcert.sound")
    assert counts["attrcert.sound.enclosures:enclose"] == 4  # graph, balls, target, options
    assert counts["attrcert.sound.enclosures:backward"] == 6  # 3 positional, 3 keyword-only


def test_sound_functions_take_at_most_8_parameters():
    over = {f: n for f, n in parameter_counts("attrcert.sound").items()
            if n > SOUND_MAX_PARAMETERS}
    assert not over, (f"sound functions over {SOUND_MAX_PARAMETERS} parameters: {over}: "
                      "group them into an option object (enclosures.PassOptions)")


def test_the_pipeline_functions_take_at_most_12_parameters():
    """The work that grew past the cap once (``analyse`` 15, ``attack`` 13) takes its sizes
    from the run's plan (:class:`attrcert.plan.RunPlan`) and its values as objects."""
    import inspect

    from attrcert.analysis import analyse
    from attrcert.attack import attack
    from attrcert.certify import certify_run, max_eps_run
    from attrcert.plan import plan_run
    from attrcert.records import certificate_records
    from attrcert.report import report_run
    from attrcert.run import prepare_run
    from attrcert.smoothing import smooth_run

    for func in (analyse, attack, certify_run, max_eps_run, plan_run, prepare_run,
                 certificate_records, report_run, smooth_run):
        assert len(inspect.signature(func).parameters) <= 12, func.__name__


def test_the_bounds_module_is_pure_math():
    """``bounds.py`` holds the paper's formulas only: floats and NumPy, no torch (no device),
    no file, no process (docs/architecture.md)."""
    tree = ast.parse((PACKAGE / "bounds.py").read_text())
    imported, ours = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            ours.add(node.module)
    assert imported <= {"__future__", "math", "numpy", "typing", "collections", "dataclasses"}
    assert ours <= {"perturbation", "errors"}  # value objects and errors, no torch either
    calls = {n.func.id for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not calls & {"open", "print", "exec", "eval"}
