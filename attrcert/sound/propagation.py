"""Error propagation through the graph: the rounding term and the Softplus-twin gap.

Both bound ``|G_hat - G|``, the distance between two gradients of ``f_y`` computed by the same
graph, from the enclosures of every node's value ``z`` and adjoint ``u = d f_y / d z`` over a
ball (``boxes``, ``adjoints``: ``(lo, hi)`` per node, batched over pieces). A forward pass
bounds ``e >= |z_hat - z|`` per node, a backward pass ``f >= |u_hat - u|``:

- affine ``A z + b``: ``e' = |A| e + i_A``, ``f = |A|^T f' + j_A`` (a stop-gradient:
  ``e' = e``, nothing backwards);
- ``z_a + s z_b``: ``e' = e_a + |s| e_b``; the adjoint passes to both (times ``|s|``);
- ``z_a z_b``: ``e' = |a| e_b + |b| e_a + e_a e_b``; to ``a``: ``f (|b| + e_b) + |u| e_b``;
- ``sigma(z)``: ``e' = L1 e + i_sigma``; with ``|s_hat - s| <= ds = L2 e + k_sigma``,
  ``f (|s| + ds) + |u| ds`` (``L1``, ``L2``: ``sup |sigma'|``, ``sup |sigma''|`` over the
  interval widened by ``e``, where both the computed and the exact ``z`` lie);
- a node with ``k > 1`` users sums their contributions.

The forward pass runs node by node (:func:`forward_step`), so that :func:`.enclosures.enclose`
can decide the twin of each thresholded Softplus from the errors above it.

:func:`rounding_error` (torch's arithmetic in the model's precision, unit roundoff ``u``,
against the exact function at a point within ``e0`` of the computed one): ``i_A =
gamma_n (|A| (|z| + e) + |b|)`` with ``n`` the fan-in, ``j_A = gamma_n' |A|^T (|u| + f)``
(fan-out ``n'``), one rounding ``u |result|`` per sum and product, ``i_sigma = ulps u
(|sigma| + |z|)``, ``k_sigma = ulps u (1 + kappa |z|)`` (the kernels' assumed accuracy,
:class:`.activations.Activation`), and where a Softplus threshold is within ``e`` of the
interval, the value and slope jumps (torch may take the other branch); ``gamma_k`` for the
sum of ``k`` adjoint contributions (Higham, Lemma 3.1).
The gap (torch's function against the twin of :func:`.enclosures.enclose`, at the same
point, :class:`ErrorModel` without rounding): ``e0 = 0`` and the jumps ``gap`` / ``jump`` on
the units ``straddle`` marks, where the twin is the smooth closed form and torch may be the
identity; the magnitudes are the twin's (the bounds above hold with either function's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .activations import Activation
from .intervals import REL, SUM_REL, TINY
from .nodes import ADD, AFFINE, CAT, MUL, Graph, transpose
from .rounding import Rounding

Box = tuple[Tensor, Tensor]


def magnitude(box: Box) -> Tensor:
    """``max(|lo|, |hi|)``."""
    return torch.maximum(box[0].abs(), box[1].abs())


def _near(act: Activation, box: Box, err: Tensor, u: float) -> Tensor | float:
    """1 where ``[lo - err, hi + err]`` (and the rounding of ``beta z``) reaches the threshold."""
    if act.threshold is None:
        return 0.0
    lo, hi = box
    pad = err + 2.0 * u * magnitude(box) + TINY
    return ((lo - pad <= act.threshold) & (hi + pad >= act.threshold)).to(lo.dtype)


@dataclass
class ErrorModel:
    """What is injected: torch's rounding (``rnd``) and/or the twin's jumps on the units
    ``straddle[node]`` (filled by :func:`.enclosures.enclose` as it goes)."""

    rnd: Rounding | None = None
    straddle: dict[int, Tensor] = field(default_factory=dict)

    @property
    def u(self) -> float:
        return 0.0 if self.rnd is None else self.rnd.u

    def gamma(self, n: int) -> float:
        return 0.0 if self.rnd is None or n <= 0 else self.rnd.gamma(n)


def forward_step(graph: Graph, i: int, boxes: list[Box], errs: list[Tensor],
                 m: ErrorModel) -> Tensor:
    """``e`` of node ``i`` (``> 0``) from its inputs' boxes and errors (module docstring)."""
    node = graph.nodes[i]
    u = m.u
    ins = [errs[j] for j in node.inputs]
    mags = [magnitude(boxes[j]) + e for j, e in zip(node.inputs, ins, strict=True)]
    if node.kind == AFFINE:
        a = node.affine
        assert a is not None
        e = a.lin_abs(ins[0])
        if m.rnd is not None and a.fan_in:
            babs = a.bias_abs if a.bias_abs is not None else (
                a.bias.abs() if a.bias is not None else 0.0)
            e = e + m.gamma(a.fan_in) * (a.lin_abs(mags[0]) + babs)
        e = e * (1.0 + SUM_REL)
    elif node.kind == ADD:
        s = abs(node.sign)
        e = ins[0] + s * ins[1] + (u if s == 1.0 else 2.0 * u) * (mags[0] + s * mags[1])
    elif node.kind == MUL:
        e = mags[0] * ins[1] + mags[1] * ins[0] + u * mags[0] * mags[1]
    elif node.kind == CAT:
        e = torch.cat(ins, dim=node.dim + 1)
    else:
        act = node.act
        assert act is not None
        box = boxes[node.inputs[0]]
        lip = magnitude(act.range(1, box[0] - ins[0], box[1] + ins[0]))  # sup |sigma'| near z
        e = lip * ins[0]
        if m.rnd is not None:
            vmag = magnitude(act.range(0, *box)) + lip * ins[0]
            e = e + act.ulps * u * (vmag + mags[0]) + _near(act, box, ins[0], u) * act.gap
        if i in m.straddle:
            e = e + m.straddle[i] * act.gap
    return e * (1.0 + REL) + TINY


def backward_errors(graph: Graph, boxes: list[Box], adjoints: list[Box], errs: list[Tensor],
                    m: ErrorModel) -> list[Tensor]:
    """``f`` of every node (the seed ``e_y`` is exact), from the forward errors ``errs``."""
    u = m.u
    contrib: list[list[tuple[Tensor, Tensor]]] = [[] for _ in graph.nodes]
    zero = torch.zeros_like(boxes[graph.output][0])
    contrib[graph.output].append((zero, zero))
    out: list[Tensor] = [torch.zeros_like(b[0]) for b in boxes]
    for i in range(len(graph.nodes) - 1, -1, -1):
        node = graph.nodes[i]
        parts = contrib[i]
        if not parts:
            continue
        f = sum(p[0] for p in parts)
        if len(parts) > 1:  # autograd sums the users' contributions: gamma_{k-1}
            f = f + m.gamma(len(parts) - 1) * sum(p[1] for p in parts)
        assert isinstance(f, Tensor)
        out[i] = f = f * (1.0 + REL) + TINY
        if i == 0:
            break
        umag = magnitude(adjoints[i])
        total = umag + f
        if node.kind == AFFINE:
            a = node.affine
            assert a is not None
            if a.stop:  # a stop-gradient: no adjoint, so no adjoint error
                continue
            back = transpose(a.lin_abs, total, a.in_shape)
            ft = transpose(a.lin_abs, f, a.in_shape)
            if a.fan_out:
                ft = ft + m.gamma(a.fan_out) * back
            contrib[node.inputs[0]].append((ft * (1.0 + SUM_REL) + TINY, back))
        elif node.kind == ADD:
            s = abs(node.sign)
            extra = 0.0 if s == 1.0 else u * s * total
            contrib[node.inputs[0]].append((f, total))
            contrib[node.inputs[1]].append((s * f + extra, s * total))
        elif node.kind == MUL:
            for k, other in ((0, 1), (1, 0)):
                j = node.inputs[other]
                omag = magnitude(boxes[j]) + errs[j]
                ft = f * omag + umag * errs[j] + u * total * omag
                contrib[node.inputs[k]].append((ft * (1.0 + REL) + TINY, total * omag))
        elif node.kind == CAT:
            sizes = [graph.nodes[j].shape[node.dim] for j in node.inputs]
            for j, fj, tj in zip(node.inputs, f.split(sizes, node.dim + 1),
                                 total.split(sizes, node.dim + 1), strict=True):
                contrib[j].append((fj, tj))
        else:
            act = node.act
            assert act is not None
            j = node.inputs[0]
            box, e = boxes[j], errs[j]
            smag = magnitude(act.range(1, *box))
            ds = magnitude(act.range(2, box[0] - e, box[1] + e)) * e  # sup |sigma''| near z
            if m.rnd is not None:
                ds = ds + act.ulps * u * (1.0 + act.kappa * (magnitude(box) + e)) \
                    + _near(act, box, e, u) * act.jump
            if i in m.straddle:
                ds = ds + m.straddle[i] * act.jump
            ft = f * (smag + ds) + umag * ds + 4.0 * u * total * (smag + ds)
            contrib[j].append((ft * (1.0 + REL) + TINY, total * (smag + ds)))
    return out


def forward_errors(graph: Graph, boxes: list[Box], rnd: Rounding, e0: Tensor) -> list[Tensor]:
    """Bounds ``e >= |z_hat - z|`` on every node's value: torch's arithmetic at a point within
    ``e0`` of ``x'``, against the exact ``z(x')``, for every ``x'`` whose node values lie in
    ``boxes`` (the forward half of :func:`rounding_error`)."""
    m = ErrorModel(rnd)
    errs = [e0]
    for i in range(1, len(graph.nodes)):
        errs.append(forward_step(graph, i, boxes, errs, m))
    return errs


def rounding_error(graph: Graph, boxes: list[Box], adjoints: list[Box], rnd: Rounding,
                   e0: Tensor, errs: list[Tensor] | None = None) -> Tensor:
    """``(P, d)`` bounds on ``|G_hat - G|``: torch's computed gradient at a point within
    ``e0`` of ``x'``, against the exact ``G(x')``, for every ``x'`` whose node values and
    adjoints lie in ``boxes`` and ``adjoints`` (see the module docstring); ``errs``: the
    forward errors if :func:`forward_errors` already gave them."""
    if errs is None:
        errs = forward_errors(graph, boxes, rnd, e0)
    f = backward_errors(graph, boxes, adjoints, errs, ErrorModel(rnd))[0]
    return f.reshape(f.shape[0], -1)
