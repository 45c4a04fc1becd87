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

Points that do not fit in memory are cut into segments (:meth:`Attribution.segments`):
the first segment's graph is kept, the others are rebuilt for every product and freed
after it, one at a time, so the operator is the same with fewer points held.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..attributions import Attribution, Model

__all__ = ["CurvatureProducts"]


class _SegmentGraph:
    """``G_s`` of one segment on a leaf ``X`` (``copies`` rows of one sample) with its
    first-order graph kept; ``u`` and ``G_s`` detached for the diagonal terms."""

    def __init__(self, segment: Attribution, model: Model, x: Tensor, target: Tensor,
                 copies: int) -> None:
        leaf = x.expand(copies, *x.shape[1:]).clone().requires_grad_(True)
        u, big_g = segment.parts(model, leaf, target.expand(copies), create_graph=True)
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
    """Matrix-free ``J v`` and ``J^T w`` of one sample from products with ``M`` (module doc).

    Rows of a ``(b, d)`` argument are separate vectors, multiplied on ``b = copies`` copies
    of the sample in one pass. :attr:`count` counts the vectors multiplied by ``M``,
    :attr:`passes` the segment graphs built.
    """

    def __init__(self, attribution: Attribution, model: Model, x: Tensor, target: Tensor,
                 *, copies: int = 1, segments: list[Attribution] | None = None) -> None:
        """``x``: one sample ``(1, C, H, W)``; ``target``: ``(1,)``; ``segments``: the
        attribution cut into segments whose first is kept and the rest rebuilt per product
        (default: ``[attribution]``, all kept)."""
        x = x.detach()
        self.dtype, self.device = x.dtype, x.device
        self.copies, self.d = copies, x[0].numel()
        self.count = 0
        self._x, self._target, self._model = x, target, model
        parts = segments or [attribution]
        self._kept = _SegmentGraph(parts[0], model, x, target, copies)
        self._rebuilt = parts[1:]
        self.passes = 1
        big_g = self._kept.big_g.detach()[:1]
        for segment in self._rebuilt:
            big_g = big_g + segment.parts(model, x, target)[1].detach()
        self.gradient = big_g.reshape(1, self.d)  # G at x: J's diagonal part
        self.factor = None if self._kept.u is None else self._kept.u[:1].reshape(1, self.d)
        self.symmetric = self.factor is None
        self.zero = self._kept.constant and not self._rebuilt and (
            self.symmetric or not bool(self.gradient.abs().max() > 0))

    def curvature(self, v: Tensor) -> Tensor:
        """``M v`` for each row of ``v`` (``(b, d)``), returned ``(b, d)`` in the model dtype."""
        self.count += v.shape[0]
        shaped = v.to(dtype=self.dtype, device=self.device).reshape(self.copies,
                                                                     *self._x.shape[1:])
        total = self._kept.curvature(shaped)
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
