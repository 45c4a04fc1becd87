"""The small base every attribution method implements.

An attribution maps a batch ``x`` of shape ``(N, C, H, W)`` and one target class per
sample to ``g`` of the same shape. Every method here is built from
``grad_x f_y`` so that, with ``create_graph=True``, ``g`` is itself differentiable in
``x``: that is what the attribution Jacobian ``J = dg/dx`` needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from torch import Tensor

from .differentiable import checked_gradient, differentiable_forward

Model = Callable[[Tensor], Tensor]


def as_differentiable(x: Tensor) -> Tensor:
    """``x`` itself if autograd tracks it, else a detached copy that requires grad."""
    return x if x.requires_grad else x.detach().requires_grad_(True)


def target_gradient(model: Model, x: Tensor, target: Tensor, *, create_graph: bool) -> Tensor:
    """``grad_x f_{y_n}(x_n)`` for every sample ``n`` of the batch, shaped like ``x``.

    One backward pass of ``sum_n f_{y_n}(x_n)``: samples are independent (eval mode),
    so the gradient of the sum with respect to ``x_n`` is the gradient of ``f_{y_n}(x_n)``.
    ``x`` must be tracked by autograd (see :func:`as_differentiable`).

    The model runs inside :func:`differentiable_forward` (attention by its math kernel, no
    fused fast paths), so that with ``create_graph=True`` the gradient can be
    differentiated again; a model that cannot be raises :class:`NotDifferentiableError`
    naming the op (:func:`checked_gradient`).
    """
    with differentiable_forward():
        logits = model(x)
    if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(
            f"the model returned shape {tuple(logits.shape)} for a batch of {x.shape[0]}: "
            "attrcert needs logits of shape (N, k)"
        )
    selected = logits.gather(1, target.view(-1, 1)).sum()
    with differentiable_forward():
        return checked_gradient(selected, x, create_graph=create_graph)


def summed(pieces: Sequence[Attribution], model: Model, x: Tensor, target: Tensor) -> Tensor:
    """``g(x) = sum_s g_s(x)`` over the segments ``pieces`` (one or more, see
    :meth:`Attribution.in_passes`), detached, one segment's gradients at a time."""
    g = pieces[0](model, x, target)
    for piece in pieces[1:]:
        g = g + piece(model, x, target)
    return g.detach()


class Attribution(ABC):
    """A gradient attribution ``g^y(x)``, written in product form ``g = u * G``.

    Subclasses set :attr:`name` and implement :meth:`parts`, which returns ``(u, G)``
    with ``u`` either ``None`` (``g = G``, as for saliency) or an input factor whose
    Jacobian is the identity (``u = x - b``): then ``dg_i/dx_j = delta_ij G_i + u_i dG_i/dx_j``,
    so every row of ``J`` with ``u_i = 0`` is ``G_i e_i`` exactly, with no backward pass.
    :attr:`complete` says whether ``sum_i g_i(x) = f_y(x) - f_y(baseline)`` holds
    (the completeness axiom that Proposition 1 assumes), up to quadrature error.
    """

    name: str = ""
    complete: bool = False

    @abstractmethod
    def parts(
        self, model: Model, x: Tensor, target: Tensor, *, create_graph: bool = False
    ) -> tuple[Tensor | None, Tensor]:
        """``(u, G)`` with ``g = u * G`` (``u`` None: ``g = G``), each shaped like ``x``.

        ``x`` is ``(N, C, H, W)``, ``target`` ``(N,)`` long. With ``create_graph=True`` the
        result stays in the autograd graph of ``x`` (``x`` is used as is when it requires
        grad), so ``g`` can be differentiated again.
        """

    @property
    def points(self) -> int:
        """Gradient evaluations of the model per sample (``m`` for a path method, else 1):
        the attribution graph of one sample holds this many forward passes."""
        return 1

    def segments(self, sizes: Sequence[int]) -> list[Attribution]:
        """Attributions ``g_1, ..., g_S`` over consecutive groups of ``sizes`` of this
        method's :attr:`points`, with ``g = sum_s g_s`` and so ``J = sum_s J_s``: each
        ``J_s`` needs the graph of its own points only, so a Jacobian product can be summed
        segment by segment in the memory of the largest one
        (:class:`attrcert.spectral.JacobianProducts`). A one-point method has one segment,
        itself."""
        if list(sizes) != [1]:
            raise ValueError(f"{self!r} has 1 point: it cannot be cut into {list(sizes)}")
        return [self]

    def coarse(self) -> Attribution | None:
        """A cheaper attribution of the same kind whose Jacobian is close to this one's
        (fewer of its points), whose top singular vector starts the Krylov solver
        (:func:`attrcert.spectral.spectrum_iterative`); ``None`` (the default): none is
        cheaper."""
        return None

    def in_passes(self, points_per_pass: int | None) -> list[Attribution]:
        """This method cut into consecutive segments of at most ``points_per_pass`` points
        each (:meth:`segments`), for work that needs one segment's points at a time and keeps
        none between calls (``g`` by :func:`summed`, an attack's gradient, ``J delta``);
        ``[self]`` when all points fit (``None``, or at least :attr:`points`)."""
        m = self.points
        if points_per_pass is None or points_per_pass >= m:
            return [self]
        k = max(1, int(points_per_pass))
        return self.segments([min(k, m - first) for first in range(0, m, k)])

    def attribute(
        self, model: Model, x: Tensor, target: Tensor, *, create_graph: bool = False
    ) -> Tensor:
        """``g`` shaped like ``x``, in ``x``'s graph when ``create_graph`` (see :meth:`parts`)."""
        u, big_g = self.parts(model, x, target, create_graph=create_graph)
        return big_g if u is None else u * big_g

    def __call__(
        self, model: Model, x: Tensor, target: Tensor, *, create_graph: bool = False
    ) -> Tensor:
        g = self.attribute(model, x, target, create_graph=create_graph)
        return g if create_graph else g.detach()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
