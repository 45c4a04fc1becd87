"""Noise and the attributions of noisy copies: the Monte Carlo side of smoothing.

Noise sample ``j`` of an image comes from its own generator, seeded by a digest of the
image's content, the target, the noise kind and ``--seed``
(:func:`image_digest`, :func:`noise`), so that a sample is the same whichever pass it
falls in, whichever shard or resumed run certifies the image, and whatever else is in the
batch: how the samples are cut into passes never changes a result
(tests/test_smoothing_sampling.py). Noise is drawn in float64 on the CPU, added to ``x``
in the model's precision, and never clipped to the pixel range: the certificate's
translation argument needs the exact noise distribution around every point.

- uniform in the l2 ball ``B(0, r)``: ``eta = r U^(1/d) z / ||z||``, ``z ~ N(0, I)``,
  ``U ~ U(0, 1)`` (Wang & Kong 2024);
- Gaussian ``N(0, sigma^2 I)`` (Anani et al. 2025).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from ..attributions import Attribution, Model, summed
from ..memory import halving

__all__ = ["KINDS", "AttributionFn", "attribution_fn", "bounded", "image_digest", "noise",
           "noisy_attributions"]

#: Noise distributions: ``uniform`` (in the l2 ball of radius ``scale``) and ``gaussian``
#: (standard deviation ``scale`` per coordinate).
KINDS = ("uniform", "gaussian")
#: Attributions of a batch of inputs ``(k, C, H, W)``, shaped like them.
AttributionFn = Callable[[Tensor], Tensor]
Progress = Callable[[int], None]


def image_digest(x: Tensor, target: int, seed: int) -> bytes:
    """A digest of one image's values (as float64), its target class and the seed."""
    data = x.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()
    return hashlib.sha256(data + f"|{int(target)}|{int(seed)}".encode()).digest()


def _generator(digest: bytes, kind: str, j: int) -> np.random.Generator:
    key = hashlib.sha256(digest + kind.encode() + j.to_bytes(8, "little")).digest()
    return np.random.default_rng(int.from_bytes(key[:16], "little"))


def noise(kind: str, scale: float, digest: bytes, first: int, count: int, d: int) -> Tensor:
    """Noise samples ``first .. first + count - 1`` of the image with ``digest``, ``(count,
    d)`` float64 on the CPU; each from its own generator (NumPy's PCG64, seeded from
    :func:`image_digest`, the kind and the sample's number)."""
    if kind not in KINDS:
        raise ValueError(f"unknown noise {kind!r}: use one of {', '.join(KINDS)}")
    out = np.empty((count, d), dtype=np.float64)
    for row in range(count):
        gen = _generator(digest, kind, first + row)
        z = gen.standard_normal(d)
        if kind == "gaussian":
            out[row] = scale * z
        else:
            length = scale * math.exp(math.log1p(-gen.random()) / d)  # U^(1/d), U in (0, 1]
            out[row] = z * (length / np.linalg.norm(z))
    return torch.from_numpy(out)


def attribution_fn(model: Model, attribution: Attribution, target: int,
                   points_per_pass: int | None) -> AttributionFn:
    """``g`` of class ``target`` for a batch of copies, each attribution's points cut into
    passes of at most ``points_per_pass`` (:meth:`Attribution.in_passes`), detached."""
    pieces = attribution.in_passes(points_per_pass)

    def run(xs: Tensor) -> Tensor:
        targets = torch.full((xs.shape[0],), int(target), dtype=torch.long, device=xs.device)
        return summed(pieces, model, xs, targets)

    return run


def bounded(g: Tensor, bound: float, clip: bool) -> Tensor:
    """Rows of ``g`` ``(k, d)`` with norm at most ``M = bound``: scaled to norm ``M``
    (``clip=False``; a zero row stays zero) or, with ``clip``, only those above ``M``."""
    norms = g.norm(dim=1, keepdim=True)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    factor = bound / safe
    if clip:
        factor = torch.clamp(factor, max=1.0)
    return torch.where(norms > 0, g * factor, torch.zeros_like(g))


def noisy_attributions(fn: AttributionFn, x: Tensor, *, kind: str, scale: float, samples: int,
                       digest: bytes, per_pass: int,
                       progress: Progress | None = None) -> Iterator[Tensor]:
    """``g(x + eta_j)`` for ``j = 0 .. samples - 1``, flattened float64 ``(k, d)`` on the CPU,
    ``per_pass`` copies per pass (halved on an accelerator's out-of-memory error, and kept
    smaller); ``progress`` gets the samples done so far."""
    d = x.numel()
    done, size = 0, max(1, int(per_pass))
    while done < samples:
        def run(k: int, first: int = done) -> Tensor:
            k = min(k, samples - first)
            eta = noise(kind, scale, digest, first, k, d).to(x.dtype).to(x.device)
            xs = x.unsqueeze(0) + eta.view(k, *x.shape)
            return fn(xs).detach().reshape(k, d).to("cpu", torch.float64)

        chunk, size = halving(run, size, device=x.device, what="noise sample per pass")
        done += chunk.shape[0]
        if progress is not None:
            progress(done)
        yield chunk
