"""Softplus thresholds within reach of the ball: a kink the op list cannot see.

torch's Softplus returns ``x`` itself where ``beta x > threshold``, so its slope jumps there
from ``sigmoid(threshold)`` to 1, by ``sigmoid(-threshold)``, and its value by
``log1p(exp(-threshold)) / beta``. A model whose Softplus units reach the threshold inside
the ball is not twice differentiable there, and ``T_e`` (which assumes it is) can be beaten
by any factor at a small eps: the attribution itself jumps. Two things decide whether a
sample's record says so (``softplus_kink``, ``smooth: false``, a warning):

- the jump matters: ``sigmoid(-threshold) ||g|| >= JUMP_SHARE T_e``. The units of one layer
  make up ``g`` (``g = sum_j u_j sigma'_j grad z_j``), so changing one unit's slope by the
  fraction ``sigmoid(-threshold)`` of it moves ``g`` by that order of ``||g||``; below 1 % of
  the bound it is immaterial. With the default threshold 20 (jump 2e-9) this needs
  ``T_e < 2e-7 ||g||``, below float32 resolution: such a Softplus is never reported;
- a unit reaches it: to first order (as ``T_e`` itself), ``beta z_j`` moves by at most
  ``eps ||grad_x (beta z_j)||_q`` on the ball (``q`` the dual norm), which is computed for the
  ``NEAREST`` units closest to the threshold at ``x`` in every Softplus call; and at the two
  worst-case points ``x +- eps u`` of ``T_e`` any unit on the other side of the threshold
  than at ``x`` is a crossing seen.

Like ``T_e``, the reach is first-order: an estimate, not a proof (``--sound`` handles the
threshold exactly). The calls are seen through a ``TorchFunctionMode`` (eager and
``torch.export`` models); TorchScript archives run as their ``torch.fx`` rebuild
(:func:`attrcert.sound.torchscript.from_torchscript`), or get a warning that they could
not be checked.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .analysis import Analysis, worst_case_directions
from .attributions import Model
from .document import Record
from .perturbation import Perturbation

JUMP_SHARE = 0.01  # a jump below 1 % of T_e (relative to ||g||) is immaterial
NEAREST = 8  # units per Softplus call whose first-order reach is computed


@dataclass
class SoftplusCall:
    """One Softplus evaluation: its input ``(N, ...)`` (in autograd's graph), ``beta`` and
    ``threshold``."""

    z: Tensor
    beta: float
    threshold: float

    @property
    def jump(self) -> float:
        """The slope's jump at the threshold, ``sigmoid(-threshold)``."""
        return 1.0 / (1.0 + math.exp(min(self.threshold, 700.0)))

    def side(self) -> Tensor:
        """``beta z - threshold`` per sample and unit ``(N, n)``, detached."""
        return (self.beta * self.z.detach().reshape(self.z.shape[0], -1) - self.threshold)


class _Capture(TorchFunctionMode):
    """Records every Softplus call (``F.softplus``, ``torch.ops.aten.softplus``)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[SoftplusCall] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "softplus" in getattr(func, "__name__", str(func)) and "backward" not in str(func):
            beta = args[1] if len(args) > 1 else kwargs.get("beta", 1.0)
            threshold = args[2] if len(args) > 2 else kwargs.get("threshold", 20.0)
            self.calls.append(SoftplusCall(args[0], float(beta), float(threshold)))
        return func(*args, **kwargs)


def _runnable(model: Model) -> Model | None:
    """``model`` itself, or for TorchScript its ``torch.fx`` rebuild (``None``: not readable)."""
    if not isinstance(model, torch.jit.ScriptModule):
        return model
    from .errors import InputError
    from .sound.torchscript import from_torchscript

    try:
        return from_torchscript(model)
    except (InputError, RuntimeError):
        return None


def softplus_calls(model: Model, x: Tensor, *, grad: bool = True) -> list[SoftplusCall] | None:
    """The Softplus calls of ``model(x)`` (with ``grad``, their inputs in a graph of ``x``,
    which must require grad); ``None`` when the model cannot be run that way."""
    runnable = _runnable(model)
    if runnable is None:
        return None
    mode = _Capture()
    with torch.set_grad_enabled(grad), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mode:
            runnable(x)
    return mode.calls


def _has_softplus(model: Model) -> bool:
    graph = getattr(model, "inlined_graph", None)
    return graph is not None and "aten::softplus" in str(graph)


def _reached(call: SoftplusCall, x: Tensor, rows: Tensor, eps: float, q: float) -> Tensor:
    """Whether one of the ``NEAREST`` units closest to the threshold reaches it to first
    order, per sample in ``rows`` ``(N,)`` bool (the others are not computed)."""
    dist = call.side().abs()
    idx = dist.topk(min(NEAREST, dist.shape[1]), dim=1, largest=False).indices
    flat = call.z.reshape(call.z.shape[0], -1)
    out = torch.zeros(dist.shape[0], dtype=torch.bool)
    for k in range(idx.shape[1]):
        picked = flat.gather(1, idx[:, k:k + 1]).squeeze(1)
        (grad,) = torch.autograd.grad((call.beta * picked * rows.to(picked)).sum(), x,
                                      retain_graph=True, allow_unused=True)
        if grad is None:
            continue
        reach = eps * torch.linalg.vector_norm(grad.detach().reshape(x.shape[0], -1).double(),
                                               ord=q, dim=1).cpu()
        out |= dist.gather(1, idx[:, k:k + 1]).squeeze(1).double().cpu() <= reach
    return out & rows


def add_kink_fields(model: Model, a: Analysis, pert: Perturbation,
                    records: list[Record]) -> None:
    """``softplus_kink`` on each record (module docstring); where it is true, ``smooth``
    false, the threshold among ``nonsmooth_ops`` and a warning."""
    for rec in records:
        rec["softplus_kink"] = False
    leaf = a.x.detach().clone().requires_grad_(True)
    calls = softplus_calls(model, leaf)
    if calls is None:
        if _has_softplus(model):
            for rec in records:
                rec["warnings"].append("could not check whether this TorchScript model's "
                                       "Softplus thresholds are reached in the ball")
        return
    share = [(rec["T_e"] or 0.0) * JUMP_SHARE / max(rec["attr_norm"] or 0.0, 1e-300)
             for rec in records]
    n = len(records)
    if not any(math.isfinite(c.threshold) and c.jump >= min(share) for c in calls):
        return
    unit = worst_case_directions(a.spectrum.v_max, pert.norm).to(a.x).view_as(a.x)
    far = softplus_calls(model, torch.cat([a.x + pert.eps * unit, a.x - pert.eps * unit]),
                         grad=False) or []
    paired = len(far) == len(calls)
    for i, call in enumerate(calls):
        rows = torch.tensor([call.jump >= s for s in share])
        if not math.isfinite(call.threshold) or call.z.shape[0] != n or not bool(rows.any()):
            continue
        hit = _reached(call, leaf, rows, pert.eps, pert.dual)
        if paired and far[i].z.shape[0] == 2 * n and far[i].z[0].shape == call.z[0].shape:
            here = (call.side() > 0).cpu()
            there = (far[i].side() > 0).cpu()
            crossed = ((there[:n] != here) | (there[n:] != here)).any(1)
            hit |= rows & crossed
        for j in torch.nonzero(hit).flatten().tolist():
            _flag(records[j], call)


def _flag(rec: Record, call: SoftplusCall) -> None:
    name = f"Softplus threshold (aten.softplus, beta={call.beta:g}, threshold={call.threshold:g})"
    if rec["softplus_kink"] and name in rec["nonsmooth_ops"]:
        return
    rec["softplus_kink"] = True
    rec["smooth"] = False
    rec["nonsmooth_ops"] = [*rec["nonsmooth_ops"], name]
    rec["warnings"].append(
        f"a Softplus unit reaches its threshold inside the ball (to first order): there "
        f"its slope jumps by sigmoid(-{call.threshold:g}) = {call.jump:.3g}, so T_e, which "
        "assumes a twice differentiable model, is no certificate here (--sound handles the "
        "threshold; a larger Softplus threshold removes the kink)")
