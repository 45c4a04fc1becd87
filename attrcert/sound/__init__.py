"""Sound mode: proved upper bounds on the attribution deviation, with no linearity assumption.

``T_e_sound`` bounds ``sup_{||delta||_p <= eps} ||g(x + delta) - g(x)||_2`` over the whole
ball, as torch computes ``g``, for smooth graphs whose every operator is modelled exactly
(:mod:`.operators`; everything else is refused by name), in float64 with outward rounding:
an interval bound and a mean-value bound on ``int_0^1 J_g(x + t delta) dt`` with a
structured enclosure of the Hessian (Theorem 1, Theorem 2), plus torch's rounding and the
Softplus thresholds' gap; ``margin_lower`` proves the label on the ball. How, and how to add
an operator: docs/sound.md. :mod:`.bounder` is the entry point.
"""

from __future__ import annotations

from .bounder import MAX_D, SoundBounder, SoundResult
from .enclosures import Balls, Enclosure, HessianWeights, PassOptions, enclose
from .graph import read_graph
from .nodes import Graph, forward

__all__ = ["MAX_D", "Balls", "Enclosure", "Graph", "HessianWeights", "PassOptions",
           "SoundBounder", "SoundResult", "enclose", "forward", "read_graph"]
