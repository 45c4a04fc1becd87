"""The attribution Jacobian through the curvature it is made of: ``J = diag(G) + diag(u) M``.

Every method attrcert has is ``g = u * G`` (:class:`~attrcert.attributions.Attribution`)
with ``u = x - b`` (input x gradient: ``b = 0``; saliency: no ``u``, ``g = G``) and
``G = sum_a w_a grad f_y(z_a)``, ``z_a = b + alpha_a (x - b)`` (one point for saliency and
input x gradient, the ``m`` Riemann points of Eq. 40 for integrated gradients). So

    J = dg/dx = diag(G) + diag(u) M,    M = dG/dx = sum_a w_a alpha_a Hess f_y(z_a)

(the paper's Eq. 45 for integrated gradients), and ``M`` is symmetric. One product
``M v`` is one backward pass through ``G``'s first-order graph (``M v = M^T v``, a VJP of
``G``), and it gives both ``J v = G v + u (M v)`` and ``J^T w = G w + M (u w)``; saliency's
``J = M`` is symmetric itself (:attr:`CurvatureProducts.symmetric`), which the symmetric
Lanczos solver uses. No second-order graph of ``g`` (the double-VJP trick's ``w(u) =
J^T u``) is built: the kept graph is ``G``'s, about half the memory
(:func:`attrcert.sizing.point_bytes`), and a product costs what ``J^T u`` cost before.

Points that do not fit in memory are cut into segments (:meth:`Attribution.segments`,
:func:`curvature_segments`): half of those that fit are kept, the others are rebuilt for
every product in passes of the other half and freed after each, so the operator is the
same with fewer points held. A rebuilt pass (``G``'s graph and one VJP) costs about 1.5
times a kept one and batches well (``benchmarks/bench_products.py``, BENCHMARKS.md), which
is why the rebuilt points go in passes as large as the budget allows rather than one at a
time, and why forward-over-reverse (slower here than a rebuilt reverse pass) is not used.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..attributions import Attribution, Model

__all__ = ["CurvatureProducts", "curvature_segments"]


def curvature_segments(points: int, points_per_pass: int | None) -> tuple[int, list[int]]:
    """``(kept, rebuilt)``: how :class:`CurvatureProducts` holds ``points`` gradient
    evaluations when at most ``points_per_pass`` fit in memory at once: all kept when they
    fit; else half kept and the rest rebuilt in passes of the other half (so kept and
    rebuilt never exceed ``points_per_pass`` together); with ``points_per_pass = 1`` none
    kept and every point rebuilt on its own."""
    if points_per_pass is None or points_per_pass >= points:
        return points, []
    kept = points_per_pass // 2
    chunk = max(1, points_per_pass - kept)
    rest = points - kept
    return kept, [min(chunk, rest - first) for first in range(0, rest, chunk)]


class _SegmentGraph:
    """``G_s`` of one segment on a leaf ``X`` (``copies`` rows of one sample, or the samples
    of ``x`` with ``copies = 1``) with its first-order graph kept; ``u`` and ``G_s``
    detached for the diagonal terms."""

    def __init__(self, segment: Attribution, model: Model, x: Tensor, target: Tensor,
                 copies: int) -> None:
        if copies > 1:
            x, target = x.expand(copies, *x.shape[1:]), target.expand(copies)
        leaf = x.clone().requires_grad_(True)
        u, big_g = segment.parts(model, leaf, target, create_graph=True)
        self.leaf, self.big_g = leaf, big_g
        self.u = None if u is None else u.detach()
        self.constant = not big_g.requires_grad  # G does not depend on x: M_s = 0

    def curvature(self, v: Tensor) -> Tensor | None:
        """``M_s v`` for each row of ``v`` (shaped like the leaf); ``None`` where ``M_s = 0``."""
        if self.constant:
            return None
        (mv,) = torch.autograd.grad(self.big_g, self.leaf, grad_outputs=v, retain_graph=True,
                                    materialize_grads=True)
        return mv.detach()


class CurvatureProducts:
    """Matrix-free ``J v`` and ``J^T w`` from products with ``M`` (module doc), of one
    sample or of several at once.

    Rows of a ``(b, d)`` argument are separate vectors: with one sample, multiplied on
    ``b = copies`` copies of it in one pass; with ``n`` samples (``copies = 1``), row ``i``
    by sample ``i``'s ``J`` (``b = n``), all in one pass
    (:func:`~attrcert.spectral.krylov.lockstep`). :attr:`count` counts the vectors
    multiplied by ``M``, :attr:`passes` the segment graphs built.
    """

    def __init__(self, attribution: Attribution, model: Model, x: Tensor, target: Tensor,
                 *, copies: int = 1, points_per_pass: int | None = None) -> None:
        """``x``: ``(n, C, H, W)``, one sample unless ``copies = 1``; ``target``: ``(n,)``;
        ``points_per_pass``: at most this many of the attribution's points in memory per
        sample (:func:`curvature_segments`; ``None``: all, kept)."""
        x = x.detach()
        if copies > 1 and x.shape[0] != 1:
            raise ValueError(f"copies = {copies} of {x.shape[0]} samples: copy one sample")
        self.dtype, self.device = x.dtype, x.device
        self.copies, self.d, self.samples = copies, x[0].numel(), x.shape[0]
        self.count = 0
        self._x, self._target, self._model = x, target, model
        kept, rebuilt = curvature_segments(attribution.points, points_per_pass)
        parts = attribution.segments([kept, *rebuilt] if kept else rebuilt)
        self._kept = _SegmentGraph(parts[0], model, x, target, copies) if kept else None
        self._rebuilt = parts[1:] if kept else parts
        self.passes = int(kept > 0)
        n = self.samples
        big_g = self._kept.big_g.detach()[:n] if self._kept is not None else 0.0
        u: Tensor | None = None if self._kept is None else self._kept.u
        for segment in self._rebuilt:
            part_u, part_g = segment.parts(model, x, target)
            big_g = big_g + part_g.detach()
            u = None if part_u is None else part_u.detach()
        self.gradient = torch.as_tensor(big_g).reshape(n, self.d)  # G at x: J's diagonal part
        self.factor = None if u is None else u[:n].reshape(n, self.d)
        self.symmetric = self.factor is None
        constant = self._kept is not None and self._kept.constant and not self._rebuilt
        #: ``(n,)`` bool: the samples whose ``J`` is known to be 0 (``G`` does not depend on
        #: ``x``, and saliency, or ``G = 0``)
        self.zero_rows = torch.full((n,), constant, dtype=torch.bool)
        if constant and not self.symmetric:
            self.zero_rows = ~(self.gradient.abs() > 0).any(1).cpu()
        self.zero = bool(self.zero_rows.all())

    def curvature(self, v: Tensor) -> Tensor:
        """``M v`` for each row of ``v`` (``(b, d)``), returned ``(b, d)`` in the model dtype."""
        self.count += v.shape[0]
        shaped = v.to(dtype=self.dtype, device=self.device).reshape(-1, *self._x.shape[1:])
        total = None if self._kept is None else self._kept.curvature(shaped)
        for segment in self._rebuilt:
            graph = _SegmentGraph(segment, self._model, self._x, self._target, self.copies)
            self.passes += 1
            part = graph.curvature(shaped)
            del graph
            if part is not None:
                total = part if total is None else total + part
        if total is None:
            return torch.zeros(v.shape, dtype=self.dtype, device=self.device)
        return total.reshape(v.shape)

    def matvec(self, v: Tensor) -> Tensor:
        """``J v = G v + u (M v)`` (saliency: ``M v``) for each row of ``v`` (``(b, d)``)."""
        v = v.to(dtype=self.dtype, device=self.device)
        if self.factor is None:
            return self.curvature(v)
        return self.gradient * v + self.factor * self.curvature(v)

    def rmatvec(self, w: Tensor) -> Tensor:
        """``J^T w = G w + M (u w)`` (saliency: ``M w``) for each row of ``w``."""
        w = w.to(dtype=self.dtype, device=self.device)
        if self.factor is None:
            return self.curvature(w)
        return self.gradient * w + self.curvature(self.factor * w)
