"""Reading the model as a DAG of float64 nodes (:mod:`.nodes`) from its torch.export graph.

TorchScript models are rebuilt as torch.fx graphs first (:mod:`.torchscript`), other modules
are exported (``torch.export.export``). Every ``call_function`` of the graph that does not
depend on the input is folded into a constant; the others become nodes: activations,
affine maps of one input (:mod:`.ops`), and the binary operations of two inputs (residual
additions, elementwise products, concatenation). What cannot be bounded is refused by name
(:mod:`.support`).
"""

from __future__ import annotations

import operator
import warnings
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from .nodes import Graph
from .operators import INPLACE, READERS, Affine, Input, Operator, Refused
from .operators.base import as_float64
from .support import (
    NOT_ENCLOSED,
    NOT_SMOOTH,
    check_inplace,
    check_precision,
    refusal,
    refused_by_name,
    runtime_dtypes,
)
from .torchscript import from_torchscript

#: Ops whose result shares the storage of their input.
VIEWS = ("view", "reshape", "_unsafe_view", "flatten", "squeeze", "unsqueeze", "expand",
         "permute", "transpose", "slice", "select", "alias", "detach", "t")
SKIPPED = ("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size",
           "_assert_async")


def _fetch(gm: torch.nn.Module, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _op_name(target: object) -> str:
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def _graph_module(model: torch.nn.Module, example: Tensor) -> torch.fx.GraphModule:
    if isinstance(model, torch.jit.ScriptModule):
        model = from_torchscript(model)
    elif isinstance(model, torch.fx.GraphModule) and any(
            "val" in n.meta for n in model.graph.nodes if n.op == "call_function"):
        return model
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model, (example,)).module()
    except InputError:
        raise
    except Exception as exc:  # export failures are long; keep the first line
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise InputError(f"--sound needs a model that torch.export can trace: {first}") \
            from None


def _rounded_division(op: str, kwargs: dict[str, Any]) -> bool:
    """Whether ``op`` is ``div`` with a ``rounding_mode`` (floor or trunc: piecewise
    constant, not the smooth ``x / c`` that the constant scaling models)."""
    return op == "div" and kwargs.get("rounding_mode") is not None


class _Reader:
    """The state of one pass over an fx graph: constants, and the node of every variable."""

    def __init__(self, gm: torch.fx.GraphModule, example: Tensor) -> None:
        self.gm = gm
        self.dtype = example.dtype
        self.dtypes = runtime_dtypes(gm, example)
        self.example = example
        self.consts: dict[str, Any] = {}
        self.ids: dict[str, int] = {}
        self.sym: set[str] = set()
        self.nodes: list[Operator] = []

    def add(self, node: Operator) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def val(self, a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            if a.name in self.ids:
                raise InputError(f"--sound cannot use the activation {a.name} as a constant")
            return self.consts.get(a.name) if a.name in self.sym else self.consts[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(self.val(b) for b in a)
        return a

    def is_input(self, a: Any) -> bool:
        return isinstance(a, torch.fx.Node) and self.ids.get(a.name) == 0

    def is_var(self, a: Any) -> bool:
        if isinstance(a, torch.fx.Node):
            return a.name in self.ids
        if isinstance(a, (list, tuple)):
            return any(self.is_var(b) for b in a)
        return False

    def depends(self, a: Any) -> bool:
        if isinstance(a, torch.fx.Node):
            return a.name in self.ids or a.name in self.sym
        if isinstance(a, (list, tuple)):
            return any(self.depends(b) for b in a)
        return False

    def var_args(self, args: tuple[Any, ...]) -> list[torch.fx.Node]:
        out: list[torch.fx.Node] = []
        for a in args:
            if isinstance(a, torch.fx.Node) and a.name in self.ids:
                out.append(a)
            elif isinstance(a, (list, tuple)):
                out.extend(self.var_args(tuple(a)))
        return out

    def call(self, node: torch.fx.Node, op: str | None = None) -> None:
        """Read one ``call_function`` (as the ATen op ``op``, if given)."""
        args, kwargs, target = node.args, node.kwargs, node.target
        assert callable(target), "a call_function's target is a function"
        op = op or _op_name(target)
        if not self.depends(list(args) + list(kwargs.values())):
            self.consts[node.name] = target(*self.val(args), **self.val(kwargs))
            return
        if op in SKIPPED:
            return
        meta = node.meta.get("val")
        if op == "sym_size" or (meta is not None and not isinstance(meta, (Tensor, tuple,
                                                                           list))):
            self.sym.add(node.name)  # a size computed from the input (dynamic batch)
            if op == "sym_size" and self.is_input(args[0]):  # its value for the example
                self.consts[node.name] = int(self.example.shape[int(self.val(args[1]))])
            return
        check_precision(node, op, self.dtype, self.dtypes.get(node.name))
        if node.target is operator.getitem:
            src = args[0]
            if not isinstance(src, torch.fx.Node) or not self.is_var(src) or args[1] != 0:
                raise refusal("getitem")
            self.ids[node.name] = self.ids[src.name]
            return
        if refused_by_name(op) or _rounded_division(op, kwargs):
            raise refusal(op if op != "div" else "div with a rounding_mode")
        if op.endswith("_") and op[:-1] in INPLACE:  # silu_, add_: the functional form,
            if _rounded_division(op[:-1], kwargs):
                raise refusal("div_ with a rounding_mode")
            self._functional(node, op[:-1])  # after which x reads the result
            return
        variables = self.var_args(tuple(args) + tuple(kwargs.values()))
        if not variables:  # a constant sized by the input (a class token expanded to the
            try:  # batch): its value for the example, one sample
                self.consts[node.name] = target(*self.val(args), **self.val(kwargs))
            except Exception:
                raise refusal(f"{op} of a size of the input") from None
            return
        reader = READERS.get(op)
        if reader is None:
            raise refusal(op)
        try:
            self.ids[node.name] = self.add(reader(_Call(self, node, op, variables)))
        except Refused as exc:
            raise refusal(str(exc)) from None

    def _functional(self, node: torch.fx.Node, op: str) -> None:
        """An in-place ``op_`` read as ``op``; the tensor it overwrote then stands for the
        result (refused on a view, whose base would change too)."""
        target = node.args[0] if node.args else None
        if not isinstance(target, torch.fx.Node) or not self.is_var(target) or (
                target.op == "call_function" and _op_name(target.target) in VIEWS):
            raise refusal(f"{op}_ (in place) of a constant or a view")
        self.call(node, op)
        self.ids[target.name] = self.ids[node.name]

    def constant(self, node: torch.fx.Node) -> int:
        """A constant ``(1, *shape)`` as a node: the zero map of the input plus the constant
        (its derivative is exactly zero); ``node`` then reads as that node."""
        value = self.val(node)
        if not isinstance(value, Tensor) or value.ndim < 1 or value.shape[0] != 1:
            raise refusal("cat of an activation with a constant that is not one sample")
        shape = tuple(int(n) for n in value.shape[1:])
        const = value.detach().to(torch.float64)

        def zero(t: Tensor) -> Tensor:  # 0 x, differentiable (its transpose is taken)
            first = t.reshape(t.shape[0], -1)[:, :1] * 0.0
            return first.view(t.shape[0], *([1] * len(shape))).expand(t.shape[0], *shape)

        self.ids[node.name] = self.add(Affine(inputs=(0,), name=node.name, op="constant",
                                              lin=zero, lin_abs=zero, bias=const))
        return self.ids[node.name]


class _Call:
    """One ``call_function`` as a reader sees it (:class:`.operators.Call`)."""

    def __init__(self, reader: _Reader, node: torch.fx.Node, op: str,
                 variables: list[torch.fx.Node]) -> None:
        self.reader, self.node, self.op = reader, node, op
        self.args: tuple[Any, ...] = tuple(node.args)
        self.kwargs: dict[str, Any] = dict(node.kwargs)
        self._variables = variables

    def value(self, a: Any) -> Any:
        return self.reader.val(a)

    def float64(self, a: Any) -> Tensor | None:
        return as_float64(a)

    def is_var(self, a: Any) -> bool:
        return self.reader.is_var(a)

    def variables(self) -> list[torch.fx.Node]:
        return self._variables

    def source(self) -> int:
        if len({v.name for v in self._variables}) != 1:
            raise Refused(self.op)
        return self.reader.ids[self._variables[0].name]

    def node_of(self, a: torch.fx.Node) -> int:
        return self.reader.ids[a.name]

    def shape(self, a: Any) -> tuple[int, ...]:
        meta = getattr(a, "meta", {}).get("val")
        if not isinstance(meta, Tensor):
            raise InputError("--sound could not read the shapes of this model's graph")
        return tuple(int(s) for s in meta.shape[1:])

    def add(self, op: Operator) -> int:
        return self.reader.add(op)

    def constant(self, a: torch.fx.Node) -> int:
        return self.reader.constant(a)


def _refuse_first(gm: torch.fx.GraphModule) -> None:
    """Refuse the operations that cannot be bounded (not smooth, or no enclosure: LayerNorm,
    attention) before reading, so that the error names them rather than an operation
    that precedes them; only those that depend on the input count."""
    depends: set[torch.fx.Node] = set()
    found: list[str] = []
    for node in gm.graph.nodes:
        if node.op == "placeholder" or (node.op == "call_function" and any(
                a in depends for a in node.all_input_nodes)):
            depends.add(node)
            op = _op_name(node.target) if node.op == "call_function" else ""
            if refused_by_name(op):
                found.append(op)
            elif op.endswith("_") and op[:-1] in NOT_SMOOTH:
                found.append(op[:-1])
    if found:
        error = refusal(found[0])
        names = {(NOT_SMOOTH | NOT_ENCLOSED)[op] for op in found}
        names.discard((NOT_SMOOTH | NOT_ENCLOSED)[found[0]])
        raise InputError(str(error) + (f" (it also uses {', '.join(sorted(names))})"
                                       if names else "")) from None


def read_graph(model: torch.nn.Module, example: Tensor) -> Graph:
    """The model as a :class:`.nodes.Graph` in float64, read from its torch.export graph.

    Raises :class:`InputError` naming the first operation that is not supported (ReLU and
    max-pooling: not twice differentiable; LayerNorm, softmax attention: no enclosure), that
    computes in another precision than ``example``'s (the rounding term is proved for one),
    or that changes a value in place which is read again afterwards."""
    gm = _graph_module(model, example)
    _refuse_first(gm)
    check_inplace(gm.graph)
    reader = _Reader(gm, example[:1])
    output = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if reader.nodes:
                raise InputError("--sound needs a model with one input tensor")
            reader.ids[node.name] = reader.add(Input(name="input"))
        elif node.op == "get_attr":
            reader.consts[node.name] = _fetch(gm, node.target)
        elif node.op == "call_function":
            reader.call(node)
        elif node.op == "output":
            out = node.args[0]
            while isinstance(out, (list, tuple)) and len(out) == 1:
                out = out[0]
            if not isinstance(out, torch.fx.Node) or not reader.is_var(out):
                raise InputError("--sound needs a model that returns one tensor computed "
                                 "from its input")
            output = reader.ids[out.name]
        # call_module: torch.export's input guards
    if not reader.nodes or output is None:
        raise InputError("--sound needs a model with one input tensor and one output")
    graph = Graph(reader.nodes, output)
    graph.finish(example)
    return graph
