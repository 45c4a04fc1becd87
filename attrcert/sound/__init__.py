"""Sound mode: proved upper bounds on the attribution deviation, with no linearity assumption.

``T_e`` and ``T'_e`` (SPEC §2) assume that ``g`` is locally linear on the ball; an attack can
beat them once eps leaves that regime (SPEC §6). This package bounds
``sup_{||delta||_p <= eps} ||g(x + delta) - g(x)||_2`` for real, for networks that are a
directed acyclic graph (:mod:`.nodes`) of affine maps (Linear, Conv2d, average pooling and
means, Flatten/reshape, BatchNorm in eval mode, constant shifts and scales), residual
additions, elementwise products of two branches (squeeze-excitation gates), concatenation,
and twice-differentiable elementwise activations (Tanh, Sigmoid, Softplus, SiLU, GELU), in
float64 with outward rounding (:mod:`.intervals`). LayerNorm and softmax attention are
refused by name (:mod:`.support`), and so is every operation that is not what it looks like
to a value check at one point: a step in another precision than the model's (the rounding
term is proved for one), floor division, a reshape across the batch axis, an in-place
change read again later.

Stop-gradients (``aten.detach``) are read exactly: a detached value is a constant for every
derivative, so its value (and ``d z / d x``, for the value enclosures) passes and no adjoint
does; ``G`` is then autograd's gradient, but ``J_g`` mixes the tangents through the detached
value with adjoints that skip it (``sum_k S_k^T diag(u_k sigma_k'') T_k``, ``S != T``) and is
no Hessian: such graphs get the interval bound only (:func:`.nodes.has_stop`).

With ``J_v = d z_v / d x`` and ``u_v = d f_y / d z_v`` for every node ``v``, backpropagation and
its derivative give (:mod:`.hessian`)::

    G = grad f_y = u_input,
    H = Hess f_y = sum_{activations k} J_k^T diag(u_k sigma_k''(z_k)) J_k
                 + sum_{products m = a b} (J_a^T diag(u_m) J_b + J_b^T diag(u_m) J_a).

Two bounds, each proved; the record reports the smaller as ``T_e_sound``:

- ``interval``: enclose every node's value over the ball (:mod:`.enclosures`: interval
  propagation intersected with the mean-value form ``z_v(x) +- eps ||row([J_v])||_q``, ``q``
  the dual norm), then the adjoints backwards in interval arithmetic: ``g_lo <= g(x') <= g_hi``
  for every ``x'`` in the ball, and with ``[gx_lo, gx_hi]`` the same at ``x``,
  ``||g(x') - g(x)||_2 <= || max(g_hi - gx_lo, gx_hi - g_lo) ||_2``.
- ``mean_value``: ``g(x') - g(x) = M delta`` with ``M = int_0^1 J_g(x + t delta) dt``; the
  integral is split at nested radii (:mod:`.pieces`), each piece enclosed by the formula for
  ``H`` with ``[J_v]``, ``[u_v]``, ``[sigma'']`` in the structured form ``C + F^T E' F + E``
  (:mod:`.hessian`), whose spectral norm is at most ``sigma_max(C) + lambda_max(F^T F) +
  sigma_max(R)`` (:func:`.bounds.structured_bound`; Theorem 2 and Corollary 1 for l-inf).
  For l2 and one centre, the cross terms of a layer whose Jacobian varies over the ball are
  bounded spectrally instead, by telescoping that variation over the activations above it
  (:mod:`.telescope`, :mod:`.pointpass`), when that is smaller than the entrywise ``R``.
  Its excess over ``J_g(x)`` is ``O(eps)``, so the bound tends to ``T_e`` (Theorem 1 /
  Theorem 2) as ``eps -> 0``. ``sigma_max`` and ``lambda_max`` are LAPACK's, widened by their
  backward error; ``sigma_max`` of a nonnegative matrix is bounded by Collatz-Wielandt
  (:mod:`.linalg`).

torch's Softplus switches to the identity above its threshold, where its derivative jumps
by ``sigmoid(-threshold)``; the mean-value theorem is applied to a twin (the identity on the
units whose interval over the ball lies above the threshold, where it equals torch's
function, the smooth closed form elsewhere) and the proved gap ``sup ||g - g_s||`` over the
ball and at ``x``, which only the units whose interval straddles the threshold add to, is
added (:mod:`.propagation`).

Rounding. Both bounds are proved for the exact function; torch computes ``g`` in the
model's precision (``u = 2^-24`` for float32), at the float point ``x_hat'`` an attack
reaches. ``||g_hat(x_hat') - g_hat(x)|| <= ||g(x') - g(x)|| + ||g_hat(x_hat') - g(x')||
+ ||g_hat(x) - g(x)||`` with ``x'`` a ball point within ``u (|x| + 3.01 eps)`` of
``x_hat'``; the last two terms are bounded by a forward and backward error analysis
(:func:`.propagation.rounding_error`: ``gamma_n`` per dot product, an assumed ulp accuracy
per activation kernel, propagated through the backward pass over the ball's intervals) and
added to both bounds. It is a worst case, of order ``n u`` per layer: run the model in
float64 (``--dtype float64``) where it matters.

Label certificate (:mod:`.margin`): the pass over the ball centred at ``x`` also bounds
``f_y - f_j`` from below for every class ``j``, as torch computes the logits (the twin's gap
and the rounding term included), each difference enclosed directly; ``margin_lower > 0``
proves the label on the whole ball, where Proposition 1 is first-order.

Attributions (SPEC §1): saliency ``g = G``; input x gradient ``g = x * G``,
``J_g = diag(G) + diag(x) H`` with ``x'_i in [x_i - eps, x_i + eps]``; integrated gradients
``g = (x - b) * (1/m) sum_a G(z_a)``, ``z_a = b + (a/m)(x - b)``, whose ``a``-th point moves
within the ball of radius ``(a/m) eps``,
``J_g = diag(mean_a G(z_a)) + diag(x - b) sum_a (a/m^2) H(z_a)``.

Norms: l2 and l-inf; for ``1 <= p < 2`` the l2 ball of the same radius contains the lp ball,
for ``2 < p < inf`` the l2 ball of radius ``d^(1/2 - 1/p) eps`` does (Lemma 1), and their
bounds are used. The label constraint of Eq. 1 is ignored (the sup over the whole ball
bounds the constrained one). The model is read from its torch.export graph
(:func:`.graph.read_graph`; TorchScript is rebuilt as a torch.fx graph first) and checked
against its own output; the mean-value bound forms ``d x d`` matrices, so it runs for
``d <= MAX_D`` only.

Modules: :mod:`.graph` reads the model (:mod:`.torchscript`, :mod:`.ops`, :mod:`.support`)
into :mod:`.nodes`; :mod:`.intervals` and :mod:`.activations` are the interval arithmetic
and the derivative ranges; :mod:`.enclosures` runs the passes over a batch of balls,
:mod:`.pieces` chooses the balls, :mod:`.hessian` sums the Hessian's structured enclosure,
:mod:`.telescope` and :mod:`.pointpass` bound its cross terms spectrally,
:mod:`.propagation` and :mod:`.rounding` the rounding and gap terms; :mod:`.linalg` and
:mod:`.bounds` turn enclosures into numbers, :mod:`.margin` into the label certificate;
:mod:`.bounder` is the entry point.
"""

from __future__ import annotations

from .bounder import MAX_D, SoundBounder, SoundResult
from .enclosures import Balls, Enclosure, HessianWeights, PassOptions, enclose
from .graph import read_graph
from .nodes import Graph, forward

__all__ = ["MAX_D", "Balls", "Enclosure", "Graph", "HessianWeights", "PassOptions",
           "SoundBounder", "SoundResult", "enclose", "forward", "read_graph"]
