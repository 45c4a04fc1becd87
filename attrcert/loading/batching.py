"""Models that take a fixed number of rows: static-batch exports and TorchScript traces.

``torch.export.export(model, (torch.randn(1, 3, 224, 224),))`` (the way most users export)
fixes the batch dimension: the program refuses any other batch. attrcert stacks the
integrated-gradients points of Eq. 40, attack copies and classes along the batch, so such
a model runs inside :class:`StaticBatch`, which cuts the rows into chunks of the static
batch (the last one padded with copies of its last row, whose outputs are dropped) and
runs the model on every chunk: vectorised by ``torch.vmap`` (one batched pass, as fast as
a dynamic export) where that gives, on the first rows it sees, the values, gradients and
second derivatives of calling the model chunk by chunk; else chunk by chunk. Either way the
result is the model's, row for row, and differentiable twice wherever the model is.

- :func:`with_static_batch`: a loaded ``.pt2`` module, wrapped when its input spec fixes
  the batch (read from the exported program's placeholder, without running it);
- :func:`batched`: any model, checked on two rows against each row alone (TorchScript
  traced with batch 1 and hard-coded shapes), wrapped when batching fails or mixes rows;
- :func:`static_batch_of`: the static batch of a (possibly wrapped) model, for records.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import Tensor, nn

from ..errors import InputError

__all__ = ["StaticBatch", "batched", "exported_input", "static_batch_of", "static_row_shape",
           "with_static_batch"]


class StaticBatch(nn.Module):
    """``model`` run on chunks of ``batch`` rows, outputs concatenated along dim 0: by
    ``torch.vmap`` over the chunks where it agrees with calling the model chunk by chunk
    (:meth:`_vmap_agrees`), else chunk by chunk.

    Attributes:
        model: the wrapped model (a module that accepts exactly ``batch`` rows).
        batch: the rows per call.
        row_shape: the shape of one row the model was exported for (``None``: unknown).
        reason: why the model is wrapped, for the user.
    """

    def __init__(self, model: nn.Module, batch: int, row_shape: tuple[int, ...] | None,
                 reason: str) -> None:
        super().__init__()
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.model = model
        self.batch = int(batch)
        self.row_shape = row_shape
        self.reason = reason
        #: whether ``torch.vmap`` runs the chunks (decided on the first call with more
        #: than ``batch`` rows, by :meth:`_vmap_agrees`); ``None``: not yet known.
        self.vectorized: bool | None = None
        self.training = model.training  # as wrapped: a later train(was_training) keeps it

    def forward(self, x: Tensor) -> Tensor:
        """The model on every row of ``x``, ``batch`` rows per call."""
        if self.row_shape is not None and tuple(x.shape[1:]) != self.row_shape:
            size = " ".join(str(s) for s in self.row_shape[-2:])
            raise InputError(f"the model was exported for inputs of shape "
                             f"{self.row_shape} per row, not {tuple(x.shape[1:])}: pass "
                             f"--size {size} (or the --resize/--crop that give it), or "
                             "export it with dynamic shapes")
        rows = x.shape[0]
        if rows == self.batch:
            return self.model(x)
        short = -rows % self.batch  # pad with detached copies: their outputs are dropped
        padded = torch.cat([x, x[-1:].detach().expand(short, *x.shape[1:])]) if short else x
        chunks = padded.reshape(-1, self.batch, *x.shape[1:])
        if self.vectorized is None:
            self.vectorized = self._vmap_agrees(chunks[0].detach())
        if self.vectorized:
            out = torch.vmap(self.model)(chunks)
            out = out.reshape(-1, *out.shape[2:])
        else:
            out = torch.cat([self.model(chunk) for chunk in chunks])
        return out[:rows] if short else out

    def _vmap_agrees(self, chunk: Tensor) -> bool:
        """Whether ``torch.vmap`` of the model gives, on two chunks made from ``chunk``
        (it and its mirror image), the outputs, gradients and a Hessian-vector product of
        calling the model chunk by chunk (float tolerance); ``False`` if it fails."""
        two = torch.stack([chunk, chunk.flip(-1)])
        results = []
        try:
            with torch.enable_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # vmap's "performance drop" for some ops
                for vectorized in (True, False):
                    z = two.clone().requires_grad_(True)
                    out = (torch.vmap(self.model)(z) if vectorized
                           else torch.stack([self.model(c) for c in z]))
                    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype,
                                             device=out.device).view(out.shape)
                    (grad,) = torch.autograd.grad((out * weights).sum(), z, create_graph=True)
                    second = (torch.autograd.grad((grad * grad).sum(), z)[0]
                              if grad.requires_grad else torch.zeros_like(z))
                    results.append([out.detach(), grad.detach(), second])
        except Exception:  # an op without a batching rule, data-dependent control flow
            return False
        return all(_agree(a, [b]) for a, b in zip(results[0], results[1], strict=True))

    def train(self, mode: bool = True) -> StaticBatch:
        """Set the training flag here and in the model where it accepts it (a torch.export
        module refuses both: it stays as it was exported)."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        with contextlib.suppress(NotImplementedError):
            self.model.train(mode)
        return self


def exported_input(module: nn.Module) -> torch.Size | None:
    """The shape of the first user input of a loaded torch.export module, as exported
    (entries are ints where static, ``SymInt`` where dynamic); ``None`` if unknown."""
    if not isinstance(module, torch.fx.GraphModule):
        return None
    for node in module.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            return val.shape if isinstance(val, Tensor) else None
    return None


def with_static_batch(module: nn.Module) -> nn.Module:
    """``module`` (a loaded ``.pt2``) inside :class:`StaticBatch` when its exported input
    has a static batch dimension; else ``module`` itself."""
    shape = exported_input(module)
    if shape is None or len(shape) < 2 or not isinstance(shape[0], int):
        return module
    row = tuple(s for s in shape[1:])
    row_shape = row if all(isinstance(s, int) for s in row) else None
    return StaticBatch(module, shape[0], row_shape,
                       f"was exported with a static batch of {shape[0]}")


def static_batch_of(model: nn.Module) -> int | None:
    """The rows per call of the first :class:`StaticBatch` inside ``model``, else ``None``."""
    for module in model.modules():
        if isinstance(module, StaticBatch):
            return module.batch
    return None


def static_row_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The shape of one input row that an export inside ``model`` fixes (its batch static
    or not), else ``None``."""
    for module in model.modules():
        if isinstance(module, StaticBatch):
            return module.row_shape
        shape = exported_input(module)
        if shape is not None:
            row = tuple(shape[1:])
            return row if all(isinstance(s, int) for s in row) else None
    return None


def _agree(batch: Tensor, rows: list[Tensor]) -> bool:
    single = torch.cat(rows)
    if batch.shape != single.shape:
        return False
    scale = float(single.abs().max()) if single.numel() else 0.0
    return bool(torch.allclose(batch, single, rtol=1e-4, atol=1e-5 * max(scale, 1.0)))


def batched(model: nn.Module, row: Tensor) -> nn.Module:
    """``model``, or ``model`` inside :class:`StaticBatch` with one row per call when it
    fails on two rows or gives another answer for them than for each row alone (a
    TorchScript trace whose shapes were recorded as constants).

    Args:
        model: a model that runs on ``row`` (checked by the caller).
        row: one input row ``(1, C, H, W)``; the second row of the probe is ``row`` mirrored
            left-right, so that rows that get mixed up give different outputs.
    """
    if static_batch_of(model) is not None:
        return model
    two = torch.cat([row, row.flip(-1)])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        singles = [model(two[:1]), model(two[1:])]
        try:
            both = model(two)
        except Exception:
            ok = False
        else:
            ok = isinstance(both, Tensor) and _agree(both, singles)
    if ok:
        return model
    return StaticBatch(model, 1, None, "gives wrong results or fails on more than one "
                       "row per call (a trace with a fixed batch?)")
