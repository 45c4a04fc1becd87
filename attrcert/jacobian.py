"""Per-sample attribution Jacobians ``J = dg/dx`` (``d x d``), in chunked autograd passes.

``J_ij = d g_i / d x_j`` (the paper's ``H = grad g = J^T``). Row ``i`` of ``J`` is the
vector-Jacobian product ``e_i^T J``. Two ways of getting rows are kept:

- ``"replicate"`` (default): ``R`` copies of each sample go through the attribution at
  once, copy ``r`` seeded with ``e_{i0 + r}``; one double-backward pass yields ``R`` rows
  for every sample of the batch. ``chunk_size = R`` caps memory (the pass holds
  ``R * N`` times the graph of one attribution).
- ``"loop"``: the attribution is built once with ``create_graph=True`` and each row is one
  backward pass through the retained graph (``d`` passes, each shared by the batch).

Samples are independent in eval mode, so one pass seeded with ``e_i`` in every sample
gives row ``i`` of every sample's Jacobian. ``benchmarks/bench_jacobian.py`` measures the
two and the library alternatives.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .attributions import Attribution, Model

DEFAULT_ACTIVATION_BUDGET = 2**26  # scalars of model input per replicated pass (~256 MB at f32)


def default_chunk_size(attribution: Attribution, x: Tensor) -> int:
    """Rows per pass so that one pass feeds at most :data:`DEFAULT_ACTIVATION_BUDGET` input scalars.

    A pass feeds ``chunk * N * m`` images of ``d`` scalars to the model (``m`` = IG steps, 1
    otherwise); the model's activations scale with that.
    """
    n, d = x.shape[0], x[0].numel()
    steps = getattr(attribution, "steps", 1)
    return int(max(1, min(d, DEFAULT_ACTIVATION_BUDGET // (n * steps * d * 16))))


def attribution_jacobian(
    attribution: Attribution,
    model: Model,
    x: Tensor,
    target: Tensor,
    *,
    chunk_size: int | None = None,
    strategy: str = "replicate",
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """``J`` for every sample: a tensor ``(N, d, d)`` with ``J[n, i, j] = d g_i(x_n) / d x_j``.

    Args:
        attribution: the method ``g``.
        model: the classifier (eval mode).
        x: inputs ``(N, C, H, W)``.
        target: classes ``(N,)``.
        chunk_size: rows per pass (``None``: :func:`default_chunk_size`).
        strategy: ``"replicate"`` or ``"loop"`` (see the module docstring).
        progress: called with ``(rows_done, d)`` after each pass.

    The result does not depend on ``chunk_size``, on the strategy, nor on which other
    samples share the batch (up to floating-point summation order).
    """
    n = x.shape[0]
    d = x[0].numel()
    if chunk_size is None:
        chunk_size = default_chunk_size(attribution, x)
    if chunk_size < 1:
        raise ValueError(f"chunk_size = {chunk_size} must be >= 1")
    chunk_size = min(chunk_size, d)
    x = x.detach()
    jac = torch.empty(n, d, d, dtype=x.dtype, device=x.device)
    if strategy == "replicate":
        _rows_replicated(attribution, model, x, target, jac, chunk_size, progress)
    elif strategy == "loop":
        _rows_looped(attribution, model, x, target, jac, progress)
    else:
        raise ValueError(f"unknown strategy {strategy!r}: use 'replicate' or 'loop'")
    return jac


def _rows_replicated(
    attribution: Attribution,
    model: Model,
    x: Tensor,
    target: Tensor,
    jac: Tensor,
    chunk_size: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    n, d = jac.shape[0], jac.shape[1]
    for start in range(0, d, chunk_size):
        rows = min(chunk_size, d - start)
        copies = x.unsqueeze(0).expand(rows, *x.shape).reshape(rows * n, *x.shape[1:])
        copies = copies.clone().requires_grad_(True)
        g = attribution(model, copies, target.repeat(rows), create_graph=True)
        if not g.requires_grad:  # g does not depend on x (e.g. saliency of a linear model)
            jac.zero_()
            break
        seed = torch.zeros(rows, n, d, dtype=x.dtype, device=x.device)
        idx = torch.arange(rows, device=x.device)
        seed[idx, :, start + idx] = 1.0
        (grad,) = torch.autograd.grad(g.reshape(rows, n, d), copies, grad_outputs=seed,
                                      materialize_grads=True)
        jac[:, start : start + rows, :] = grad.reshape(rows, n, d).transpose(0, 1)
        if progress is not None:
            progress(start + rows, d)


def _rows_looped(
    attribution: Attribution,
    model: Model,
    x: Tensor,
    target: Tensor,
    jac: Tensor,
    progress: Callable[[int, int], None] | None,
) -> None:
    n, d = jac.shape[0], jac.shape[1]
    leaf = x.clone().requires_grad_(True)
    g = attribution(model, leaf, target, create_graph=True).reshape(n, d)
    if not g.requires_grad:
        jac.zero_()
        return
    report_every = max(1, d // 100)
    for i in range(d):
        (grad,) = torch.autograd.grad(g[:, i].sum(), leaf, retain_graph=i < d - 1,
                                      materialize_grads=True)
        jac[:, i, :] = grad.reshape(n, d)
        if progress is not None and ((i + 1) % report_every == 0 or i == d - 1):
            progress(i + 1, d)


def passes_needed(d: int, chunk_size: int) -> int:
    """Number of replicated passes for ``d`` rows in chunks of ``chunk_size``."""
    return math.ceil(d / chunk_size)
