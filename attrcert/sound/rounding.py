"""The rounding term: torch's attribution in the model's precision against the exact one."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .activations import Activation
from .intervals import REL, SUM_REL, TINY
from .layers import Layer, transpose


@dataclass
class Rounding:
    """The floating-point arithmetic torch runs the model in, for the rounding term.

    ``u`` is the unit roundoff of the model's precision (``2^-24`` float32, ``2^-53``
    float64, ``2^-8`` bfloat16, ``2^-11`` float16); ``dot`` an extra relative error per
    product term of dot products (``2^-10`` where CUDA may use TF32, else 0). A dot product
    or convolution with ``n`` terms (bias included), summed in any order and blocking, with
    or without FMA, errs by at most ``gamma_n sum |terms|``, ``gamma_n = n u / (1 - n u)``
    (Higham, Accuracy and Stability of Numerical Algorithms, Lemma 3.1 and Eq. 3.5).
    Not covered: Winograd or FFT convolution algorithms (cuDNN may pick them on GPUs).
    """

    u: float
    dot: float = 0.0

    def gamma(self, n: int) -> float:
        """``gamma_n`` (``inf`` when ``n u >= 1``), plus ``dot`` for sums of products."""
        nu = n * self.u
        if nu >= 1.0:
            return math.inf
        return nu / (1.0 - nu) * (1.0 + 1e-12) + (self.dot if n > 2 else 0.0)


UNIT_ROUNDOFF = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24,
                 torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def model_rounding(model: torch.nn.Module, example: Tensor) -> Rounding:
    """:class:`Rounding` of the lowest precision among the model's tensors and ``example``."""
    tensors = [t for t in (example, *model.parameters(), *model.buffers())
               if t.is_floating_point()]
    u = max(UNIT_ROUNDOFF.get(t.dtype, 2.0 ** -8) for t in tensors)
    cuda = any(t.is_cuda for t in tensors)
    tf32 = cuda and (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
    return Rounding(max(u, 2.0 ** -53), 2.0 ** -10 if tf32 and u <= 2.0 ** -24 else 0.0)


def _near_threshold(act: Activation, lo: Tensor, hi: Tensor, err: Tensor,
                    u: float) -> Tensor | float:
    """1 where ``[lo - err, hi + err]`` (widened by the rounding of ``beta z``) reaches torch's
    Softplus threshold, so that the computed and the exact value may be on its two sides."""
    if act.threshold is None:
        return 0.0
    pad = err + 2.0 * u * torch.maximum(lo.abs(), hi.abs()) + TINY
    return ((lo - pad <= act.threshold) & (hi + pad >= act.threshold)).to(lo.dtype)


def rounding_error(layers: list[Layer], inputs: list[tuple[Tensor, Tensor]],
                   adjoints: list[tuple[Tensor, Tensor]], rnd: Rounding,
                   e0: Tensor) -> Tensor:
    """A bound on ``|G_hat - G|`` ``(d,)``: torch's computed gradient ``G_hat`` of ``f_y`` at a
    point ``x_hat`` with ``|x_hat - x'| <= e0``, against the exact ``G(x')``, for every ``x'``
    whose layer inputs lie in ``inputs`` and output adjoints in ``adjoints`` (``(lo, hi)`` per
    layer, from :func:`enclose`). Forward (``e`` bounds ``|z_hat - z|``): an affine layer with
    fan-in ``n`` gives ``|A| e + gamma_n (|A| (|z| + e) + |b|)``; an activation
    ``L1 e + ulps u (|sigma| + |z|)`` (``L1 = sup |sigma'|``), plus the Softplus value jump
    where the threshold is near. Backward (``f`` bounds ``|u_hat - u|``): ``A^T`` with fan-out
    ``n'`` gives ``|A|^T f + gamma_n' |A|^T (|u| + f)``; an activation, with
    ``|s_hat - s| <= ds = L2 e + ulps u (1 + kappa |z|)`` (``L2 = sup |sigma''|``, plus the
    slope jump near the threshold), ``f (|s| + ds) + |u| ds + 4 u (|u| + f)(|s| + ds)``."""
    u = rnd.u
    e = e0
    errs = []
    for layer, (lo, hi) in zip(layers, inputs, strict=True):
        errs.append(e)
        mag = torch.maximum(lo.abs(), hi.abs()) + e
        if layer.affine is not None:
            a = layer.affine
            e = a.lin_abs(e)
            if a.fan_in:
                babs = a.bias_abs if a.bias_abs is not None else (
                    a.bias.abs() if a.bias is not None else 0.0)
                e = e + rnd.gamma(a.fan_in) * (a.lin_abs(mag) + babs)
            e = e * (1.0 + SUM_REL) + TINY
            continue
        act = layer.act
        assert act is not None
        vlo, vhi = act.range(0, lo, hi)
        amag = torch.maximum(vlo.abs(), vhi.abs()) + act.scale[1] * e
        e = (act.scale[1] * e + act.ulps * u * (amag + mag)
             + _near_threshold(act, lo, hi, e, u) * act.gap) * (1.0 + REL) + TINY
    f = torch.zeros_like(adjoints[-1][0])
    for i in range(len(layers) - 1, -1, -1):
        layer, (ulo, uhi) = layers[i], adjoints[i]
        umag = torch.maximum(ulo.abs(), uhi.abs())
        if layer.affine is not None:
            a = layer.affine
            ft = transpose(a.lin_abs, f, a.in_shape)
            if a.fan_out:
                ft = ft + rnd.gamma(a.fan_out) * transpose(a.lin_abs, umag + f, a.in_shape)
            f = ft * (1.0 + SUM_REL) + TINY
            continue
        act = layer.act
        assert act is not None
        (lo, hi), e = inputs[i], errs[i]
        slo, shi = act.range(1, lo, hi)
        smag = torch.maximum(slo.abs(), shi.abs())
        zmag = torch.maximum(lo.abs(), hi.abs()) + e
        ds = act.scale[2] * e + act.ulps * u * (1.0 + act.kappa * zmag) \
            + _near_threshold(act, lo, hi, e, u) * act.jump
        f = (f * (smag + ds) + umag * ds + 4.0 * u * (umag + f) * (smag + ds)) \
            * (1.0 + REL) + TINY
    return f.reshape(-1)
