"""The float64 copy of the network: a directed acyclic graph of operators (:mod:`.operators`).

Nodes are in topological order (inputs before users), node 0 is the input ``x``, ``output``
the logits node. ``patterns`` holds the structural sparsity of every ``d z_v / d x``:
outside it the Jacobian entry is exactly zero (``z_v`` does not depend on that input), so
the enclosures store exact zeros there and pad only inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from .operators import Operator


@dataclass
class Graph:
    """The nodes in topological order, the index of the output (logits) node, and (after
    :meth:`finish`) the users of each node."""

    nodes: list[Operator]
    output: int = -1
    users: list[list[int]] = field(default_factory=list)

    def finish(self, example: Tensor) -> None:
        """Record every node's shapes (a forward pass on ``example``) and users."""
        values = evaluate(self, example[:1].detach().to(torch.float64))
        self.users = [[] for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            node.set_shapes([self.nodes[j].shape for j in node.inputs],
                            tuple(values[i].shape[1:]))
            for j in node.inputs:
                self.users[j].append(i)

    @cached_property
    def patterns(self) -> list[Tensor]:
        """The structural pattern of every node's ``d z_v / d x`` (:func:`patterns`)."""
        return patterns(self)

    @property
    def has_threshold(self) -> bool:
        """Whether some operator switches branches at a threshold (Softplus)."""
        return any(n.threshold is not None for n in self.nodes)

    @property
    def stops_gradient(self) -> bool:
        """Whether the graph holds a stop-gradient: the attribution's Jacobian is then no
        Hessian of ``f_y`` (docs/sound.md)."""
        return any(n.stops_gradient for n in self.nodes)


def evaluate(graph: Graph, x: Tensor) -> list[Tensor]:
    """Every node's value for the batch ``x``."""
    values: list[Tensor] = []
    for node in graph.nodes:
        values.append(node.value([values[i] for i in node.inputs] if node.inputs else [x]))
    return values


def forward(graph: Graph, x: Tensor) -> Tensor:
    """The network's output (float64) for ``x`` ``(B, *in_shape)``: a plain torch function,
    differentiable, used to check the reading against the model and by the tests."""
    return evaluate(graph, x)[graph.output]


def patterns(graph: Graph) -> list[Tensor]:
    """For every node, the boolean ``(d, *shape)`` structural pattern of ``d z_v / d x``
    (:meth:`.operators.Operator.pattern`: ``|A|`` applied to the indicator of the input's
    pattern for affine maps, sums of 0/1 values, exact; unions; concatenations)."""
    shape = graph.nodes[0].shape
    d = int(torch.Size(shape).numel())
    eye = torch.eye(d, dtype=torch.float64).view(d, *shape)
    out: list[Tensor] = []
    for node in graph.nodes:
        out.append(node.pattern([out[i] for i in node.inputs] if node.inputs else [eye > 0]))
    return out
