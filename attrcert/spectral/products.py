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

__all__ = ["JacobianProducts"]


class JacobianProducts:
    """Matrix-free ``J v`` and ``J^T u`` for ``b`` copies of one sample (the double-VJP trick).

    ``g`` is built once on a leaf ``X`` (``(b, C, H, W)``) with ``create_graph=True``, so
    its graph is kept. Samples are independent (eval mode), so the Jacobian of the batch
    is block diagonal and each row ``k`` of a ``(b, d)`` argument is a separate vector:

    - ``J^T u`` (:meth:`rmatvec`) is one VJP of ``g``: ``grad(g, X, u)``;
    - ``w(u) = J^T u`` built once with a dummy ``u`` (``create_graph=True``) is linear in
      ``u``, and its own VJP with ``v`` is ``(d w / d u)^T v = J v`` (:meth:`matvec`):
      a second-order backward pass through the retained graph of ``w``.

    When ``g`` or ``w`` does not depend on its input, ``J = 0`` and both products return
    zeros (:attr:`zero` is True). :attr:`count` counts the vectors multiplied.
    """

    def __init__(self, attribution: Attribution, model: Model, x: Tensor, target: Tensor,
                 copies: int = 1) -> None:
        """``x``: one sample ``(1, C, H, W)``; ``target``: ``(1,)``; ``copies``: ``b``."""
        x = x.detach()
        self.dtype, self.device = x.dtype, x.device
        self.copies, self.d = copies, x[0].numel()
        self.count = 0
        leaf = x.expand(copies, *x.shape[1:]).clone().requires_grad_(True)
        g = attribution(model, leaf, target.expand(copies), create_graph=True)
        self._leaf, self._g, self._dummy, self._w = leaf, g, None, None
        self.zero = not g.requires_grad
        if not self.zero:
            dummy = torch.zeros_like(g, requires_grad=True)
            (w,) = torch.autograd.grad(g, leaf, grad_outputs=dummy, create_graph=True,
                                       materialize_grads=True)
            self.zero = not w.requires_grad  # J^T u does not depend on u: J = 0
            self._dummy, self._w = dummy, w

    def _shape(self, a: Tensor) -> Tensor:
        return a.to(dtype=self.dtype, device=self.device).reshape(self._leaf.shape)

    def matvec(self, v: Tensor) -> Tensor:
        """``J v`` for each row of ``v`` (``(b, d)``), returned ``(b, d)`` in the model dtype."""
        self.count += v.shape[0]
        if self.zero:
            return torch.zeros(v.shape, dtype=self.dtype, device=self.device)
        (jv,) = torch.autograd.grad(self._w, self._dummy, grad_outputs=self._shape(v),
                                    retain_graph=True, materialize_grads=True)
        return jv.detach().reshape(v.shape)

    def rmatvec(self, u: Tensor) -> Tensor:
        """``J^T u`` for each row of ``u`` (``(b, d)``), returned ``(b, d)``."""
        self.count += u.shape[0]
        if self.zero:
            return torch.zeros(u.shape, dtype=self.dtype, device=self.device)
        (ju,) = torch.autograd.grad(self._g, self._leaf, grad_outputs=self._shape(u),
                                    retain_graph=True, materialize_grads=True)
        return ju.detach().reshape(u.shape)

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
