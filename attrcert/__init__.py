"""attrcert: upper bounds on how far gradient attributions move under input perturbations.

Implements F. Wang and A. W.-K. Kong, "A Practical Upper Bound for the Worst-Case
Attribution Deviations", CVPR 2023. The bounds assume a locally linear attribution
on the perturbation ball; see the README and docs/math.md §6.
"""

from .attack import attack, linearity_gap
from .attributions import METHODS, attribute
from .certify import certify, max_eps
from .errors import AttrcertError
from .jacobian import attribution_jacobian
from .loading import load_images, load_model
from .loading.smoothing import differentiable_hard
from .perturbation import Perturbation
from .settings import AttackOptions, AttributionSpec, SolverOptions
from .smoothness import NonSmoothModelWarning, find_nonsmooth

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "AttackOptions",
    "AttrcertError",
    "AttributionSpec",
    "NonSmoothModelWarning",
    "Perturbation",
    "SolverOptions",
    "__version__",
    "attack",
    "attribute",
    "attribution_jacobian",
    "certify",
    "differentiable_hard",
    "find_nonsmooth",
    "linearity_gap",
    "load_images",
    "load_model",
    "max_eps",
]
