"""Value objects that say what to compute and how, kept apart from the model and the data.

- :class:`AttributionSpec`: which attribution ``g`` (docs/math.md §1: method, IG steps ``m`` of
  Eq. 40, baseline ``b``) of which class (``target``);
- :class:`SolverOptions`: how the Jacobian ``J = dg/dx`` and its spectrum are computed
  (full or matrix-free, tolerance, batching, memory budget, device, dtype);
- :class:`AttackOptions`: the budget of the attack that checks the bounds;
- :class:`LabelOptions`: how Proposition 1's ``a_{y'}`` is computed.

The perturbation ball (norm, eps) is :class:`attrcert.perturbation.Perturbation`.
:func:`attrcert.certify` and :func:`attrcert.max_eps` take these objects, and also the
keywords users write without them (``method=``, ``steps=``, ``spectral=``, ``verify=``
...), which :func:`resolve` folds into the objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from .attributions import METHODS
from .errors import OptionError
from .memory import parse_size
from .proposition1 import LABEL_GRADIENTS

__all__ = ["AttackOptions", "AttributionSpec", "LabelOptions", "SolverOptions", "resolve",
           "resolve_attack"]

Target = int | Tensor | list[int] | None


@dataclass(frozen=True)
class AttributionSpec:
    """The attribution to certify.

    Attributes:
        method: ``"integrated_gradients"``, ``"saliency"`` or ``"input_x_gradient"``.
        steps: integrated-gradients steps ``m`` (right Riemann sum, Eq. 40).
        baseline: integrated-gradients baseline ``b`` (one image; default zeros).
        target: the class attributed, per sample or one for all (default: the prediction).
    """

    method: str = "integrated_gradients"
    steps: int = 50
    baseline: Tensor | None = None
    target: Target = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise OptionError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 1:
            raise OptionError(f"steps = {self.steps!r} must be an integer >= 1")
        if self.baseline is not None and self.method != "integrated_gradients":
            raise OptionError("a baseline applies only to integrated_gradients")

    def rows(self, rows: list[int]) -> AttributionSpec:
        """This spec for the samples ``rows`` of the inputs it was given for (one target
        per sample selected; one target for all kept)."""
        target = self.target
        if target is None or isinstance(target, int):
            return self
        t = torch.as_tensor(target)
        if t.ndim == 0:
            return self
        return dataclasses.replace(self, target=t[rows])


@dataclass(frozen=True)
class SolverOptions:
    """How ``J`` and its spectrum are computed; none of these changes a bound's meaning.

    Attributes:
        spectral: ``"full"`` (form each ``J``), ``"iterative"`` (matrix-free ``xi_max`` and
            ``v_max``) or ``"auto"`` (:func:`attrcert.sizing.resolve_spectral`).
        tol: relative tolerance of the iterative solver, in ``(0, 1)``.
        chunk_size: Jacobian rows (or columns) per replicated autograd pass.
        batch_size: samples sharing each pass.
        memory_budget: bytes (or text such as ``"4GB"``) the passes may use.
        device: where to compute (``"auto"``, ``"cpu"``, ``"cuda:0"`` ...; default the
            model's).
        dtype: ``torch.float32`` / ``float64`` or their names (default the model's).
    """

    spectral: str = "auto"
    tol: float = 1e-4
    chunk_size: int | None = None
    batch_size: int | None = None
    memory_budget: int | str | None = None
    device: torch.device | str | None = None
    dtype: torch.dtype | str | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.tol, (int, float)) and not isinstance(self.tol, bool)
                and 0 < self.tol < 1):
            raise OptionError(f"tol = {self.tol!r} must lie in (0, 1)")
        for name in ("chunk_size", "batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) != value
                                      or value < 1):
                raise OptionError(f"{name} = {value!r} must be an integer >= 1")
        if self.memory_budget is not None:
            parse_size(self.memory_budget)  # a bad size fails before anything is loaded


@dataclass(frozen=True)
class AttackOptions:
    """The attack that checks the bounds (PGD on the Euclidean and cosine objectives, plus
    IFIA for l-inf; :func:`attrcert.attack.attack`).

    Attributes:
        steps: steps of each attack run.
        restarts: random restarts of each run.
        seed: seed of the random starts.
    """

    steps: int = 40
    restarts: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "restarts"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise OptionError(f"attack {name} = {value!r} must be an integer >= 1")


@dataclass(frozen=True)
class LabelOptions:
    """How Proposition 1's ``a_{y'}`` is computed (:func:`attrcert.proposition1.label_test`):
    ``"completeness"`` (class gradients, screened) or ``"attribution"`` (through the
    attribution, every class)."""

    how: str = "completeness"

    def __post_init__(self) -> None:
        if self.how not in LABEL_GRADIENTS:
            raise OptionError(f"unknown label_gradient {self.how!r}: use "
                              f"{' or '.join(LABEL_GRADIENTS)}")


_SHORTCUTS = {f.name: AttributionSpec for f in fields(AttributionSpec)} | {
    f.name: SolverOptions for f in fields(SolverOptions)}
#: keyword -> AttackOptions field (``verify=True`` alone asks for the default attack)
_ATTACK_SHORTCUTS = {"attack_steps": "steps", "attack_restarts": "restarts", "seed": "seed"}


def resolve(attribution: AttributionSpec | None, solver: SolverOptions | None,
            shortcuts: Mapping[str, Any], where: str) -> tuple[AttributionSpec, SolverOptions]:
    """The objects with the ``shortcuts`` (fields of either, by name) applied.

    Raises:
        TypeError: a keyword that names no field (as Python does for unknown keywords).
    """
    unknown = sorted(set(shortcuts) - set(_SHORTCUTS))
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {unknown[0]!r}")
    spec = dataclasses.replace(attribution or AttributionSpec(), **{
        k: v for k, v in shortcuts.items() if _SHORTCUTS[k] is AttributionSpec})
    options = dataclasses.replace(solver or SolverOptions(), **{
        k: v for k, v in shortcuts.items() if _SHORTCUTS[k] is SolverOptions})
    return spec, options


def resolve_attack(attack: AttackOptions | None, shortcuts: dict[str, Any]
                   ) -> AttackOptions | None:
    """The attack asked for, removing its shortcuts (``verify``, ``attack_steps``,
    ``attack_restarts``, ``seed``) from ``shortcuts``; ``None`` for no attack."""
    verify = shortcuts.pop("verify", None)
    changes = {_ATTACK_SHORTCUTS[k]: shortcuts.pop(k) for k in list(shortcuts)
               if k in _ATTACK_SHORTCUTS}
    chosen = dataclasses.replace(attack or AttackOptions(), **changes)  # checks the values
    return chosen if attack is not None or verify else None
