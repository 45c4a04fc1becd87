"""What a run tells its caller while it works: ``progress(phase, done, total)``, one phase of
a sample (or of a batch) at a time, ``total`` 0 where it is not known in advance. A Krylov
solver stops when it has converged: its total (:data:`SPECTRUM`) is a forecast from the
residuals so far (:class:`attrcert.spectral.krylov.Forecast`), 0 until its third step, and
moves as the solver goes.

The phases, in the order a sample goes through them: :data:`ATTRIBUTION` (``g`` of the
batch), :data:`JACOBIAN` (rows of the full ``J``) or :data:`SPECTRUM` (matrix-free products
of one sample), :data:`LABEL` (Proposition 1, sample by sample), :data:`SOUND` and
:data:`ATTACK` (each batch at once); ``attrcert smooth`` has :data:`NOISE` (noise samples of
one image). The CLI shows them under its bar of samples (:mod:`attrcert.cli.runner`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

__all__ = ["ATTACK", "ATTRIBUTION", "JACOBIAN", "LABEL", "NOISE", "PHASES", "SOUND",
           "SPECTRUM", "Progress", "Tick", "as_progress", "tick"]

#: ``progress(phase, done, total)``: ``total`` 0 when it is not known.
Progress = Callable[[str, int, int], None]
#: One phase's ``(done, total)``.
Tick = Callable[[int, int], None]

ATTRIBUTION = "attribution"
JACOBIAN = "Jacobian rows"
SPECTRUM = "spectrum products"
LABEL = "label test"
SOUND = "sound bound"
ATTACK = "attack"
NOISE = "noise samples"
PHASES = (ATTRIBUTION, JACOBIAN, SPECTRUM, LABEL, SOUND, ATTACK, NOISE)


def tick(progress: Progress | None, phase: str) -> Tick | None:
    """``(done, total) -> progress(phase, done, total)``; ``None`` without ``progress``."""
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(phase, done, total)

    return report


def as_progress(callback: Callable[..., None] | None) -> Progress | None:
    """``callback`` as a :data:`Progress`. A callback of two positional parameters (the
    API's before phases: ``(rows done, d)``) is given the :data:`JACOBIAN` phase only."""
    if callback is None:
        return None
    try:
        params = list(inspect.signature(callback).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: take it as it is
        return callback
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 2 or any(p.kind is p.VAR_POSITIONAL for p in params):
        return callback
    legacy = callback

    def rows_only(phase: str, done: int, total: int) -> None:
        if phase == JACOBIAN:
            legacy(done, total)

    return rows_only
