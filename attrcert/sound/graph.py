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

import torch
from torch import Tensor

from ..errors import InputError
from .activations import activation
from .nodes import ACT, ADD, AFFINE, CAT, INPUT, MUL, Affine, Graph, Node
from .ops import (
    CONST_OPS,
    REDUCE_OPS,
    SHAPE_OPS,
    batch_norm_op,
    broadcast,
    const_op,
    conv_op,
    detach_op,
    linear_op,
    permute_op,
    reduce_op,
    rounded_division,
    shape_op,
    slice_op,
)
from .support import (
    NOT_ENCLOSED,
    NOT_SMOOTH,
    check_inplace,
    check_precision,
    refusal,
    runtime_dtypes,
)
from .torchscript import from_torchscript

ACTIVATIONS = ("tanh", "sigmoid", "silu", "gelu", "softplus")
#: In-place ops read in their functional form (``silu_``, ``x += y``).
INPLACE = (*ACTIVATIONS, "add", "sub", "mul", "div")
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


def _shape(a: object) -> tuple[int, ...]:
    meta = getattr(a, "meta", {}).get("val")
    if not isinstance(meta, Tensor):
        raise InputError("--sound could not read the shapes of this model's graph")
    return tuple(int(s) for s in meta.shape[1:])


class _Reader:
    """The state of one pass over an fx graph: constants, and the node of every variable."""

    def __init__(self, gm: torch.fx.GraphModule, example: Tensor) -> None:
        self.gm = gm
        self.dtype = example.dtype
        self.dtypes = runtime_dtypes(gm, example)
        self.example = example
        self.consts: dict[str, object] = {}
        self.ids: dict[str, int] = {}
        self.sym: set[str] = set()
        self.nodes: list[Node] = []

    def add(self, node: Node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def val(self, a: object) -> object:
        if isinstance(a, torch.fx.Node):
            if a.name in self.ids:
                raise InputError(f"--sound cannot use the activation {a.name} as a constant")
            return self.consts.get(a.name) if a.name in self.sym else self.consts[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(self.val(b) for b in a)
        return a

    @staticmethod
    def f64(t: object) -> Tensor | None:
        """``t`` in float64 (a Python number directly: not through float32)."""
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            return torch.tensor(float(t), dtype=torch.float64)
        return None if t is None else torch.as_tensor(t).detach().to(torch.float64)

    def is_input(self, a: object) -> bool:
        return isinstance(a, torch.fx.Node) and self.ids.get(a.name) == 0

    def is_var(self, a: object) -> bool:
        if isinstance(a, torch.fx.Node):
            return a.name in self.ids
        if isinstance(a, (list, tuple)):
            return any(self.is_var(b) for b in a)
        return False

    def depends(self, a: object) -> bool:
        if isinstance(a, torch.fx.Node):
            return a.name in self.ids or a.name in self.sym
        if isinstance(a, (list, tuple)):
            return any(self.depends(b) for b in a)
        return False

    def var_args(self, args: tuple) -> list[torch.fx.Node]:
        out: list[torch.fx.Node] = []
        for a in args:
            if isinstance(a, torch.fx.Node) and a.name in self.ids:
                out.append(a)
            elif isinstance(a, (list, tuple)):
                out.extend(self.var_args(tuple(a)))
        return out

    def same_shape(self, a: torch.fx.Node, out: tuple[int, ...]) -> int:
        """The node of ``a``, broadcast to ``out`` when its shape differs."""
        i = self.ids[a.name]
        shape = _shape(a)
        if shape == out:
            return i
        return self.add(Node(AFFINE, (i,), affine=broadcast(shape, out), name="broadcast"))

    def call(self, node: torch.fx.Node, op: str | None = None) -> None:
        """Read one ``call_function`` (as the ATen op ``op``, if given)."""
        args, kwargs = node.args, node.kwargs
        op = op or _op_name(node.target)
        if not self.depends(list(args) + list(kwargs.values())):
            self.consts[node.name] = node.target(*self.val(args), **self.val(kwargs))
            return
        if op in SKIPPED:
            return
        meta = node.meta.get("val")
        if op == "sym_size" or (meta is not None and not isinstance(meta, (Tensor, tuple,
                                                                           list))):
            self.sym.add(node.name)  # a size computed from the input (dynamic batch)
            if op == "sym_size" and self.is_input(args[0]):  # its value for the example
                self.consts[node.name] = int(self.example.shape[int(args[1])])  # type: ignore[arg-type]
            return
        check_precision(node, op, self.dtype, self.dtypes.get(node.name))
        if node.target is operator.getitem:
            if not self.is_var(args[0]) or args[1] != 0:
                raise refusal("getitem")
            self.ids[node.name] = self.ids[args[0].name]
            return
        if op in NOT_SMOOTH or op in NOT_ENCLOSED or rounded_division(op, kwargs):
            raise refusal(op if op != "div" else "div with a rounding_mode")
        if op.endswith("_") and op[:-1] in INPLACE:  # silu_, add_: the functional form,
            if rounded_division(op[:-1], kwargs):
                raise refusal("div_ with a rounding_mode")
            self._functional(node, op[:-1])  # after which x reads the result
            return
        variables = self.var_args(tuple(args) + tuple(kwargs.values()))
        if not variables:  # a constant sized by the input (a class token expanded to the
            try:  # batch): its value for the example, one sample
                self.consts[node.name] = node.target(*self.val(args), **self.val(kwargs))  # type: ignore[operator, misc, arg-type]
            except Exception:
                raise refusal(f"{op} of a size of the input") from None
            return
        names = {v.name for v in variables}
        if op in ("add", "sub", "mul") and len(variables) == 2:
            out = _shape(node)
            a, b = (self.same_shape(v, out) for v in variables)
            if op == "mul":
                self.ids[node.name] = self.add(Node(MUL, (a, b), name=node.name))
                return
            alpha = float(self.val(kwargs.get("alpha", args[2] if len(args) > 2 else 1.0)))  # type: ignore[arg-type]
            sign = alpha if op == "add" else -alpha
            self.ids[node.name] = self.add(Node(ADD, (a, b), sign=sign, name=node.name))
            return
        if op == "cat":
            parts = list(args[0])
            for part in parts:  # a constant part (a class token): a node of its own
                if isinstance(part, torch.fx.Node) and not self.is_var(part):
                    self.ids[part.name] = self._constant(part)
            dim = int(self.val(args[1] if len(args) > 1 else kwargs.get("dim", 0)))  # type: ignore[arg-type]
            ndim = len(_shape(node)) + 1
            dim = dim % ndim - 1
            if dim < 0:
                raise refusal("cat along the batch axis")
            self.ids[node.name] = self.add(Node(CAT, tuple(self.ids[p.name] for p in parts),
                                                dim=dim, name=node.name))
            return
        if len(names) != 1:
            raise refusal(op)
        src = self.ids[variables[0].name]
        if op in ACTIVATIONS:
            if not self.is_var(args[0]):
                raise refusal(op)
            self.ids[node.name] = self.add(Node(ACT, (src,), act=self._activation(op, args,
                                                                               kwargs),
                                                name=node.name))
            return
        if op in ("conv2d", "convolution", "_convolution"):
            aff = conv_op(op, args, self.val, self.f64, self.is_var)
        elif op in ("linear", "addmm", "mm"):
            aff = linear_op(op, args, self.val, self.f64, self.is_var, kwargs)
        elif op in ("batch_norm", "_native_batch_norm_legit_no_training"):
            aff = batch_norm_op(op, node, args, self.val, self.f64)
        elif op == "detach":
            aff = detach_op()
        elif op in SHAPE_OPS:
            aff = shape_op(op, node, args, kwargs, self.val)
        elif op in ("permute", "transpose"):
            aff = permute_op(op, args, self.val)
        elif op in ("slice", "select"):
            aff = slice_op(op, args, self.val)
        elif op in REDUCE_OPS:
            aff = reduce_op(op, node, args, kwargs, self.val)
        elif op in CONST_OPS:
            aff = const_op(op, args, kwargs, self.val, self.f64, self.is_var)
        else:
            raise refusal(op)
        self.ids[node.name] = self.add(Node(AFFINE, (src,), affine=aff, name=node.name))

    def _functional(self, node: torch.fx.Node, op: str) -> None:
        """An in-place ``op_`` read as ``op``; the tensor it overwrote then stands for the
        result (refused on a view, whose base would change too)."""
        target = node.args[0] if node.args else None
        if not isinstance(target, torch.fx.Node) or not self.is_var(target) or (
                target.op == "call_function" and _op_name(target.target) in VIEWS):
            raise refusal(f"{op}_ (in place) of a constant or a view")
        self.call(node, op)
        self.ids[target.name] = self.ids[node.name]

    def _constant(self, node: torch.fx.Node) -> int:
        """A constant ``(1, *shape)`` as a node: the zero map of the input plus the constant
        (its derivative is exactly zero)."""
        value = self.val(node)
        if not isinstance(value, Tensor) or value.ndim < 1 or value.shape[0] != 1:
            raise refusal("cat of an activation with a constant that is not one sample")
        shape = tuple(int(n) for n in value.shape[1:])
        const = self.f64(value)

        def zero(t: Tensor) -> Tensor:  # 0 x, differentiable (its transpose is taken)
            first = t.reshape(t.shape[0], -1)[:, :1] * 0.0
            return first.view(t.shape[0], *([1] * len(shape))).expand(t.shape[0], *shape)

        return self.add(Node(AFFINE, (0,), affine=Affine("constant", zero, zero, const),
                             name=node.name))

    def _activation(self, op: str, args: tuple, kwargs: dict) -> object:
        if op == "softplus":
            beta = float(self.val(args[1]) if len(args) > 1 else kwargs.get("beta", 1.0))  # type: ignore[arg-type]
            thr = float(self.val(args[2]) if len(args) > 2 else kwargs.get("threshold", 20.0))  # type: ignore[arg-type]
            if beta <= 0:
                raise refusal(f"softplus(beta={beta:g})")
            return activation("softplus", beta, thr)
        if op == "gelu":
            approx = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
            if approx != "none":
                raise InputError("--sound supports exact GELU only, not "
                                 f"GELU(approximate={approx!r})")
        return activation(op)


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
            if op in NOT_SMOOTH or op in NOT_ENCLOSED:
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
            reader.ids[node.name] = reader.add(Node(INPUT, name="input"))
        elif node.op == "get_attr":
            reader.consts[node.name] = _fetch(gm, node.target)
        elif node.op == "call_function":
            reader.call(node)
        elif node.op == "output":
            out = node.args[0]
            while isinstance(out, (list, tuple)) and len(out) == 1:
                out = out[0]
            if not reader.is_var(out):
                raise InputError("--sound needs a model that returns one tensor computed "
                                 "from its input")
            output = reader.ids[out.name]  # type: ignore[union-attr]
        # call_module: torch.export's input guards
    if not reader.nodes or output is None:
        raise InputError("--sound needs a model with one input tensor and one output")
    graph = Graph(reader.nodes, output)
    graph.finish(example)
    return graph
