"""Running a model so that autograd can differentiate it twice, or saying why it cannot.

The attribution Jacobian ``J = dg/dx`` differentiates ``g = grad_x f_y`` once more, so
every operation of the model needs a derivative and its backward pass needs one too. Two
families of PyTorch kernels break that:

- fused attention: ``F.scaled_dot_product_attention`` (which ``nn.MultiheadAttention``
  and ``nn.TransformerEncoderLayer`` call) picks a fused kernel (flash, memory-efficient,
  cuDNN) whose backward pass has no derivative, so the second pass fails with
  ``derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not
  implemented``. Its math kernel (``softmax(Q K^T / sqrt(d_k)) V`` in plain matmuls and
  a softmax) gives the same values to rounding and is differentiable to any order:
  :func:`differentiable_forward` selects it, on CPU and CUDA alike.
- inference fast paths: ``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention`` in
  eval mode, when no input needs a gradient, call one fused op
  (``aten._transformer_encoder_layer_fwd``, ``aten._native_multi_head_attention``) with
  no derivative at all. :func:`differentiable_forward` switches the fast path off for
  eager models (scripted ones take it only without gradients, which attrcert never asks
  of them); ``torch.jit.trace`` records it into the archive, where nothing can switch it
  off: :func:`checked_gradient` then fails with one line naming the op and the remedy.

:func:`checked_gradient` also walks the graph a ``create_graph=True`` gradient leaves
behind: a node that autograd cannot differentiate (``NotImplemented``, or the
``Error`` of a ``@once_differentiable`` function) is reported before any
second-order pass runs, instead of half-way through a Jacobian.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import InputError

#: The fused ops of ``torch.nn``'s inference fast paths, and the module that calls each.
FAST_PATH_OPS: dict[str, str] = {
    "_transformer_encoder_layer_fwd": "nn.TransformerEncoderLayer",
    "_native_multi_head_attention": "nn.MultiheadAttention",
}
#: Autograd nodes that a first backward pass leaves where a function was marked
#: ``@once_differentiable`` (their backward raises).
_ERROR_NODES = ("DelayedError", "Error")
_OP_IN_MESSAGE = re.compile(r"derivative for (?:aten::)?([\w.:]+) is not implemented")


Mode = TypeVar("Mode", bound="ProbeMode")


class NotDifferentiableError(InputError):
    """The model uses an operation that autograd cannot differentiate (twice)."""

    kind = "model"


@contextmanager
def differentiable_forward() -> Iterator[None]:
    """Run the model inside this so that its graph can be differentiated twice: scaled
    dot-product attention by its math kernel, the ``nn`` inference fast paths off.

    Restores both settings on exit (they are process-wide flags in torch).
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


class ProbeMode(TorchDispatchMode):
    """Base of the dispatch modes that watch one forward pass (:func:`probe_forward`).

    torch wraps a mode's ``__torch_dispatch__`` so that ``torch.compile`` skips it, which
    imports ``torch._dynamo`` on the first op (1.3 s of every CLI run with a TorchScript
    model); these modes never run under ``torch.compile``, so they opt out.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False


class _FastPathSeen(ProbeMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen = self.seen or func.overloadpacket.__name__ in FAST_PATH_OPS
        return func(*args, **(kwargs or {}))


def probe_forward(model: Callable[[Tensor], Tensor], x: Tensor,
                  make_mode: Callable[[], Mode]) -> Mode:
    """Run ``model(x)`` once under a dispatch mode made by ``make_mode`` (which records
    what it wants of every ATen op) as the attributions run it, and return that mode.

    It runs inside :func:`differentiable_forward` without gradients (no graph is kept);
    if that took a fast path (a scripted ``nn.TransformerEncoderLayer`` does whenever no
    input needs a gradient, whatever the flag says), it runs again, with a fresh mode, on
    an input that needs a gradient, which is how the attributions run it.
    """
    mode, seen = make_mode(), _FastPathSeen()
    with torch.no_grad(), differentiable_forward(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with seen, mode:
            model(x.detach())
    if not seen.seen:
        return mode
    mode = make_mode()
    leaf = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), differentiable_forward(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mode:
            model(leaf)
    return mode


def remedy(op: str, *, twice: bool) -> str:
    """One line: which op cannot be differentiated (``twice``: only its backward cannot),
    and what the user can do about it."""
    op = op.split("::")[-1].split(".")[0]
    if op.endswith("_backward"):
        op = op[: -len("_backward")]
    if op in FAST_PATH_OPS:
        module = FAST_PATH_OPS[op]
        return (f"the model calls aten.{op}, the inference fast path of {module}, which "
                "has no derivative (torch.jit.trace records it when tracing in eval mode): "
                "export the model with torch.export instead, or call "
                "torch.backends.mha.set_fastpath_enabled(False) before torch.jit.trace")
    if "scaled_dot_product" in op:
        return (f"the model calls the fused attention kernel aten.{op}, whose backward "
                "pass has no derivative, and attribution Jacobians differentiate twice: "
                "call torch.nn.functional.scaled_dot_product_attention (attrcert runs it "
                "with its math kernel) instead of the fused kernel")
    if op == "hardsigmoid":
        return ("the model calls aten.hardsigmoid, which autograd differentiates once but "
                "not twice, and attribution Jacobians need the second derivative: pass the "
                "model through attrcert.differentiable_hard(model, example_batch) first (the "
                "command line does this itself)")
    if twice:
        return (f"the model calls aten.{op}, which autograd differentiates once but not "
                "twice (aten." + op + "_backward has no derivative), and attribution "
                "Jacobians need the second derivative: replace that operation by a "
                "twice-differentiable one")
    return (f"the model calls aten.{op}, which autograd cannot differentiate: replace that "
            "operation by a twice-differentiable one")


def _node_message(node: torch.autograd.graph.Node) -> str:
    """What ``node`` raises when the backward pass reaches it."""
    arity = len(getattr(node, "_input_metadata", ()))
    for count in dict.fromkeys([arity, 1, 2, 3, 4]):
        try:
            node(*[None] * count)  # type: ignore[operator]  # Node is callable at run time
        except TypeError:  # wrong number of arguments: try the next count
            continue
        except Exception as exc:  # the error autograd would raise later
            return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return node.name()


def failing_node(t: Tensor, x: Tensor) -> str | None:
    """The message of a node in ``t``'s autograd graph that would make ``grad(t, x)`` fail
    or lose part of the derivative, or None; each node is visited once, no pass runs.

    A ``NotImplemented`` node (an op without a derivative) counts when it lies on a path
    to ``x`` (elsewhere, e.g. on a path to the parameters only, ``grad(t, x)`` never runs
    it). An ``Error`` / ``DelayedError`` node counts wherever it is: it is what the first
    backward pass leaves in place of the derivative of a ``@once_differentiable``
    function, and its edges lead to detached copies, not to ``x``, so that ``grad(t, x)``
    would silently miss that part of the second derivative.
    """
    parents: dict[torch.autograd.graph.Node, list[torch.autograd.graph.Node]] = {}
    missing: list[torch.autograd.graph.Node] = []
    stack = [t.grad_fn]
    seen: set[torch.autograd.graph.Node] = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        kind = node.name().split("::")[-1]
        if kind in _ERROR_NODES:
            return _node_message(node)
        if kind == "NotImplemented":
            missing.append(node)
        for nxt, _ in node.next_functions:
            if nxt is not None:
                parents.setdefault(nxt, []).append(node)
                stack.append(nxt)
    target = torch.autograd.graph.get_gradient_edge(x).node
    if not missing or target not in seen:
        return None
    reaching, todo = {target}, [target]  # nodes with a path to x: walk the edges backwards
    while todo:
        for parent in parents.get(todo.pop(), ()):
            if parent not in reaching:
                reaching.add(parent)
                todo.append(parent)
    for node in missing:
        if node in reaching:
            return _node_message(node)
    return None


def _explain(message: str, *, twice: bool) -> NotDifferentiableError:
    match = _OP_IN_MESSAGE.search(message)
    if match is not None:
        return NotDifferentiableError(remedy(match.group(1), twice=twice))
    return NotDifferentiableError(
        f"the model cannot be differentiated {'twice' if twice else 'once'}, as attribution "
        f"Jacobians need: {message}")


def checked_gradient(output: Tensor, x: Tensor, *, create_graph: bool) -> Tensor:
    """``grad_x output`` (``output`` a scalar), with a one-line error for a model that
    autograd cannot differentiate; with ``create_graph``, also one for a model whose
    gradient it cannot differentiate again (found by walking the new graph: no pass runs).

    Raises:
        NotDifferentiableError: naming the op and the remedy (:func:`remedy`).
    """
    try:
        (grad,) = torch.autograd.grad(output, x, create_graph=create_graph)
    except RuntimeError as exc:
        if _OP_IN_MESSAGE.search(str(exc)) is None:
            raise
        raise _explain(str(exc), twice=False) from None
    if create_graph and grad.requires_grad:
        message = failing_node(grad, x)
        if message is not None:
            raise _explain(message, twice=True)
    return grad
