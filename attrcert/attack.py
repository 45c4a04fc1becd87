"""Attacks on attributions: empirical lower bounds that check the upper bounds (SPEC §6).

The bounds of :mod:`attrcert.bounds` assume ``g`` is locally linear on the ball; an
attack searches the ball for a ``delta`` that moves the attribution further than the
bound allows, so that no certificate claims more than was shown. Every attack here
solves (approximately) the paper's Eq. 1 with its label constraint::

    max_{||delta||_p <= eps}  D(g(x + delta), g(x))   s.t.  argmax f(x + delta) = argmax f(x)

for a batch ``x`` of shape ``(N, C, H, W)``, ``g = attribution(model, x, target)`` of the
same shape, and ``D`` the objective of the attack. Objectives (per sample, maximised):

- ``"euclidean"``: ``||g(x + delta) - g(x)||_2`` (the gradient is taken of its square);
- ``"cosine"``: the cosine distance ``1 - cos(g(x + delta), g(x))``;
- IFIA's ``"topk"``: ``-sum_{i in topk(|g(x)|)} |g_i(x + delta)|`` (Ghorbani et al. 2019);
- IFIA's ``"center_of_mass"``: ``||CM(|g(x + delta)|) - CM(|g(x)|)||_2``, ``CM`` over ``(H, W)``.

Gradients go through the attribution (``create_graph=True``), so each step costs one
double-backward pass of the attribution. Samples are independent (eval mode): the
per-sample objectives are summed and differentiated once.

The label constraint: after each step, every sample whose prediction changed returns to
its previous iterate and halves its step size. Images are not clamped unless ``clamp`` is
given (the bounds hold over the whole ball). Every returned ``delta`` lies in the ball.

One small class per attack, in the style of torchattacks: :class:`PGDL2`,
:class:`PGDLinf`, :class:`PGD` (any ``p``), :class:`IFIA` (l-inf); :func:`attack` runs
them all and keeps the worst case per sample. :func:`linearity_gap` measures how far
``g`` is from its linearisation (Appendix B.1).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from .attributions import Attribution, Model, resolve_target
from .perturbation import Perturbation, parse_norm

__all__ = [
    "IFIA",
    "IFIA_OBJECTIVES",
    "OBJECTIVES",
    "PGD",
    "PGDL2",
    "SCHEDULES",
    "AttackResult",
    "AttributionAttack",
    "PGDLinf",
    "attack",
    "attribution_metrics",
    "center_of_mass",
    "jacobian_vector_product",
    "linearity_gap",
]

OBJECTIVES = ("euclidean", "cosine")
IFIA_OBJECTIVES = ("topk", "center_of_mass")
SCHEDULES = ("cosine", "step", "constant")
_TINY = 1e-30
Target = int | Tensor | list[int] | None


@dataclass
class AttackResult:
    """What an attack found, per sample.

    Attributes:
        delta: ``(N, C, H, W)`` the perturbation returned (model dtype), inside the ball.
        deviation: ``(N,)`` float64 ``||g(x + delta) - g(x)||_2`` (``T_e`` hat).
        cosine_distance: ``(N,)`` float64 ``1 - cos(g(x + delta), g(x))`` (``T_c`` hat).
        angle_deg: ``(N,)`` float64 ``degrees(arccos(cos))``, the cosine clamped to [-1, 1].
        label_kept: ``(N,)`` bool, ``argmax f(x + delta) == target``.
        norm: ``(N,)`` float64 ``||delta||_p`` in the attack's norm (``<= eps``).
        runs: for :func:`attack`, the result of each attack it ran, by name.

    For a single attack all fields describe the returned ``delta``. For :func:`attack`,
    ``deviation``, ``cosine_distance`` and ``angle_deg`` are maxima over its runs, each
    maximised separately, and ``delta``, ``label_kept``, ``norm`` belong to the run with
    the largest deviation (see :func:`attack`).
    """

    delta: Tensor
    deviation: Tensor
    cosine_distance: Tensor
    angle_deg: Tensor
    label_kept: Tensor
    norm: Tensor
    runs: dict[str, AttackResult] = field(default_factory=dict)


def attribution_metrics(g: Tensor, g0: Tensor) -> tuple[Tensor, Tensor]:
    """``(||g - g0||_2, 1 - cos(g, g0))`` per sample, float64 ``(N,)`` each.

    ``g`` and ``g0`` are ``(N, ...)``. A zero attribution has cosine 0 (distance 1).
    """
    a = g.detach().reshape(g.shape[0], -1).double()
    b = g0.detach().reshape(g0.shape[0], -1).double()
    deviation = (a - b).norm(dim=1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(_TINY)
    return deviation, 1.0 - cos.clamp(-1.0, 1.0)


def _angle(cosine_distance: Tensor) -> Tensor:
    return torch.rad2deg(torch.arccos((1.0 - cosine_distance).clamp(-1.0, 1.0)))


def center_of_mass(g: Tensor) -> Tensor:
    """Centre of mass ``(N, 2)`` (row, column) of the map ``|g|`` summed over channels.

    ``g`` is ``(N, C, H, W)`` (or ``(N, H, W)``); an all-zero map has its centre at 0.
    Differentiable in ``g`` (except where ``g_i = 0``).
    """
    m = g.abs()
    if m.ndim == 4:
        m = m.sum(1)
    if m.ndim != 3:
        raise ValueError(f"center_of_mass needs (N, C, H, W) or (N, H, W), got {tuple(g.shape)}")
    total = m.sum((1, 2)).clamp_min(_TINY)
    rows = torch.arange(m.shape[1], dtype=m.dtype, device=m.device)
    cols = torch.arange(m.shape[2], dtype=m.dtype, device=m.device)
    return torch.stack([(m.sum(2) * rows).sum(1) / total, (m.sum(1) * cols).sum(1) / total], 1)


def _bcast(t: Tensor, like: Tensor) -> Tensor:
    return t.view(-1, *([1] * (like.ndim - 1)))


def _lp_norm(delta: Tensor, p: float) -> Tensor:
    """``||delta_n||_p`` per sample, float64 ``(N,)``."""
    return torch.linalg.vector_norm(delta.detach().reshape(delta.shape[0], -1).double(),
                                    ord=p, dim=1)


class AttributionAttack(ABC):
    """Base of the attacks: projected ascent on an attribution objective in an lp ball.

    Args:
        eps: the radius of the ball ``||delta||_p <= eps`` (pixel units), ``> 0``.
        steps: ascent steps per restart (each one double-backward pass of the attribution).
        restarts: random starts; the best iterate over all of them is kept per sample.
        step_size: the initial step length ``alpha`` in the attack's norm (l2: the length of
            the step; l-inf: the size of each sign step); ``None``: ``8 * eps``. Steps that
            long make the projected iteration nearly ``delta <- eps G / ||G||_2``, a power
            iteration on ``J^T J`` in the linear regime (l-inf: ``delta <- eps sign(G)``),
            which measured strongest: on the sample CNNs (IG, 40 steps, eps 0.1 and 0.5,
            both objectives) 8 eps reached 0.98 of the best of six settings on average
            (eps to 8 eps, three schedules), and Madry's ``2.5 eps / steps`` 0.63-0.99.
        schedule: ``"constant"`` (default), ``"cosine"`` (``alpha_t = alpha (1 + cos(pi t /
            steps)) / 2``) or ``"step"`` (``alpha`` halved at 50 % and again at 75 % of the
            steps).
        label_constraint: keep ``argmax f(x + delta) = argmax f(x)`` (Eq. 1): a step that
            changes a sample's prediction is undone and its step size halved.
        clamp: ``(low, high)`` bounds for ``x + delta`` (e.g. ``(0, 1)``), or ``None``.
        seed: seed of the random starts (a ``torch.Generator`` on ``x``'s device): the same
            seed gives the same result on CPU.

    Call an attack as ``attack(model, x, attribution, target)`` (see :meth:`__call__`).
    """

    p: float = 2.0
    name: str = "attack"

    def __init__(
        self,
        eps: float,
        *,
        steps: int = 40,
        restarts: int = 1,
        step_size: float | None = None,
        schedule: str = "constant",
        label_constraint: bool = True,
        clamp: tuple[float, float] | None = None,
        seed: int = 0,
    ) -> None:
        eps = float(eps)
        if not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"eps = {eps!r} must be a finite number > 0")
        if isinstance(steps, bool) or int(steps) != steps or steps < 0:
            raise ValueError(f"steps = {steps!r} must be an integer >= 0")
        if isinstance(restarts, bool) or int(restarts) != restarts or restarts < 1:
            raise ValueError(f"restarts = {restarts!r} must be an integer >= 1")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
        if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size = {step_size!r} must be a finite number > 0")
        if clamp is not None and not clamp[0] < clamp[1]:
            raise ValueError(f"clamp = {clamp!r} must be (low, high) with low < high")
        self.eps = eps
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.step_size = float(step_size) if step_size is not None else 8.0 * eps
        self.schedule = schedule
        self.label_constraint = label_constraint
        self.clamp = clamp
        self.seed = int(seed)

    # --- what each attack defines ------------------------------------------------------

    @abstractmethod
    def random_start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A random ``delta`` shaped like ``x`` inside the ball."""

    @abstractmethod
    def direction(self, grad: Tensor) -> Tensor:
        """The unit-norm (in the attack's norm) ascent direction for ``grad``, per sample."""

    @abstractmethod
    def project(self, delta: Tensor) -> Tensor:
        """``delta`` mapped into the ball (per sample)."""

    @abstractmethod
    def objective(self, g: Tensor, g0: Tensor, context: object) -> Tensor:
        """The differentiable objective ``(N,)`` to maximise, from ``g(x + delta)``."""

    def prepare(self, g0: Tensor) -> object:
        """Anything the objective needs from ``g(x)`` (computed once)."""
        return None

    def score(self, deviation: Tensor, cosine_distance: Tensor) -> Tensor:
        """How iterates are ranked per sample (the best one is returned): the deviation."""
        return deviation

    # --- the shared loop --------------------------------------------------------------

    def __call__(
        self,
        model: Model,
        x: Tensor,
        attribution: Attribution,
        target: Target = None,
        *,
        start: Tensor | None = None,
    ) -> AttackResult:
        """Attack the attribution of ``x`` ``(N, C, H, W)`` for classes ``target`` ``(N,)``.

        Args:
            model: classifier returning logits ``(N, k)``, in eval mode, same dtype as ``x``.
            x: the inputs.
            attribution: the method ``g``.
            target: class per sample (default: the predictions).
            start: an initial ``delta`` for the first restart instead of a random one
                (projected into the ball), e.g. a worst case of the linear model.
        """
        x = x.detach()
        target = resolve_target(model, x, target)
        with torch.no_grad():
            reference = model(x).argmax(1)
        g0 = attribution(model, x, target).detach()
        context = self.prepare(g0)
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        best: AttackResult | None = None
        best_score = None
        for r in range(self.restarts):
            init = start.to(x) if (start is not None and r == 0) \
                else self.random_start(x, generator)
            result, score = self._run(model, x, attribution, target, g0, reference, context,
                                      init)
            if best is None:
                best, best_score = result, score
            else:
                better = score > best_score
                best = _select(better, result, best)
                best_score = torch.where(better, score, best_score)
        assert best is not None
        with torch.no_grad():
            best.label_kept = (model(x + best.delta).argmax(1) == target).cpu()
        return best

    def _admissible(self, x: Tensor, delta: Tensor) -> Tensor:
        """``delta`` clamped so that ``x + delta`` lies in ``clamp``, then projected."""
        if self.clamp is not None:
            delta = (x + delta).clamp(*self.clamp) - x
        return self.project(delta)

    def _keep_label(self, model: Model, x: Tensor, delta: Tensor, reference: Tensor) -> Tensor:
        """A start that keeps the prediction: flipped samples halve ``delta`` (10 times),
        then fall back to 0."""
        for _ in range(10):
            with torch.no_grad():
                flipped = model(x + delta).argmax(1) != reference
            if not flipped.any():
                return delta
            delta = torch.where(_bcast(flipped, delta), 0.5 * delta, delta)
        with torch.no_grad():
            flipped = model(x + delta).argmax(1) != reference
        return torch.where(_bcast(flipped, delta), torch.zeros_like(delta), delta)

    def _factor(self, t: int) -> float:
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t / max(1, self.steps)))
        if self.schedule == "step":
            return 1.0 if t < self.steps // 2 else 0.5 if t < (3 * self.steps) // 4 else 0.25
        return 1.0

    def _run(
        self, model: Model, x: Tensor, attribution: Attribution, target: Tensor, g0: Tensor,
        reference: Tensor, context: object, init: Tensor,
    ) -> tuple[AttackResult, Tensor]:
        n = x.shape[0]
        delta = self._admissible(x, init.detach())
        if self.label_constraint:
            delta = self._keep_label(model, x, delta, reference)
        alpha = torch.full((n,), self.step_size, dtype=x.dtype, device=x.device)
        best_delta = delta.clone()
        best_score = torch.full((n,), -math.inf, dtype=torch.float64)
        best_dev = torch.zeros(n, dtype=torch.float64)
        best_cos = torch.zeros(n, dtype=torch.float64)
        for t in range(self.steps + 1):
            last = t == self.steps
            x_adv = (x + delta).detach().requires_grad_(not last)
            g = attribution(model, x_adv, target, create_graph=not last)
            dev, cos = attribution_metrics(g, g0)
            dev, cos = dev.cpu(), cos.cpu()
            score = self.score(dev, cos)
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            best_dev = torch.where(better, dev, best_dev)
            best_cos = torch.where(better, cos, best_cos)
            best_delta = torch.where(_bcast(better.to(x.device), delta), delta, best_delta)
            if last:
                break
            obj = self.objective(g, g0, context)
            if obj.requires_grad:
                (grad,) = torch.autograd.grad(obj.sum(), x_adv, materialize_grads=True)
            else:  # g does not depend on x: nothing to follow
                grad = torch.zeros_like(x)
            del g, obj
            step = _bcast(alpha * self._factor(t), delta) * self.direction(grad.detach())
            candidate = self._admissible(x, delta + step)
            if self.label_constraint:
                with torch.no_grad():
                    kept = model(x + candidate).argmax(1) == reference
                candidate = torch.where(_bcast(kept, delta), candidate, delta)
                alpha = torch.where(kept, alpha, 0.5 * alpha)
            delta = candidate.detach()
        result = AttackResult(
            delta=best_delta,
            deviation=best_dev,
            cosine_distance=best_cos,
            angle_deg=_angle(best_cos),
            label_kept=torch.ones(n, dtype=torch.bool),  # set by __call__
            norm=_lp_norm(best_delta, self.p).cpu(),
        )
        return result, best_score

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps}, steps={self.steps}, "
                f"restarts={self.restarts}, step_size={self.step_size:.4g}, "
                f"schedule={self.schedule!r})")


def _select(mask: Tensor, a: AttackResult, b: AttackResult) -> AttackResult:
    """Per sample: ``a`` where ``mask`` (``(N,)`` bool, CPU) else ``b``."""
    out = {}
    for f in fields(AttackResult):
        if f.name == "runs":
            continue
        va, vb = getattr(a, f.name), getattr(b, f.name)
        out[f.name] = torch.where(_bcast(mask.to(va.device), va), va, vb)
    return AttackResult(**out)


class _DistanceObjective:
    """The Euclidean / cosine objectives shared by the PGD attacks."""

    objective_name: str = "euclidean"

    def _check_objective(self, objective: str) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
        self.objective_name = objective

    def objective(self, g: Tensor, g0: Tensor, context: object) -> Tensor:
        a = g.reshape(g.shape[0], -1)
        b = g0.reshape(g0.shape[0], -1)
        if self.objective_name == "euclidean":
            return ((a - b) ** 2).sum(1)  # squared: same ascent direction, smooth at 0
        cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(_TINY)
        return 1.0 - cos

    def score(self, deviation: Tensor, cosine_distance: Tensor) -> Tensor:
        return deviation if self.objective_name == "euclidean" else cosine_distance


class PGD(_DistanceObjective, AttributionAttack):
    """Projected gradient ascent on the attribution in the lp ball ``||delta||_p <= eps``.

    For any ``p >= 1``. Steps follow the steepest-ascent direction of the lp norm,
    ``s_i = sign(G_i) |G_i|^(q-1) / ||G||_q^(q-1)`` (``||s||_p = 1``, ``q`` the dual norm; for
    ``p = 1`` the largest coordinates of ``G``), where ``G`` is the gradient of the objective
    with respect to ``x + delta`` ``(N, C, H, W)``. The projection scales,
    ``delta * min(1, eps / ||delta||_p)`` (exact for l2, inside the ball for every ``p``).
    The random start has a uniform direction in l2, scaled to lp radius ``eps U^(1/d)``.

    Args:
        eps: the radius; norm: ``p``.
        objective: ``"euclidean"`` (maximise ``||g(x + delta) - g(x)||_2``; the returned
            iterate is the one with the largest deviation) or ``"cosine"`` (maximise
            ``1 - cos(g(x + delta), g(x))``; the largest cosine distance is returned).
        Other arguments: see :class:`AttributionAttack`.
    """

    name = "pgd"

    def __init__(self, eps: float, norm: float | str = 2, *, objective: str = "euclidean",
                 **kwargs: Any) -> None:
        super().__init__(eps, **kwargs)
        self.p = parse_norm(norm)
        self._check_objective(objective)

    def random_start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n, d = x.shape[0], x[0].numel()
        u = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        radius = torch.rand(n, generator=generator, dtype=x.dtype, device=x.device) ** (1.0 / d)
        unit = u / _bcast(_lp_norm(u, self.p).to(x.dtype).clamp_min(_TINY), u)
        return _bcast(self.eps * radius, u) * unit

    def direction(self, grad: Tensor) -> Tensor:
        flat = grad.reshape(grad.shape[0], -1)
        top = flat.abs().amax(1, keepdim=True)
        q = Perturbation(self.p, 1.0).dual
        scaled = (flat.abs() / top.clamp_min(_TINY)) ** (q - 1.0) if math.isfinite(q) \
            else (flat.abs() == top).to(flat.dtype)
        s = torch.sign(flat) * scaled
        s = s / torch.linalg.vector_norm(s, ord=self.p, dim=1, keepdim=True).clamp_min(_TINY)
        return s.reshape(grad.shape)

    def project(self, delta: Tensor) -> Tensor:
        norms = _lp_norm(delta, self.p)
        factor = (self.eps / norms.clamp_min(_TINY)).clamp(max=1.0)
        return delta * _bcast(factor.to(delta.dtype), delta)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", norm={self.p}, objective={self.objective_name!r})"


class PGDL2(PGD):
    """PGD on the attribution in the l2 ball ``||delta||_2 <= eps``.

    Random start uniform in the ball (uniform direction, radius ``eps U^(1/d)``); steps
    ``alpha_t G / ||G||_2`` with ``G`` the gradient of the objective with respect to
    ``x + delta`` ``(N, C, H, W)``; projection ``delta * min(1, eps / ||delta||_2)``.
    Objectives ``"euclidean"`` (``||g(x + delta) - g(x)||_2``) and ``"cosine"``
    (``1 - cos``); see :class:`PGD` and :class:`AttributionAttack` for the arguments.
    """

    name = "pgd_l2"

    def __init__(self, eps: float, *, objective: str = "euclidean", **kwargs: Any) -> None:
        super().__init__(eps, 2, objective=objective, **kwargs)

    def direction(self, grad: Tensor) -> Tensor:
        norms = grad.reshape(grad.shape[0], -1).norm(dim=1).clamp_min(_TINY)
        return grad / _bcast(norms, grad)


class PGDLinf(PGD):
    """PGD on the attribution in the l-inf ball ``||delta||_inf <= eps``.

    Random start uniform in ``[-eps, eps]^d``; sign steps ``alpha_t sign(G)`` with ``G`` the
    gradient of the objective with respect to ``x + delta`` ``(N, C, H, W)``; projection by
    clipping to ``[-eps, eps]``. Objectives ``"euclidean"`` and ``"cosine"`` as in
    :class:`PGD`; arguments in :class:`AttributionAttack`.
    """

    name = "pgd_linf"

    def __init__(self, eps: float, *, objective: str = "euclidean", **kwargs: Any) -> None:
        super().__init__(eps, math.inf, objective=objective, **kwargs)

    def random_start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return self.eps * (2.0 * u - 1.0)

    def direction(self, grad: Tensor) -> Tensor:
        return torch.sign(grad)

    def project(self, delta: Tensor) -> Tensor:
        return delta.clamp(-self.eps, self.eps)


class IFIA(PGDLinf):
    """Iterative feature importance attack (Ghorbani et al., AAAI 2019) in the l-inf ball.

    Sign steps and clipping to ``[-eps, eps]`` as in :class:`PGDLinf`, on one of the
    paper's objectives, maximised over ``x + delta`` ``(N, C, H, W)``:

    - ``"topk"``: ``-sum_{i in K} |g_i(x + delta)|``, ``K`` the ``k`` largest ``|g_i(x)|``
      over all ``d = C H W`` entries (a differentiable surrogate of the top-k intersection);
    - ``"center_of_mass"``: ``||CM(|g(x + delta)|) - CM(|g(x)|)||_2``, ``CM`` the centre of
      mass of ``|g|`` summed over channels, over the ``(H, W)`` grid (its square is
      differentiated).

    The iterate kept is the one with the largest Euclidean deviation ``||g(x + delta) -
    g(x)||_2`` (what the bounds are about), not the best IFIA objective.

    Args:
        eps: the radius; objective: ``"topk"`` or ``"center_of_mass"``;
        k: the size of ``K`` (default ``max(1, d // 10)``).
        Other arguments: see :class:`AttributionAttack`.
    """

    name = "ifia"

    def __init__(self, eps: float, *, objective: str = "topk", k: int | None = None,
                 **kwargs: Any) -> None:
        AttributionAttack.__init__(self, eps, **kwargs)
        self.p = math.inf
        if objective not in IFIA_OBJECTIVES:
            raise ValueError(f"unknown IFIA objective {objective!r}: use one of "
                             f"{', '.join(IFIA_OBJECTIVES)}")
        if k is not None and (isinstance(k, bool) or int(k) != k or k < 1):
            raise ValueError(f"k = {k!r} must be an integer >= 1")
        self.objective_name = objective
        self.k = k

    def prepare(self, g0: Tensor) -> object:
        if self.objective_name == "center_of_mass":
            return center_of_mass(g0)
        flat = g0.reshape(g0.shape[0], -1).abs()
        k = min(flat.shape[1], self.k if self.k is not None else max(1, flat.shape[1] // 10))
        return flat.topk(k, dim=1).indices

    def objective(self, g: Tensor, g0: Tensor, context: object) -> Tensor:
        assert isinstance(context, Tensor)
        if self.objective_name == "center_of_mass":
            return ((center_of_mass(g) - context) ** 2).sum(1)
        return -g.reshape(g.shape[0], -1).abs().gather(1, context).sum(1)

    def score(self, deviation: Tensor, cosine_distance: Tensor) -> Tensor:
        return deviation

    def __repr__(self) -> str:
        return (f"IFIA(eps={self.eps}, steps={self.steps}, objective={self.objective_name!r}, "
                f"k={self.k})")


def attack(
    model: Model,
    x: Tensor,
    *,
    attribution: Attribution,
    target: Target = None,
    perturbation: Perturbation,
    objective: str = "euclidean",
    steps: int = 40,
    restarts: int = 1,
    seed: int = 0,
    include_ifia: bool = True,
    label_constraint: bool = True,
    clamp: tuple[float, float] | None = None,
) -> AttackResult:
    """The strongest of several attacks on the attribution, per sample.

    Runs PGD in ``perturbation``'s ball (:class:`PGDL2`, :class:`PGDLinf` or :class:`PGD`)
    with the Euclidean and with the cosine objective and, for l-inf when ``include_ifia``,
    :class:`IFIA` with the top-k and (for 4-d inputs) the centre-of-mass objectives. Each
    run has ``steps`` steps and ``restarts`` restarts; run ``i`` is seeded ``seed + i``.

    Returns, per sample, ``deviation`` = ``T_e`` hat, the largest ``||g(x + delta) -
    g(x)||_2`` over all runs, and ``cosine_distance`` = ``T_c`` hat (``angle_deg`` with it),
    the largest cosine distance over all runs, each maximised separately. ``delta``
    ``(N, C, H, W)``, ``label_kept`` and ``norm`` (in ``perturbation``'s norm) are those of
    the run that attained the largest deviation (``objective="euclidean"``) or the largest
    cosine distance (``objective="cosine"``). ``runs`` holds every run's own result.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    eps, p = perturbation.eps, perturbation.norm
    common = {"steps": steps, "restarts": restarts, "label_constraint": label_constraint,
              "clamp": clamp}
    n_runs = 0

    def seeded() -> dict:
        nonlocal n_runs
        n_runs += 1
        return {**common, "seed": seed + n_runs - 1}

    attacks: dict[str, AttributionAttack] = {}
    for name in OBJECTIVES:
        if perturbation.is_l2:
            attacks[f"pgd_{name}"] = PGDL2(eps, objective=name, **seeded())
        elif perturbation.is_linf:
            attacks[f"pgd_{name}"] = PGDLinf(eps, objective=name, **seeded())
        else:
            attacks[f"pgd_{name}"] = PGD(eps, p, objective=name, **seeded())
    if perturbation.is_linf and include_ifia:
        attacks["ifia_topk"] = IFIA(eps, objective="topk", **seeded())
        if x.ndim == 4:
            attacks["ifia_center_of_mass"] = IFIA(eps, objective="center_of_mass", **seeded())
    target = resolve_target(model, x.detach(), target)
    runs: dict[str, AttackResult] = {}
    for name, atk in attacks.items():
        runs[name] = atk(model, x, attribution, target)
    results = list(runs.values())
    key = "deviation" if objective == "euclidean" else "cosine_distance"
    best = replace(results[0], runs={})
    for res in results[1:]:
        best = _select(getattr(res, key) > getattr(best, key), res, best)
    best.deviation = torch.stack([r.deviation for r in results]).amax(0)
    best.cosine_distance = torch.stack([r.cosine_distance for r in results]).amax(0)
    best.angle_deg = _angle(best.cosine_distance)
    best.runs = runs
    return best


# --- Appendix B.1: how linear is g on the ball? ------------------------------------------

def jacobian_vector_product(
    model: Model, x: Tensor, attribution: Attribution, target: Tensor, v: Tensor
) -> Tensor:
    """``J v`` per sample (``J = dg/dx`` at ``x``), shaped like ``x``, without forming ``J``.

    The double-VJP trick: with ``g`` built on a leaf ``x`` (``create_graph=True``) and a
    dummy ``u`` (zeros, requires grad), ``w = J^T u`` is one VJP of ``g``, linear in ``u``;
    the VJP of ``u -> w`` with ``v`` is ``J v``. Two backward passes.
    """
    leaf = x.detach().clone().requires_grad_(True)
    g = attribution(model, leaf, target, create_graph=True)
    if not g.requires_grad:  # g does not depend on x
        return torch.zeros_like(x)
    u = torch.zeros_like(g, requires_grad=True)
    (w,) = torch.autograd.grad(g, leaf, grad_outputs=u, create_graph=True,
                               materialize_grads=True)
    if not w.requires_grad:  # J^T u does not depend on u: J = 0
        return torch.zeros_like(x)
    (jv,) = torch.autograd.grad(w, u, grad_outputs=v.to(w), materialize_grads=True)
    return jv.detach()


def linearity_gap(
    model: Model, x: Tensor, attribution: Attribution, target: Target, delta: Tensor
) -> Tensor:
    """``eta = ||g(x + delta) - g(x) - J delta||_2`` per sample, float64 ``(N,)`` (App. B.1).

    ``x`` and ``delta`` are ``(N, C, H, W)``; ``J = dg/dx`` at ``x``, applied to ``delta``
    matrix-free by :func:`jacobian_vector_product`. ``eta = 0`` when ``g`` is affine on the
    segment (saliency of a quadratic model); the bounds assume ``eta`` is small.
    """
    x = x.detach()
    target = resolve_target(model, x, target)
    jd = jacobian_vector_product(model, x, attribution, target, delta)
    g0 = attribution(model, x, target)
    g1 = attribution(model, x + delta.to(x), target)
    diff = g1.double() - g0.double() - jd.double()
    return diff.reshape(x.shape[0], -1).norm(dim=1).cpu()
