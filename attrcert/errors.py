"""Errors that reach the user as one clear line (exit status 2 in the CLI)."""

from __future__ import annotations


class AttrcertError(Exception):
    """A problem with the user's input or options: the message says what and what to do."""

    kind = "error"


class OptionError(AttrcertError):
    """An option value is out of range or unknown."""

    kind = "option"


class InputError(AttrcertError):
    """Images, labels or baselines that cannot be used."""

    kind = "input"


class LoadError(AttrcertError):
    """A model file that cannot be loaded (or must not be, without --trust-pickle)."""

    kind = "load"


class ModelOutputError(InputError):
    """The model returned logits that are not finite (NaN or infinite) for sample ``index``
    (its position in the batch given to :func:`attrcert.certify`), or, as ``what`` says,
    another of its outputs (the attribution's Jacobian)."""

    kind = "model_output"

    def __init__(self, message: str, index: int, what: str = "logits") -> None:
        super().__init__(message)
        self.index = index
        self.what = what


class OutputError(AttrcertError):
    """A result could not be written (full disk, closed pipe, no permission): nothing that
    failed to be written is ever reported as done."""

    kind = "output"


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (torch messages run over many lines)."""
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    return f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__
