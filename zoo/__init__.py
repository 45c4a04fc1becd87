"""The model zoo of attrcert's tests and benchmarks (not part of the installed package).

timm's and torchvision's own architectures, one of each family, and what the libraries lack
(:mod:`zoo.handwritten`, with tiny look-alikes of the families for full-Jacobian tests), in
one registry (:mod:`zoo.registry`) that says for each what builds it at each input size, its
preprocessing and what attrcert supports on it. ``tests/`` and ``benchmarks/`` both import
it from the repository root (pytest's ``pythonpath`` in pyproject.toml; the benchmarks
insert the root), so neither imports the other.
"""

from .building import (
    build,
    export_pt2,
    export_static,
    export_torchscript,
    inputs,
    save_weights,
)
from .handwritten import SHAPE, TINY, ResidualSoftplus, Tiny, ViT, maxpool_cnn, mobilenet, resnet
from .registry import ZOO, Entry, Pre, entry
from .weights import revive, seeded

__all__ = [
    "SHAPE",
    "TINY",
    "ZOO",
    "Entry",
    "Pre",
    "ResidualSoftplus",
    "Tiny",
    "ViT",
    "build",
    "entry",
    "export_pt2",
    "export_static",
    "export_torchscript",
    "inputs",
    "maxpool_cnn",
    "mobilenet",
    "resnet",
    "revive",
    "save_weights",
    "seeded",
]
