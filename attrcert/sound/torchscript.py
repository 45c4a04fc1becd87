"""TorchScript models rebuilt as modules of ATen calls, so that torch.export can read them."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from .support import NOT_SMOOTH, refusal


class _AtenCall(torch.nn.Module):
    """One ATen call ``op(x, *args)`` read from a TorchScript graph (tensors as buffers)."""

    def __init__(self, op: str, args: list[object]) -> None:
        super().__init__()
        self.op = op
        self.kinds: list[object] = []
        for i, a in enumerate(args):
            if isinstance(a, Tensor):
                self.register_buffer(f"t{i}", a.detach().clone())
                self.kinds.append(f"t{i}")
            else:
                self.kinds.append(("const", a))

    def forward(self, x: Tensor) -> Tensor:
        args = [getattr(self, k) if isinstance(k, str) else k[1] for k in self.kinds]
        return getattr(torch.ops.aten, self.op)(x, *args)


def from_torchscript(model: torch.jit.ScriptModule) -> torch.nn.Module:
    """A TorchScript model that is a chain of ATen calls, rebuilt as an ``nn.Sequential``
    of :class:`_AtenCall` (so that torch.export can read it). Weights are read through the
    graph's ``prim::GetAttr``; constants through ``prim::Constant`` / ``ListConstruct``."""
    graph = model.inlined_graph
    values: dict[str, object] = {}
    inputs = list(graph.inputs())
    values[inputs[0].debugName()] = model
    chain = inputs[1].debugName() if len(inputs) > 1 else None
    calls: list[torch.nn.Module] = []
    for node in graph.nodes():
        kind = node.kind()
        outs = [o.debugName() for o in node.outputs()]
        ins = [i.debugName() for i in node.inputs()]
        if kind == "prim::GetAttr":
            values[outs[0]] = getattr(values[ins[0]], node.s("name"))
        elif kind == "prim::Constant":
            values[outs[0]] = node.output().toIValue()
        elif kind == "prim::ListConstruct":
            if chain in ins:
                raise InputError("--sound cannot read this TorchScript model's graph: use "
                                 "the torch.export (.pt2) archive or the weights with --arch")
            values[outs[0]] = [values[i] for i in ins]
        elif kind.startswith("aten::"):
            op = kind.split("::")[1]
            if not ins or ins[0] != chain or chain in ins[1:]:
                raise refusal(op) if op in NOT_SMOOTH else InputError(
                    f"--sound cannot read this TorchScript model's graph at aten.{op}: use "
                    "the torch.export (.pt2) archive or the weights with --arch")
            if op in NOT_SMOOTH:
                raise refusal(op)
            calls.append(_AtenCall(op, [values[i] for i in ins[1:]]))
            chain = outs[0]
        elif kind == "prim::TupleConstruct" or kind == "prim::Return":
            continue
        else:
            raise InputError(f"--sound cannot read the TorchScript operation {kind}: use "
                             "the torch.export (.pt2) archive or the weights with --arch")
    return torch.nn.Sequential(*calls).eval()
