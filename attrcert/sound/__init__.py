"""Sound mode: proved upper bounds on the attribution deviation, with no linearity assumption.

``T_e`` and ``T'_e`` (SPEC §2) assume that ``g`` is locally linear on the ball; an attack can
beat them once eps leaves that regime (SPEC §6). This module bounds
``sup_{||delta||_p <= eps} ||g(x + delta) - g(x)||_2`` for real, for networks that are a chain
of affine maps (Linear, Conv2d, AvgPool2d, Flatten/reshape, BatchNorm in eval mode, adding
or scaling by constants) and twice-differentiable elementwise activations (Tanh, Sigmoid,
Softplus, SiLU, GELU), in float64 with outward rounding (:mod:`attrcert.sound.intervals`).

Write the network as ``z_1 = A_0 x + b_0``, ``a_k = sigma_k(z_k)``,
``z_{k+1} = A_k a_k + b_k``, ``f = A_K a_K + b_K``; ``u_k = d f_y / d a_k`` and
``J_k = d z_k / d x`` (``n_k x d``). Then (backpropagation and its derivative)::

    G = grad f_y = A_0^T D_1 A_1^T D_2 ... A_K^T e_y,      D_k = diag(sigma_k'(z_k))
    H = Hess f_y = sum_k J_k^T diag(u_k * sigma_k''(z_k)) J_k,
    J_{k+1} = A_k D_k J_k,  J_1 = A_0.

Two bounds, each proved; the record reports the smaller as ``T_e_sound``:

- ``interval``: enclose every ``z_k`` over the ball (the first layer exactly,
  ``z_1 = A_0 x + b_0 +- eps ||row(A_0)||_q``, ``q`` the dual norm; deeper layers by interval
  propagation intersected with the mean-value form ``z_k(x) +- eps ||row([J_k])||_q``), then
  ``sigma_k'`` over those intervals, then the product above backwards in interval arithmetic:
  ``g_lo <= g(x') <= g_hi`` for every ``x'`` in the ball, and with ``[gx_lo, gx_hi]`` the same
  enclosure at ``eps = 0``,
  ``||g(x') - g(x)||_2 <= || max(g_hi - gx_lo, gx_hi - g_lo) ||_2``.
- ``mean_value``: ``g(x') - g(x) = M delta`` with ``M = int_0^1 J_g(x + t delta) dt``, which lies
  in any enclosure of the attribution Jacobian ``J_g`` over the ball (built from the formula
  for ``H`` with ``[J_k]``, ``[u_k]`` and ``[sigma_k'']``). Two enclosures are tried:

  * entrywise, ``[Mc - R, Mc + R]``: for any matrix ``C`` (``Mc``, or a given ``J_g(x)``)
    with ``R' = max(|Mc - R - C|, |Mc + R - C|)``,
    ``||M delta||_2 <= ||C delta||_2 + ||R' |delta| ||_2``, so
    ``T <= eps (sigma_max(C) + sigma_max(R'))`` (l2) and
    ``T <= eps (min(sqrt(sum_ij |(C^T C)_ij|), sqrt(d) sigma_max(C)) + ||R' 1||_2)`` (l-inf;
    Theorem 2 and Corollary 1 applied to ``C``);
  * structured (:class:`Structured`, :func:`structured_bound`): the part of ``H`` due to the
    interval of ``u_k * sigma_k''`` is ``F^T E' F`` with ``|E'| <= 1`` diagonal, whose spectral
    norm is at most ``lambda_max(F^T F)``, far below that of its entrywise enclosure.

  ``J_g(x)`` lies in the enclosure and its width is ``O(eps)``, so both tend to ``T_e``
  (Theorem 1 / Theorem 2) as ``eps -> 0``. ``sigma_max`` and ``lambda_max`` are LAPACK's,
  widened by ``1e-10 ||.||_F`` to cover their backward error; ``sigma_max`` of a
  nonnegative matrix is bounded by Collatz-Wielandt. torch's Softplus switches to the
  identity above its threshold, where its derivative jumps by ``sigmoid(-threshold)``; the
  mean-value theorem is then applied to a twin (:func:`enclose`: the identity on the units
  whose interval over the ball lies above the threshold, where it equals torch's function,
  the smooth closed form elsewhere) and the proved gap ``sup ||g - g_s||`` over the ball
  and at ``x``, which only the units whose interval straddles the threshold add to, is
  added (:class:`Enclosure`).

Rounding. Both bounds are proved for the exact function; torch computes ``g`` in the
model's precision (``u = 2^-24`` for float32), at the float point ``x_hat'`` an attack
reaches. ``||g_hat(x_hat') - g_hat(x)|| <= ||g(x') - g(x)|| + ||g_hat(x_hat') - g(x')||
+ ||g_hat(x) - g(x)||`` with ``x'`` a ball point within ``u (|x| + 3.01 eps)`` of
``x_hat'``; the last two terms are bounded by a forward and backward error analysis
(:func:`rounding_error`: ``gamma_n`` per dot product, an assumed ulp accuracy per
activation kernel, propagated through the backward pass over the ball's intervals) and
added to both bounds.

Attributions (SPEC §1): saliency ``g = G``; input x gradient ``g = x * G``,
``J_g = diag(G) + diag(x) H`` with ``x'_i in [x_i - eps, x_i + eps]``; integrated gradients
``g = (x - b) * (1/m) sum_a G(z_a)``, ``z_a = b + (a/m)(x - b)``, whose ``a``-th point moves within
the ball of radius ``(a/m) eps``, ``J_g = diag(mean_a G(z_a)) + diag(x - b) sum_a (a/m^2) H(z_a)``.

Norms: l2 and l-inf; for ``1 <= p < 2`` the l2 ball of the same radius contains the lp ball,
for ``2 < p < inf`` the l2 ball of radius ``d^(1/2 - 1/p) eps`` does (Lemma 1), and their
bounds are used. The label constraint of Eq. 1 is ignored (the sup over the whole ball
bounds the constrained one). The model is read from its torch.export graph
(:func:`extract_chain`; TorchScript chains are rebuilt from their inlined graph first) and
checked against its own output; the mean-value bound forms ``d x d`` matrices, so it runs
for ``d <= MAX_D`` only.

Modules: :mod:`.graph` reads the model (:mod:`.torchscript`, :mod:`.support`) into
:mod:`.layers`; :mod:`.intervals` and :mod:`.activations` are the interval arithmetic and
the derivative ranges; :mod:`.enclosures` runs the passes over the ball, :mod:`.structured`
holds the Hessian's structured enclosure, :mod:`.rounding` the rounding term; :mod:`.linalg`
and :mod:`.bounds` turn enclosures into numbers; :mod:`.bounder` is the entry point.
"""

from __future__ import annotations

from .bounder import MAX_D, SoundBounder, SoundResult
from .enclosures import Enclosure, enclose
from .graph import extract_chain
from .layers import forward

__all__ = ["MAX_D", "Enclosure", "SoundBounder", "SoundResult", "enclose", "extract_chain",
           "forward"]
