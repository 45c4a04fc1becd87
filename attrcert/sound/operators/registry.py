"""The readers of ATen operations: which operator class models each op (docs/sound.md).

A reader is a function of one :class:`Call` (a ``call_function`` of the model's torch.fx
graph, as the graph reader sees it) that returns the :class:`.base.Operator` modelling it,
or raises :class:`.base.Refused` (or an ``InputError`` with its own message). It is
registered by the ATen ops it reads (overload packet names, ``"conv2d"``), as auto_LiRPA's
``operators/`` maps ONNX ops to its bound classes::

    @reads("tanh", "sigmoid", inplace=True, supports=("Tanh", "Sigmoid"))
    def read_activation(call: Call) -> Operator: ...

``inplace``: the in-place form (``tanh_``) is read as the op (:mod:`..graph`); ``supports``:
the names the refusals list as supported (:data:`SUPPORTED`, in registration order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from .base import Operator


class Call(Protocol):
    """One ``call_function`` of the model's graph that depends on the input."""

    op: str  #: the ATen op (overload packet name, ``"conv2d"``)
    node: torch.fx.Node
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def value(self, a: Any) -> Any:
        """The constant ``a`` stands for (fx nodes of constants replaced, recursively)."""
        ...

    def float64(self, a: Any) -> Tensor | None:
        """The constant ``a`` stands for, as a float64 tensor (None stays None)."""
        ...

    def is_var(self, a: Any) -> bool:
        """Whether ``a`` (or something in a list) is a value computed from the input."""
        ...

    def variables(self) -> list[torch.fx.Node]:
        """The arguments computed from the input, in order (repeats kept)."""
        ...

    def source(self) -> int:
        """The node of the one variable argument (refused when there are several)."""
        ...

    def node_of(self, a: torch.fx.Node) -> int:
        """The node index of the variable ``a``."""
        ...

    def shape(self, a: Any) -> tuple[int, ...]:
        """The per-sample shape of ``a`` (or of the call's result, for ``a = node``)."""
        ...

    def add(self, op: Operator) -> int:
        """Append a helper node (a broadcast, a constant), returning its index."""
        ...

    def constant(self, a: torch.fx.Node) -> int:
        """The constant ``a`` ``(1, *shape)`` as a node (the zero map of the input plus it)."""
        ...


Reader = Callable[[Call], Operator]

#: ATen op -> its reader.
READERS: dict[str, Reader] = {}
#: The ops whose in-place form (``op_``) is read as the op.
INPLACE: set[str] = set()
#: What sound mode supports, as the refusals list it.
SUPPORTED: list[str] = []


def reads(*ops: str, inplace: bool = False,
          supports: tuple[str, ...] = ()) -> Callable[[Reader], Reader]:
    """Register the decorated reader for the ATen ``ops`` (see the module docstring)."""
    def register(reader: Reader) -> Reader:
        for op in ops:
            if op in READERS:
                raise ValueError(f"aten.{op} has two readers")
            READERS[op] = reader
            if inplace:
                INPLACE.add(op)
        SUPPORTED.extend(s for s in supports if s not in SUPPORTED)
        return reader
    return register
