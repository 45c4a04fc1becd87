"""What sound mode refuses, and the one-line refusals: the operations that are not smooth or
have no enclosure, a step in another precision, an in-place change read again; what it
supports is what its readers read (:data:`.operators.SUPPORTED`)."""

from __future__ import annotations

import warnings

import torch

from ..errors import InputError
from ..smoothness import NONSMOOTH_OPS
from .operators import READERS, SUPPORTED

#: The operations that are not twice differentiable, named (shared with the warning of
#: :func:`attrcert.smoothness.find_nonsmooth`).
NOT_SMOOTH = NONSMOOTH_OPS

NOT_ENCLOSED = {
    "layer_norm": "LayerNorm", "native_layer_norm": "LayerNorm", "group_norm": "GroupNorm",
    "native_group_norm": "GroupNorm", "softmax": "softmax", "_softmax": "softmax",
    "_safe_softmax": "softmax", "log_softmax": "log-softmax", "_log_softmax": "log-softmax",
    "scaled_dot_product_attention": "softmax attention",
    "_scaled_dot_product_flash_attention_for_cpu": "softmax attention",
    "_scaled_dot_product_efficient_attention": "softmax attention",
    "bmm": "a product of two activations (attention)",
    "matmul": "a product of two activations (attention)",
    "baddbmm": "a product of two activations (attention)",
}


def refused_by_name(op: str) -> bool:
    """Whether sound mode refuses the ATen ``op`` wherever it is: not twice differentiable,
    or a known operation without an enclosure (and without a reader that models it)."""
    return op in NOT_SMOOTH or (op in NOT_ENCLOSED and op not in READERS)


def refusal(op: str) -> InputError:
    """The one-line error for the ATen operation ``op`` that sound mode cannot bound."""
    if op in NOT_SMOOTH:
        return InputError(
            f"--sound cannot bound a model with {NOT_SMOOTH[op]} (aten.{op}): it is not twice "
            "differentiable, so the attribution has no bounded Jacobian; use a model built "
            f"from {', '.join(SUPPORTED)}")
    if op in NOT_ENCLOSED:
        return InputError(
            f"--sound does not bound {NOT_ENCLOSED[op]} (aten.{op}): no proved enclosure of "
            "its second derivatives is implemented; supported are "
            f"{', '.join(SUPPORTED)}")
    return InputError(f"--sound does not support the operation aten.{op} in this model: "
                      f"supported are {', '.join(SUPPORTED)}")


def runtime_dtypes(gm: torch.fx.GraphModule, example: torch.Tensor) -> dict[str, torch.dtype]:
    """The dtype of every tensor-valued node when ``gm`` runs on ``example`` (one pass of
    the graph): an archive exported in float32 and run with ``--dtype float64`` computes in
    float64 where its recorded shapes say float32, except where it casts explicitly. Empty
    when the pass fails (the model's own check then reports it)."""
    found: dict[str, torch.dtype] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> object:
            out = super().run_node(n)
            first = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(first, torch.Tensor):
                found[n.name] = first.dtype
            return out

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Recorder(gm).run(example)
    except Exception:  # the model's own forward check reports failures
        return {}
    return found


def check_precision(node: torch.fx.Node, op: str, dtype: torch.dtype,
                    actual: torch.dtype | None) -> None:
    """Refuse a node computed from the input whose result is not in the model's precision
    ``dtype`` (a float16 mean or a ``.half()`` inside a float32 model, a float64 step inside
    a float32 one, integers): the rounding term is proved for one unit roundoff, and float16
    also underflows where the float32 analysis assumes it does not. ``actual``: the dtype
    the node had when the graph ran (:func:`runtime_dtypes`; else the recorded one)."""
    if actual is None:
        meta = node.meta.get("val")
        first = meta[0] if isinstance(meta, (tuple, list)) and meta else meta
        actual = first.dtype if isinstance(first, torch.Tensor) else None
    if actual is not None and actual != dtype:
        raise InputError(f"--sound proves the rounding of one precision, "
                         f"{str(dtype).replace('torch.', '')}: aten.{op} (node {node.name}) "
                         f"computes in {str(actual).replace('torch.', '')}; remove that cast "
                         "(or dtype= argument) from the model")


def _returns_alias(node: torch.fx.Node) -> bool:
    """Whether ``node`` returns a view of its first argument (its schema says so)."""
    schema = getattr(node.target, "_schema", None)
    if schema is None or not schema.returns or not node.args:
        return False
    info = schema.returns[0].alias_info
    return info is not None and not info.is_write


def check_inplace(graph: torch.fx.Graph) -> None:
    """Refuse an in-place operation (``aten.silu_``, ``aten.mul_``, ``aten.copy_``, ...) whose
    target, or a view of it, is read by a node after it: the graph names the old value
    there, while torch reads the changed one. (The operations themselves are then read as
    their out-of-place forms, or refused by name.)"""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None or not schema.is_mutable:
            continue
        if not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        seen, todo = set(), [node.args[0]]
        while todo:  # the target and every view of it, both ways
            cur = todo.pop()
            if cur in seen:
                continue
            seen.add(cur)
            if _returns_alias(cur) and isinstance(cur.args[0], torch.fx.Node):
                todo.append(cur.args[0])
            todo.extend(u for u in cur.users if u is not node and _returns_alias(u)
                        and u.args[0] is cur)
        late = [u for a in seen for u in a.users
                if u is not node and u not in seen and order[u] > order[node]]
        if late:
            op = str(node.target).split(".")[1] if "." in str(node.target) else node.name
            raise InputError(f"--sound cannot read the in-place aten.{op} (node {node.name}): "
                             f"the value it changes is read again afterwards (by "
                             f"{late[0].name}); write the model without the in-place "
                             "operation")
