"""The Hessian terms of one pass: where operators add their second derivatives.

By the chain rule for second derivatives, ``Hess f_y`` is a sum over the operators that are
not affine in their inputs of their own terms (:meth:`.operators.Operator.hessian`), each a
weighted Gram matrix of tangents: ``J_k^T diag(u sigma''(z_k)) J_k`` for an activation of
node ``k``, ``J_a^T diag(u) J_b + J_b^T diag(u) J_a`` for a product. :class:`HessianPass`
turns them into :class:`.hessian.HessianSum`'s structured enclosure with the pass's
tangents, its balls' weights, and (l2, one centre) the telescoped cross terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .hessian import HessianSum
from .nodes import Graph
from .operators import CR, Elementwise
from .operators.base import flat_tangents
from .telescope import Telescope, cross


def _activation(graph: Graph, a: int) -> Elementwise:
    node = graph.nodes[a]
    assert isinstance(node, Elementwise), "the telescope lists activations only"
    return node


def slopes_above(graph: Graph, ups: list[int], ball: list[CR], point: list[CR],
                 twin: dict[int, Tensor] | None) -> dict[int, Tensor]:
    """Per activation ``a`` in ``ups``, the bound ``(P, n_a)`` on how far its slope moves
    over the ball (:meth:`.operators.Elementwise.slope_deviation`)."""
    out = {}
    for a in ups:
        j = graph.nodes[a].inputs[0]
        out[a] = _activation(graph, a).slope_deviation(
            ball[j], point[j], twin.get(a) if twin is not None else None)
    return out


def tangents_above(graph: Graph, ups: list[int], tangents: list[CR | None]) -> dict[int, CR]:
    """Per activation ``a`` in ``ups``, the tangents of its input."""
    out = {}
    for a in ups:
        t = tangents[graph.nodes[a].inputs[0]]
        assert t is not None, "the telescope's tangents are kept"
        out[a] = t
    return out


@dataclass
class HessianPass:
    """The Hessian terms of one pass over ``P`` balls, added to ``total`` with the weights
    ``weights`` (``input_weights`` for its ``A``); ``tangents``, ``exact``, ``ball``,
    ``point``, ``twin``: the pass's (:func:`.enclosures.enclose`); ``telescope``/``cache``:
    the telescoped cross terms' point quantities and second factors."""

    graph: Graph
    total: HessianSum
    weights: Tensor
    input_weights: Tensor | None
    tangents: list[CR | None]
    exact: list[bool]
    ball: list[CR]
    point: list[CR]
    twin: dict[int, Tensor] | None = None
    telescope: Telescope | None = None
    cache: dict = field(default_factory=dict)

    def _tangent(self, k: int) -> CR:
        t = self.tangents[k]
        assert t is not None, "a Hessian term's tangents are kept"
        return flat_tangents(t)

    def square(self, k: int, w: CR) -> None:
        """``J_k^T diag(w) J_k`` (an activation of node ``k``), its cross terms telescoped
        where that applies."""
        centre = spec = None
        tel = self.telescope
        if tel is not None and k in tel.jx and not self.exact[k]:
            centre = tel.jx[k]
            ups = tel.ups[k]
            spec = cross(tel, k, w[0].abs() + w[1],
                         slopes_above(self.graph, ups, self.ball, self.point, self.twin),
                         tangents_above(self.graph, ups, self.tangents), self.cache)
        self.total.add(k, self._tangent(k), w, self.weights, self.input_weights, self.exact[k],
                       centre=centre, cross=spec)

    def pair(self, a: int, b: int, w: CR) -> None:
        """``J_a^T diag(w) J_b + J_b^T diag(w) J_a`` (a product of nodes ``a`` and ``b``)."""
        self.total.add_pair(self._tangent(a), self._tangent(b), w, self.weights,
                            self.input_weights)
