"""The floating-point arithmetic of the model, for the rounding term (:mod:`.propagation`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


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


@dataclass
class ErrorModel:
    """What an error propagation injects (:mod:`.propagation`): torch's rounding (``rnd``)
    and/or the Softplus twin's jumps on the units ``straddle[node]`` (filled by
    :func:`.enclosures.enclose` as it goes)."""

    rnd: Rounding | None = None
    straddle: dict[int, Tensor] = field(default_factory=dict)

    @property
    def u(self) -> float:
        return 0.0 if self.rnd is None else self.rnd.u

    def gamma(self, n: int) -> float:
        return 0.0 if self.rnd is None or n <= 0 else self.rnd.gamma(n)


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
