"""The operators of sound mode's graph, one class per kind, and the readers that build them
from ATen ops (docs/sound.md, "How to add an operator").

Importing the package registers every reader (:data:`.registry.READERS`); the order of the
imports below is the order of :data:`.registry.SUPPORTED` in the refusals.
"""

from __future__ import annotations

from .affine import Affine, StopGradient
from .affine_readers import broadcast
from .base import CR, Box, Input, Operator, Refused
from .binary import Product, Sum
from .concat import Concat
from .elementwise import Elementwise
from .registry import INPLACE, READERS, SUPPORTED, Call

__all__ = ["CR", "INPLACE", "READERS", "SUPPORTED", "Affine", "Box", "Call", "Concat",
           "Elementwise", "Input", "Operator", "Product", "Refused", "StopGradient", "Sum",
           "broadcast"]
