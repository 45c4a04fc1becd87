"""Per-sample attribution Jacobians ``J = dg/dx`` (``d x d``), in chunked autograd passes.

``J_ij = d g_i / d x_j`` (the paper's ``H = grad g = J^T``). Row ``i`` of ``J`` is the
vector-Jacobian product ``e_i^T J``. Samples are independent in eval mode, so one pass
seeded with ``e_i`` in every sample of a batch yields row ``i`` of every sample's ``J``.

Two ways of running the passes (``benchmarks/bench_jacobian.py`` measures them against
``torch.func.jacrev``, ``jacfwd``, ``is_grads_batched`` and
``torch.autograd.functional.jacobian``):

- ``"loop"``: the attribution is built once with ``create_graph=True``; each row is one
  backward pass through the retained graph. Fastest on CPU (2 cores, the sample CNN,
  IG m = 50: 1.7 s per sample against 2.4 s for ``"replicate"``, BENCHMARKS.md), memory
  one graph.
- ``"replicate"``: ``chunk_size`` copies of each sample go through the attribution at
  once, copy ``r`` seeded with its own row; one double-backward pass yields ``chunk_size``
  rows for every sample. Memory grows with ``chunk_size``; large passes suit GPUs.

Attributions of the form ``g = u * G`` with ``du/dx = I`` (input x gradient: ``u = x``;
IG: ``u = x - b``) have ``J[i] = G_i e_i`` wherever ``u_i = 0`` (black pixels under a
zero baseline): those rows are filled exactly, without a pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .attributions import Attribution, Model
from .memory import halving

Progress = Callable[[int, int], None]
STRATEGIES = ("auto", "loop", "replicate")
REPLICATE_INPUT_BUDGET = 2**22  # input scalars per replicated pass when chunk_size is None


def default_strategy(device: torch.device) -> str:
    """``"loop"`` on CPU (measured fastest), ``"replicate"`` on accelerators."""
    return "loop" if device.type == "cpu" else "replicate"


def default_chunk_size(attribution: Attribution, x: Tensor) -> int:
    """Rows per replicated pass so that a pass feeds at most
    :data:`REPLICATE_INPUT_BUDGET` input scalars (``chunk * N * m * d``, ``m`` the
    attribution's :attr:`~attrcert.attributions.Attribution.points`) to the model."""
    n, d = x.shape[0], x[0].numel()
    return int(max(1, min(d, REPLICATE_INPUT_BUDGET // (n * attribution.points * d))))


def attribution_jacobian(
    attribution: Attribution,
    model: Model,
    x: Tensor,
    target: Tensor,
    *,
    chunk_size: int | None = None,
    strategy: str = "auto",
    progress: Progress | None = None,
) -> Tensor:
    """``J`` for every sample: a tensor ``(N, d, d)`` with ``J[n, i, j] = d g_i(x_n) / d x_j``.

    Args:
        attribution: the method ``g``.
        model: the classifier (eval mode).
        x: inputs ``(N, C, H, W)``.
        target: classes ``(N,)``.
        chunk_size: rows per replicated pass (``None``: :func:`default_chunk_size`).
        strategy: ``"auto"``, ``"loop"`` or ``"replicate"`` (module docstring).
        progress: called with ``(rows_done, d)`` as rows complete.

    The result does not depend on ``chunk_size``, on the strategy, nor on which other
    samples share the batch (up to floating-point summation order).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size = {chunk_size} must be >= 1")
    if strategy == "auto":
        strategy = default_strategy(x.device)
    n, d = x.shape[0], x[0].numel()
    x = x.detach()
    leaf = x.clone().requires_grad_(True)
    u, big_g = attribution.parts(model, leaf, target, create_graph=True)
    jac = torch.zeros(n, d, d, dtype=x.dtype, device=x.device)
    if u is None:
        rows = torch.arange(d, device=x.device)
    else:  # rows with u_i = 0 in every sample are G_i e_i (product rule)
        flat_u = u.detach().reshape(n, d)
        zero = (flat_u == 0).all(0)
        idx = zero.nonzero().squeeze(1)
        jac[:, idx, idx] = big_g.detach().reshape(n, d)[:, idx]
        rows = (~zero).nonzero().squeeze(1)
    g = (big_g if u is None else u * big_g).reshape(n, d)
    if rows.numel() and g.requires_grad:
        if strategy == "loop":
            _rows_looped(g, leaf, rows, jac, progress)
        else:
            del g, u, big_g, leaf
            _rows_replicated(attribution, model, x, target, rows, jac,
                             chunk_size or default_chunk_size(attribution, x), progress)
    if progress is not None:
        progress(d, d)
    return jac


def _rows_looped(g: Tensor, leaf: Tensor, rows: Tensor, jac: Tensor,
                 progress: Progress | None) -> None:
    n, d = jac.shape[0], jac.shape[1]
    skipped = d - rows.numel()  # rows filled without a pass count as done
    report_every = max(1, rows.numel() // 100)
    last = rows.numel() - 1
    for k, i in enumerate(rows.tolist()):
        (grad,) = torch.autograd.grad(g[:, i].sum(), leaf, retain_graph=k < last,
                                      materialize_grads=True)
        jac[:, i, :] = grad.reshape(n, d)
        if progress is not None and (k + 1) % report_every == 0 and k < last:
            progress(skipped + k + 1, d)


def _rows_replicated(
    attribution: Attribution,
    model: Model,
    x: Tensor,
    target: Tensor,
    rows: Tensor,
    jac: Tensor,
    chunk_size: int,
    progress: Progress | None,
) -> None:
    """Rows ``rows`` of ``jac``, ``chunk_size`` per pass; a pass that runs out of memory is
    retried with half as many rows (:func:`attrcert.memory.halving`), and the smaller size
    is kept for the passes after it."""
    n, d = jac.shape[0], jac.shape[1]
    total = rows.numel()
    skipped = d - total
    def one_pass(start: int, r_max: int) -> int:
        chunk = rows[start : start + r_max]
        r = chunk.numel()
        copies = x.unsqueeze(0).expand(r, *x.shape).reshape(r * n, *x.shape[1:])
        copies = copies.clone().requires_grad_(True)
        g = attribution(model, copies, target.repeat(r), create_graph=True)
        seed = torch.zeros(r, n, d, dtype=x.dtype, device=x.device)
        seed[torch.arange(r, device=x.device), :, chunk] = 1.0
        (grad,) = torch.autograd.grad(g.reshape(r, n, d), copies, grad_outputs=seed,
                                      materialize_grads=True)
        jac[:, chunk, :] = grad.reshape(r, n, d).transpose(0, 1)
        return r

    start, size = 0, chunk_size
    while start < total:
        def pass_from(r_max: int, s: int = start) -> int:
            return one_pass(s, r_max)

        done, size = halving(pass_from, size, device=x.device, what="Jacobian row per pass")
        start += done
        if progress is not None and start < total:
            progress(skipped + start, d)
