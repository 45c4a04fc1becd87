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
