"""The replacements that :mod:`attrcert.loading.smoothing` writes into a model's graph.

**Beta-smoothing** (Dombrowski et al., NeurIPS 2019, "Explanations can be manipulated and
geometry is to blame", Theorem 2): every ReLU becomes
``s(x) = softplus_beta(x) = log(1 + exp(beta x)) / beta``, which tends to ``relu(x)`` as
``beta -> inf`` (``0 <= s(x) - relu(x) <= log 2 / beta``) and whose second derivative is
bounded by ``beta / 4``. Each relative of ReLU is written as the exact identity that
expresses it through ReLU, and then every ReLU of that identity is smoothed:

=====================  ==================================  ===============================
operation              identity                            smoothed
=====================  ==================================  ===============================
ReLU                   ``relu(x)``                         ``s(x)``
LeakyReLU(a), PReLU    ``a x + (1 - a) relu(x)``           ``a x + (1 - a) s(x)``
clamp(x, lo, hi),      ``lo + relu(x - lo) - relu(x - hi)``  ``lo + s(x - lo) - s(x - hi)``
Hardtanh, ReLU6
clamp_min(x, lo)       ``lo + relu(x - lo)``               ``lo + s(x - lo)``
clamp_max(x, hi)       ``hi - relu(hi - x)``               ``hi - s(hi - x)``
maximum(a, b)          ``b + relu(a - b)``                 ``b + s(a - b)``
minimum(a, b)          ``a - relu(a - b)``                 ``a - s(a - b)``
Hardsigmoid            ``relu6(x + 3) / 6``                ``(s(x + 3) - s(x - 3)) / 6``
Hardswish              ``x relu6(x + 3) / 6``              ``x (s(x + 3) - s(x - 3)) / 6``
max-pooling            window max, ``max(a, b) = b +``     the smooth maximum
                       ``relu(a - b)`` folded                ``LSE_beta = log sum exp(beta
                                                            x_i) / beta`` of each window
=====================  ==================================  ===============================

torch's ``clamp`` is ``min(max(x, lo), hi)``, which is ``hi`` wherever ``lo > hi``; the
clamp row holds for ``lo <= hi`` only, so ``lo`` is first replaced by ``hi`` where it
exceeds it (then the row gives ``hi`` exactly).

The max-pooling row is the maximum identity applied along the window: folding
``m <- m + s(x_i - m)`` over the window's elements gives exactly ``LSE_beta`` of the window
(``LSE_beta(a, b) = b + s(a - b)``, and ``LSE_beta`` is associative), whatever the order,
with ``max <= LSE_beta <= max + log(k) / beta`` for ``k`` elements; padding is left out of
the window, as max-pooling leaves it out. It is computed that way (a depthwise convolution
with one-hot weights picks each window element, and the fold uses only Softplus,
additions and products with constant masks), so that sound mode (``--sound``) can read the
smoothed network.

``s`` is torch's ``F.softplus(x, beta)`` with its default threshold 20 (it returns ``x``
where ``beta x > 20``, a change of at most ``2e-9 / beta`` in value and ``2e-9`` in slope).

**Without smoothing**, Hardsigmoid cannot be differentiated twice by autograd
(``aten.hardsigmoid_backward`` has no derivative; Hardswish's backward has one):
:func:`hardsigmoid_twice` gives the same values as torch's kernel (bit for bit) and the
same first derivative (up to rounding: torch's float64 slope is ``1/6`` rounded to
float32), from ``torch.where``, which autograd differentiates twice (second derivative 0,
as the original's almost everywhere).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["hardsigmoid_twice", "pool_windows", "smooth_adaptive_max_pool2d",
           "smooth_clamp", "smooth_hardsigmoid", "smooth_hardswish", "smooth_leaky_relu",
           "smooth_max_pool2d", "smooth_maximum", "smooth_minimum", "smooth_prelu",
           "smooth_relu"]

Bound = float | Tensor | None


def smooth_relu(x: Tensor, beta: float) -> Tensor:
    """``softplus_beta(x)``: ReLU smoothed."""
    return F.softplus(x, beta=beta)


def smooth_leaky_relu(x: Tensor, slope: float, beta: float) -> Tensor:
    """LeakyReLU(``slope``) ``= slope x + (1 - slope) relu(x)``, smoothed."""
    return slope * x + (1.0 - slope) * F.softplus(x, beta=beta)


def smooth_prelu(x: Tensor, weight: Tensor, beta: float) -> Tensor:
    """PReLU with ``weight`` (one slope, or one per channel of axis 1), smoothed as
    :func:`smooth_leaky_relu`."""
    if weight.numel() != 1 and x.ndim >= 2:
        weight = weight.reshape(1, -1, *([1] * (x.ndim - 2)))
    return weight * x + (1.0 - weight) * F.softplus(x, beta=beta)


def smooth_clamp(x: Tensor, lo: Bound, hi: Bound, beta: float) -> Tensor:
    """``clamp(x, lo, hi)`` (either bound may be ``None``; Hardtanh, ReLU6) smoothed:
    ``lo + s(x - lo) - s(x - hi)``."""
    if lo is None and hi is None:
        return x
    if hi is None:
        assert lo is not None
        return lo + F.softplus(x - lo, beta=beta)
    if lo is None:
        return hi - F.softplus(hi - x, beta=beta)
    # torch's clamp is min(max(x, lo), hi): where lo > hi it is hi for every x, and the
    # identity above then needs lo replaced by hi (it gives lo + s(x - hi) - s(x - hi) = hi)
    if isinstance(lo, Tensor) or isinstance(hi, Tensor):
        lo = torch.where(torch.as_tensor(lo) > hi, hi, lo)
    elif lo > hi:
        lo = hi
    return lo + F.softplus(x - lo, beta=beta) - F.softplus(x - hi, beta=beta)


def smooth_maximum(a: Tensor, b: Tensor, beta: float) -> Tensor:
    """``maximum(a, b) = b + relu(a - b)``, smoothed (``LSE_beta`` of the two)."""
    return b + F.softplus(a - b, beta=beta)


def smooth_minimum(a: Tensor, b: Tensor, beta: float) -> Tensor:
    """``minimum(a, b) = a - relu(a - b)``, smoothed."""
    return a - F.softplus(a - b, beta=beta)


def smooth_hardsigmoid(x: Tensor, beta: float) -> Tensor:
    """Hardsigmoid ``= relu6(x + 3) / 6``, smoothed: ``(s(x + 3) - s(x - 3)) / 6``."""
    return (F.softplus(x + 3.0, beta=beta) - F.softplus(x - 3.0, beta=beta)) / 6.0


def smooth_hardswish(x: Tensor, beta: float) -> Tensor:
    """Hardswish ``= x relu6(x + 3) / 6``, smoothed: ``x (s(x + 3) - s(x - 3)) / 6``."""
    return x * smooth_hardsigmoid(x, beta)


def hardsigmoid_twice(x: Tensor) -> Tensor:
    """torch's Hardsigmoid (``min(max(x + 3, 0), 6) / 6``, slope ``1/6`` on ``(-3, 3)`` and
    0 elsewhere, as ``aten.hardsigmoid_backward``), differentiable twice by autograd."""
    inside = (x > -3.0) & (x < 3.0)
    return torch.where(inside, x + 3.0, torch.where(x >= 3.0, 6.0, 0.0)) / 6.0


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, Sequence):
        return (int(value[0]), int(value[-1])) if value else (0, 0)
    return int(value), int(value)


def _out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's output length of max-pooling (``pooling_output_shape``)."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


@functools.lru_cache(maxsize=64)
def pool_windows(size: int, k: int, s: int, p: int, d: int,
                 ceil_mode: bool) -> tuple[int, int, tuple[tuple[int, ...], ...]]:
    """Along one axis of length ``size``: the output length ``n``, the extra outputs
    ``shift`` to drop in front (a ``ceil_mode`` window that reaches past the padding is
    read from a convolution padded by ``p + shift s``), and for each kernel offset ``j``
    the 0/1 validity of element ``j`` of each window (padding is not valid)."""
    n = _out_size(size, k, s, p, d, ceil_mode)
    reach = (n - 1) * s - p + (k - 1) * d - (size - 1 + p)
    shift = math.ceil(reach / s) if reach > 0 else 0
    valid = tuple(tuple(int(0 <= o * s - p + j * d < size) for o in range(n))
                  for j in range(k))
    return n, shift, valid


def _window_elements(x: Tensor, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
                     d: tuple[int, int], ceil_mode: bool) -> tuple[Tensor, tuple, tuple]:
    """``(N, C, kh kw, Ho, Wo)``: element ``(i, j)`` of every window (0 in the padding),
    by one depthwise convolution with one-hot weights; and each axis's
    :func:`pool_windows`."""
    ch = x.shape[1]
    rows = pool_windows(int(x.shape[2]), k[0], s[0], p[0], d[0], ceil_mode)
    cols = pool_windows(int(x.shape[3]), k[1], s[1], p[1], d[1], ceil_mode)
    taps = k[0] * k[1]
    weight = torch.eye(taps, dtype=x.dtype, device=x.device).repeat(ch, 1)
    weight = weight.reshape(ch * taps, 1, k[0], k[1])
    pad = (p[0] + rows[1] * s[0], p[1] + cols[1] * s[1])
    y = F.conv2d(x, weight, None, s, pad, d, ch)
    y = y[:, :, rows[1]: rows[1] + rows[0], cols[1]: cols[1] + cols[0]]
    return y.reshape(y.shape[0], ch, taps, *y.shape[2:]), rows, cols


def _mask(rows: tuple[int, ...], cols: tuple[int, ...], like: Tensor) -> Tensor:
    return torch.tensor([[r * c for c in cols] for r in rows], dtype=like.dtype,
                        device=like.device)


def smooth_max_pool2d(x: Tensor, beta: float, kernel_size: int | Sequence[int],
                      stride: int | Sequence[int] | None = None,
                      padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                      ceil_mode: bool = False) -> Tensor:
    """Max-pooling with each window's maximum replaced by ``LSE_beta`` of its elements
    (padding excluded), computed as the fold ``m <- m + s(x_i - m)`` (module docstring):
    ``m`` starts at each window's first valid element, and each later element enters where
    it is valid (a constant 0/1 mask)."""
    unbatched = x.ndim == 3
    if unbatched:
        x = x.unsqueeze(0)
    k = _pair(kernel_size)
    s = _pair(stride) if stride not in (None, [], ()) else k
    p, d = _pair(padding), _pair(dilation)
    elems, rows, cols = _window_elements(x, k, s, p, d, bool(ceil_mode))
    first_r = [tuple(int(v and not any(rows[2][i][o] for i in range(j)))
                     for o, v in enumerate(rows[2][j])) for j in range(k[0])]
    first_c = [tuple(int(v and not any(cols[2][i][o] for i in range(j)))
                     for o, v in enumerate(cols[2][j])) for j in range(k[1])]
    acc: Tensor | None = None
    later: list[tuple[Tensor, Tensor | None]] = []
    for i in range(k[0]):
        for j in range(k[1]):
            e = elems[:, :, i * k[1] + j]
            first = [[a * b for b in first_c[j]] for a in first_r[i]]
            valid = [[a * b for b in cols[2][j]] for a in rows[2][i]]
            rest = [[v - f for v, f in zip(vr, fr, strict=True)]
                    for vr, fr in zip(valid, first, strict=True)]
            if any(map(any, first)):
                part = e if all(map(all, first)) else e * _mask(first_r[i], first_c[j], e)
                acc = part if acc is None else acc + part
            if any(map(any, rest)):
                full = all(map(all, rest))
                later.append((e, None if full else torch.tensor(rest, dtype=e.dtype,
                                                                device=e.device)))
    assert acc is not None  # every window holds a valid element
    for e, mask in later:
        step = F.softplus(e - acc, beta=beta)
        acc = acc + (step if mask is None else step * mask)
    return acc.squeeze(0) if unbatched else acc


def smooth_adaptive_max_pool2d(x: Tensor, beta: float,
                               output_size: int | Sequence[int | None]) -> Tensor:
    """Adaptive max-pooling with ``LSE_beta`` per window: :func:`smooth_max_pool2d` when
    the windows tile the input (each side a multiple of the output's), else
    ``torch.logsumexp`` over each of torch's windows (``floor(i H / n)`` to
    ``ceil((i + 1) H / n)``)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    size = output_size if isinstance(output_size, (list, tuple)) else (output_size,) * 2
    oh = h if size[0] is None else int(size[0])
    ow = w if size[-1] is None else int(size[-1])
    if h % oh == 0 and w % ow == 0:
        return smooth_max_pool2d(x, beta, (h // oh, w // ow))
    rows = []
    for i in range(oh):
        r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        cols = []
        for j in range(ow):
            c0, c1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            window = x[..., r0:r1, c0:c1].flatten(-2)
            cols.append(torch.logsumexp(beta * window, dim=-1) / beta)
        rows.append(torch.stack(cols, dim=-1))
    return torch.stack(rows, dim=-2)
