"""Memory budget: how large each autograd pass may be, and what to do when it is too large.

A certificate's memory is dominated by three things (``d`` input dimensions, ``n`` samples
in a batch, ``m`` integrated-gradients steps, ``A`` bytes of activations that one forward
pass of one input produces):

- the attribution's double-backward graph: about :data:`GRAPH_FACTOR` ``* n m A`` (the
  forward activations, the first backward pass kept with ``create_graph=True``, and the
  second backward pass's temporaries);
- with ``spectral="full"``: the Jacobians ``n d^2`` in the working dtype and, in
  :func:`attrcert.spectral.spectrum_full`, ``P = J^T J`` and its eigen-decomposition in
  float64 (about ``3 n d^2`` doubles);
- the ``"replicate"`` strategy and :func:`attrcert.spectral.abs_sum_gram_blocked` run ``r``
  copies of each sample per pass: ``r`` times the graph.

:func:`plan` turns a byte budget into a batch size and a chunk size (copies per pass) from
these estimates, ``A`` measured by running the model once on one input
(:func:`activation_bytes`). Estimates can be wrong for unusual models, so on an accelerator
an out-of-memory error is not fatal: :func:`halving` retries the failed pass with half the
chunk, down to one row, before it gives up with one clear line (:class:`MemoryBudgetError`).
On a CPU the operating system usually kills a process that runs out of memory before any
error can be caught, which is why the budget is applied before the passes run.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

from .attributions.differentiable import ProbeMode, probe_forward
from .errors import AttrcertError, OptionError

#: The default budget: this fraction of the memory that is free on the device when the run
#: starts (RAM on a CPU, ``torch.cuda.mem_get_info`` on CUDA).
DEFAULT_FRACTION = 0.5
#: A double-backward graph holds about this many times the activations of a forward pass
#: (forward activations, first-order graph kept for the second pass, temporaries).
GRAPH_FACTOR = 4
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4,
          "tb": 1000**4, "tib": 1024**4}

T = TypeVar("T")


class MemoryBudgetError(AttrcertError):
    """The work does not fit the memory budget (or the device) even at its smallest."""

    kind = "memory"


def parse_size(text: str | int | float) -> int:
    """Bytes from ``"8GB"``, ``"512MiB"``, ``"1.5g"``, ``"2e9"`` or a number of bytes.

    Decimal units (kB, MB, GB, TB; a bare k/M/G/T too) are powers of 1000, binary ones
    (KiB, MiB, GiB, TiB) of 1024.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*",
                             str(text))
        if match is None or match.group(2).lower() not in _UNITS:
            raise OptionError(f"memory budget {text!r}: give a size such as 8GB, 512MiB or "
                              "a number of bytes")
        value, unit = float(match.group(1)), match.group(2).lower()
    size = value * _UNITS[unit]
    if not math.isfinite(size) or size < 1:
        raise OptionError(f"memory budget {text!r} must be a positive size")
    return int(size)


def format_size(size: float) -> str:
    """``1.5 GB``-style text (decimal units, three significant digits)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{int(size)} B"


def _cgroup_free() -> int | None:
    """Memory left under this process's cgroup (v2) limit, if it has one."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((base / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def _ram_free() -> int:
    """``MemAvailable`` from ``/proc/meminfo`` (RAM the kernel can hand out without
    swapping), else free pages, capped by a cgroup limit."""
    free: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        free = None
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = 4 * 1000**3  # nothing to read: assume a small machine
    cgroup = _cgroup_free()
    return min(free, cgroup) if cgroup is not None else free


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now: CUDA's free memory, else the machine's RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "mps":
        mps = getattr(torch, "mps", None)
        recommended = getattr(mps, "recommended_max_memory", None)
        allocated = getattr(mps, "driver_allocated_memory", None)
        if recommended is not None and allocated is not None:
            return max(0, int(recommended()) - int(allocated()))
    return _ram_free()


def default_budget(device: torch.device) -> int:
    """:data:`DEFAULT_FRACTION` of :func:`free_memory`."""
    return int(DEFAULT_FRACTION * free_memory(device))


class _Allocations(ProbeMode):
    """Sums the bytes of every tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor):
                self.total += t.numel() * t.element_size()
        return out


def activation_bytes(model: Callable[[Tensor], Tensor], x: Tensor) -> int:
    """``A``: bytes of the tensors one forward pass of ``model`` on ``x[:1]`` produces (an
    upper estimate of what autograd keeps for the backward pass), run as the attributions
    run it (:func:`attrcert.attributions.differentiable.probe_forward`: e.g. attention by
    its math kernel, which holds the attention matrix)."""
    probe = probe_forward(model, x[:1], _Allocations)
    return max(probe.total, x[0].numel() * x.element_size())


@dataclass(frozen=True)
class Plan:
    """Sizes chosen for a budget.

    Attributes:
        budget: the budget, bytes.
        batch_size: samples per batch.
        chunk_size: copies (Jacobian rows or columns) per replicated pass.
        full_fits: whether one sample's full Jacobian path fits the budget.
        graph_bytes: the estimated graph of one sample (all steps), bytes.
        full_bytes: the estimated Jacobian-path matrices of one sample, bytes.
    """

    budget: int
    batch_size: int
    chunk_size: int
    full_fits: bool
    graph_bytes: int
    full_bytes: int


def plan(budget: int, *, d: int, steps: int, activation: int, itemsize: int,
         spectral: str, default_batch: int) -> Plan:
    """Batch and chunk sizes that keep the estimated peak within ``budget`` bytes.

    One sample costs ``graph = GRAPH_FACTOR * steps * activation`` for its attribution
    graph plus, on the full path, ``full = d^2 (itemsize + 24)`` (``J``, then ``P`` and its
    eigenvectors in float64). The batch is ``default_batch`` capped so that ``n (graph +
    full)`` fits; a replicated pass over ``r`` copies of the batch costs ``r n graph`` next to
    the batch's Jacobians, which fixes ``r``. Neither size changes a result beyond
    floating-point summation order.
    """
    graph = GRAPH_FACTOR * max(1, steps) * activation
    full = d * d * (itemsize + 24) if spectral == "full" else 0
    per_sample = graph + full
    batch = max(1, min(default_batch, budget // max(1, per_sample)))
    spare = budget - batch * full
    chunk = max(1, min(d, spare // max(1, batch * graph)))
    return Plan(budget=budget, batch_size=int(batch), chunk_size=int(chunk),
                full_fits=per_sample <= budget, graph_bytes=int(graph), full_bytes=int(full))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an accelerator's out-of-memory error (torch raises
    ``torch.OutOfMemoryError``; older builds a ``RuntimeError`` saying so)."""
    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_cached(device: torch.device) -> None:
    """Give cached blocks back to the device after an out-of-memory error."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def halving(run: Callable[[int], T], size: int, *, device: torch.device,
            what: str) -> tuple[T, int]:
    """``run(size)``; on out-of-memory, ``run(size // 2)``, and so on down to 1. Returns the
    result and the size that worked (callers keep it for their next passes).

    ``what`` names the size in the final error (e.g. ``"Jacobian row per pass"``).

    Raises:
        MemoryBudgetError: out of memory even at size 1.
    """
    while True:
        try:
            return run(size), size
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            release_cached(device)
            if size <= 1:
                raise MemoryBudgetError(
                    f"out of memory on {device} even with 1 {what}: try --spectral "
                    "iterative, --chunk-size 1, --dtype float32 or a device with more "
                    "memory") from None
            size = max(1, size // 2)
