"""TorchScript models rebuilt as torch.fx graphs of ATen calls, so that torch.export can read
them (traced TorchScript: straight-line code of ``aten::`` calls, weights through
``prim::GetAttr``, constants through ``prim::Constant`` and ``prim::ListConstruct``)."""

from __future__ import annotations

import operator
from typing import Any

import torch

from ..errors import InputError
from .support import refusal, refused_by_name

_READ = "use the torch.export (.pt2) archive, the weights with --arch, or torch.jit.trace"


def _call(graph: torch.fx.Graph, node: torch._C.Node, op: str, ins: list[Any]) -> torch.fx.Node:
    """``graph.call_function`` of the overload the TorchScript node names, its keyword-only
    arguments (``alpha`` of ``aten::add``) passed by name."""
    schema = torch._C.parse_schema(node.schema()) if node.schema() != "(no schema)" else None
    if schema is None:
        return graph.call_function(getattr(torch.ops.aten, op), tuple(ins))
    fn = getattr(getattr(torch.ops.aten, op), schema.overload_name or "default")
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for arg, value in zip(schema.arguments, ins, strict=False):
        if arg.kwarg_only:
            kwargs[arg.name] = value
        else:
            args.append(value)
    return graph.call_function(fn, tuple(args), kwargs)


def from_torchscript(model: torch.jit.ScriptModule, *,
                     purpose: str = "--sound") -> torch.fx.GraphModule:
    """The TorchScript model's inlined graph as a ``torch.fx.GraphModule`` calling
    ``torch.ops.aten`` (one input tensor, one output tensor; a DAG is fine).

    ``purpose`` names the option in messages; only ``--sound`` refuses what it cannot
    bound here (``--beta-smooth`` rewrites ReLU and its relatives afterwards)."""
    ts = model.inlined_graph
    root = torch.nn.Module()
    graph = torch.fx.Graph()
    inputs = list(ts.inputs())
    if len(inputs) != 2:
        raise InputError(f"{purpose} needs a model with one input tensor")
    values: dict[str, Any] = {inputs[0].debugName(): model,
                                 inputs[1].debugName(): graph.placeholder("x")}
    count = 0
    for node in ts.nodes():
        kind = node.kind()
        outs = [o.debugName() for o in node.outputs()]
        ins = [values[i.debugName()] for i in node.inputs()]
        if kind == "prim::GetAttr":
            obj = getattr(ins[0], node.s("name"))
            if isinstance(obj, torch.Tensor):
                count += 1
                root.register_buffer(f"t{count}", obj.detach().clone())
                obj = graph.get_attr(f"t{count}")
            values[outs[0]] = obj
        elif kind == "prim::Constant":
            values[outs[0]] = node.output().toIValue()
        elif kind in ("prim::ListConstruct", "prim::TupleConstruct"):
            values[outs[0]] = list(ins) if kind == "prim::ListConstruct" else tuple(ins)
        elif kind == "prim::TupleUnpack" or kind == "prim::ListUnpack":
            for i, name in enumerate(outs):
                values[name] = ins[0][i]
        elif kind == "prim::NumToTensor" or kind == "aten::Int":  # traced sizes: keep ints
            values[outs[0]] = ins[0]
        elif kind.startswith("aten::"):
            op = kind.split("::")[1]
            if purpose == "--sound" and refused_by_name(op):
                raise refusal(op)
            result = _call(graph, node, op, ins)
            if len(outs) == 1:
                values[outs[0]] = result
            for i, name in enumerate(outs if len(outs) > 1 else []):  # (values, indices)
                values[name] = graph.call_function(operator.getitem, (result, i))
        else:
            raise InputError(f"{purpose} cannot read the TorchScript operation {kind}: {_READ}")
    outs_ts = list(ts.outputs())
    output = values.get(outs_ts[0].debugName()) if len(outs_ts) == 1 else None
    while isinstance(output, (list, tuple)) and len(output) == 1:
        output = output[0]
    if not isinstance(output, torch.fx.Node):
        raise InputError(f"{purpose} needs a TorchScript model that returns one tensor: {_READ}")
    graph.output(output)
    return torch.fx.GraphModule(root, graph)
