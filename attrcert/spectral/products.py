"""The attribution Jacobian ``J`` as an operator: ``v -> J v`` and ``u -> J^T u`` by
autograd, without forming ``J`` (the double-VJP trick), for the Krylov solvers of
:mod:`attrcert.spectral.iterative` and the blocked constant of
:mod:`attrcert.spectral.blocked`.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor

from ..attributions import Attribution, Model

__all__ = ["AttributionGraph", "JacobianProducts", "segment_sizes"]


def segment_sizes(points: int, points_per_pass: int | None) -> list[int]:
    """How :class:`JacobianProducts` cuts ``points`` gradient evaluations when at most
    ``points_per_pass`` of them fit in memory at once: all in one kept graph when they fit;
    else ``points_per_pass - 1`` kept and the rest one point at a time (rebuilt for every
    product, so the kept and the rebuilt graph never exceed ``points_per_pass`` together);
    with ``points_per_pass = 1``, every point on its own."""
    if points_per_pass is None or points_per_pass >= points:
        return [points]
    if points_per_pass <= 1:
        return [1] * points
    kept = points_per_pass - 1
    return [kept] + [1] * (points - kept)


class AttributionGraph:
    """One attribution (or segment) ``g_s`` on a leaf ``X`` of ``copies`` rows with its
    double-VJP graph (``w(u) = J_s^T u``, linear in a dummy ``u``), kept for products;
    :meth:`matvec` and :meth:`rmatvec` return ``None`` where ``J_s = 0``."""

    def __init__(self, attribution: Attribution, model: Model, x: Tensor, target: Tensor,
                 copies: int, second_order: bool = True) -> None:
        """``second_order=False`` builds ``g``'s graph only: enough for :meth:`rmatvec`."""
        leaf = x.expand(copies, *x.shape[1:]).clone().requires_grad_(True)
        g = attribution(model, leaf, target.expand(copies), create_graph=True)
        self.leaf, self.g, self.dummy, self.w = leaf, g, None, None
        self.zero = not g.requires_grad
        if not self.zero and second_order:
            dummy = torch.zeros_like(g, requires_grad=True)
            (w,) = torch.autograd.grad(g, leaf, grad_outputs=dummy, create_graph=True,
                                       materialize_grads=True)
            self.zero = not w.requires_grad  # J^T u does not depend on u: J = 0
            self.dummy, self.w = dummy, w

    def matvec(self, v: Tensor) -> Tensor | None:
        if self.zero:
            return None
        assert self.w is not None and self.dummy is not None  # built with second_order
        (jv,) = torch.autograd.grad(self.w, self.dummy, grad_outputs=v, retain_graph=True,
                                    materialize_grads=True)
        return jv.detach()

    def rmatvec(self, u: Tensor) -> Tensor | None:
        if self.zero:
            return None
        (ju,) = torch.autograd.grad(self.g, self.leaf, grad_outputs=u, retain_graph=True,
                                    materialize_grads=True)
        return ju.detach()


class JacobianProducts:
    """Matrix-free ``J v`` and ``J^T u`` for ``b`` copies of one sample (the double-VJP trick).

    ``g`` is built once on a leaf ``X`` (``(b, C, H, W)``) with ``create_graph=True``, so
    its graph is kept. Samples are independent (eval mode), so the Jacobian of the batch
    is block diagonal and each row ``k`` of a ``(b, d)`` argument is a separate vector:

    - ``J^T u`` (:meth:`rmatvec`) is one VJP of ``g``: ``grad(g, X, u)``;
    - ``w(u) = J^T u`` built once with a dummy ``u`` (``create_graph=True``) is linear in
      ``u``, and its own VJP with ``v`` is ``(d w / d u)^T v = J v`` (:meth:`matvec`):
      a second-order backward pass through the retained graph of ``w``.

    ``points_per_pass`` bounds the memory by the points the graphs hold (integrated
    gradients' ``m`` Riemann points each add one forward pass and its second-order graph):
    when fewer than :attr:`Attribution.points` fit, ``g = sum_s g_s`` is cut into segments
    (:func:`segment_sizes`, :meth:`Attribution.segments`) and ``J v = sum_s J_s v``,
    ``J^T u = sum_s J_s^T u``: the first segment's graph is kept, the others are rebuilt
    for every product and freed after it (with ``points_per_pass = 1`` none is kept). The
    products are the same linear maps (up to floating-point summation order); each rebuilt
    point costs a forward and a first-order backward pass more per product (and, for
    ``J v``, the first backward pass of ``w``). :attr:`passes` counts the graphs built.

    When ``g`` or ``w`` does not depend on its input, ``J = 0`` and both products return
    zeros (:attr:`zero` is True). :attr:`count` counts the vectors multiplied.
    """

    def __init__(self, attribution: Attribution, model: Model, x: Tensor, target: Tensor,
                 copies: int = 1, points_per_pass: int | None = None) -> None:
        """``x``: one sample ``(1, C, H, W)``; ``target``: ``(1,)``; ``copies``: ``b``;
        ``points_per_pass``: at most this many points in memory (``None``: all)."""
        x = x.detach()
        self.dtype, self.device = x.dtype, x.device
        self.copies, self.d = copies, x[0].numel()
        self.count = 0
        self._x, self._target, self._model = x, target, model
        self._shape_of = (copies, *x.shape[1:])
        sizes = segment_sizes(attribution.points, points_per_pass)
        segments = attribution.segments(sizes)
        self.segments = len(segments)
        keep = len(segments) == 1 or (points_per_pass or 0) > 1
        self._kept = AttributionGraph(segments[0], model, x, target, copies) if keep else None
        self._rebuilt = segments[1:] if keep else segments
        self.passes = int(keep)
        # J = 0 is known up front only for one kept graph (rebuilt ones may depend on x)
        self.zero = self._kept is not None and self._kept.zero and not self._rebuilt

    def _shape(self, a: Tensor) -> Tensor:
        return a.to(dtype=self.dtype, device=self.device).reshape(self._shape_of)

    def _sum(self, a: Tensor, which: str) -> Tensor:
        vector = self._shape(a)
        total = None if self._kept is None else getattr(self._kept, which)(vector)
        for segment in self._rebuilt:
            graph = AttributionGraph(segment, self._model, self._x, self._target, self.copies,
                                     second_order=which == "matvec")
            self.passes += 1
            part = getattr(graph, which)(vector)
            del graph
            if part is not None:
                total = part if total is None else total + part
        if total is None:
            return torch.zeros(a.shape, dtype=self.dtype, device=self.device)
        return total.reshape(a.shape)

    def matvec(self, v: Tensor) -> Tensor:
        """``J v`` for each row of ``v`` (``(b, d)``), returned ``(b, d)`` in the model dtype."""
        self.count += v.shape[0]
        if self.zero:
            return torch.zeros(v.shape, dtype=self.dtype, device=self.device)
        return self._sum(v, "matvec")

    def rmatvec(self, u: Tensor) -> Tensor:
        """``J^T u`` for each row of ``u`` (``(b, d)``), returned ``(b, d)``."""
        self.count += u.shape[0]
        if self.zero:
            return torch.zeros(u.shape, dtype=self.dtype, device=self.device)
        return self._sum(u, "rmatvec")

    def operator(self) -> LinearOperator:
        """``J`` as a float64 scipy ``LinearOperator`` ``(d, d)`` (one copy: ``b = 1``)."""
        if self.copies != 1:
            raise ValueError("operator() needs copies = 1")

        def mv(v: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(1, -1))
            return self.matvec(t).double().cpu().numpy().reshape(-1)

        def rmv(u: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(u, dtype=np.float64).reshape(1, -1))
            return self.rmatvec(t).double().cpu().numpy().reshape(-1)

        return LinearOperator((self.d, self.d), matvec=mv, rmatvec=rmv, dtype=np.float64)
