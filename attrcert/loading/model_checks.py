"""What a loaded model must hold and return before attrcert computes anything with it, each
failure one line that says what is wrong and what to do.

- :func:`check_weights`: no meta tensor (a shape without values) among the weights, and in a
  weights-only file (loaded into ``--arch``) no quantized tensor either;
- :func:`check_logits`: the model's output is one floating-point tensor of shape ``(N, k)``,
  one finite row per image: the logits ``f(x)`` of Theorem 1, whose gradients are the
  attributions;
- :func:`check_deterministic`: the same image gives the same logits in another call and
  another batch (no random numbers, no state kept between calls, no mixing of a batch's
  images), or the bounds would be about a function that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..errors import InputError, LoadError

__all__ = ["check_deterministic", "check_logits", "check_weights", "nonfinite_logits"]


def check_weights(tensors: Iterable[tuple[str, object]], path: Path, *,
                  weights_only: bool) -> None:
    """Refuse meta tensors in ``tensors`` (``(name, value)`` pairs), and with
    ``weights_only`` (a state dict for ``--arch``) quantized ones.

    Raises:
        LoadError: naming the first such tensor and what to do.
    """
    for name, value in tensors:
        if not isinstance(value, Tensor):
            continue
        if value.is_meta:
            raise LoadError(f"{path} holds meta tensors ({name}: a shape without values, saved "
                            "from a model built on the meta device): save the model with its "
                            "real weights")
        if weights_only and value.is_quantized:
            raise LoadError(f"{path} holds quantized tensors ({name}: {value.dtype}): attrcert "
                            "certifies floating-point models; save the weights dequantized "
                            "(tensor.dequantize())")


def nonfinite_logits(model: Path | str, source: str, what: str = "logits") -> InputError:
    """The error for logits (or, as ``what`` says, another output) that are NaN or infinite
    for the image ``source``."""
    return InputError(f"model {model} returns {what} that are not finite (NaN or infinite) "
                      f"for {source}: check its weights and its input range; such a model "
                      "cannot be certified")


def check_logits(out: object, rows: int, model: Path | str, sources: Sequence[str]) -> Tensor:
    """``out`` if it is what attrcert needs from a model given ``rows`` images (named
    ``sources``, in order): one floating-point tensor of shape ``(rows, k)``, ``k >= 1``,
    finite.

    Raises:
        InputError: one line saying what the model returned instead.
    """
    if not isinstance(out, Tensor):
        raise InputError(f"model {model} returned a {type(out).__name__}, not a tensor: "
                         "attrcert needs one tensor of logits of shape (N, k)")
    if out.is_meta:
        raise InputError(f"model {model} returned a meta tensor (a shape without values): "
                         "run it on cpu or cuda")
    if out.is_quantized:
        raise InputError(f"model {model} returned quantized logits ({out.dtype}): dequantize "
                         "them in the model (attrcert differentiates the logits)")
    if out.is_complex() or not out.is_floating_point():
        raise InputError(f"model {model} returned {str(out.dtype).replace('torch.', '')} "
                         "logits: attrcert needs floating-point scores (the logits before "
                         "argmax, not class indices)")
    if out.ndim != 2:
        raise InputError(f"model {model} returned shape {tuple(out.shape)} for {rows} "
                         f"image{'s' if rows != 1 else ''}: attrcert needs logits of shape "
                         "(N, k)")
    if out.shape[0] != rows:
        raise InputError(f"model {model} returned {out.shape[0]} row"
                         f"{'s' if out.shape[0] != 1 else ''} of logits for {rows} "
                         "images: it must return one row per image (does it slice or reduce "
                         "the batch?)")
    if out.shape[1] == 0:
        raise InputError(f"model {model} returned logits of shape {tuple(out.shape)}: no "
                         "classes")
    finite = torch.isfinite(out).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise nonfinite_logits(model, sources[min(row, len(sources) - 1)])
    return out


def check_deterministic(alone: Tensor, in_batch: Tensor, model: Path | str) -> None:
    """``alone`` (the logits of one image) and ``in_batch`` (that image's row in a batch of
    two) must agree up to rounding (relative 1e-3 of the largest logit).

    Raises:
        InputError: they differ.
    """
    scale = max(1.0, float(alone.abs().max()))
    if not torch.allclose(in_batch.to(alone.dtype), alone, rtol=1e-3, atol=1e-4 * scale):
        gap = float((in_batch.to(alone.dtype) - alone).abs().max())
        raise InputError(f"model {model} returns other logits for the same image in another "
                         f"call or batch (by up to {gap:.3g}): it draws random numbers, keeps "
                         "state between calls or mixes the images of a batch (dropout or "
                         "batch norm in training mode?); attrcert needs a fixed function of "
                         "each image")
