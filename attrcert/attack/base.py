"""The base of the attacks on attributions: what an attack returns, how it is scored, and
the projected-ascent loop every attack shares (docs/math.md §6).

An attack solves (approximately) the paper's Eq. 1 with its label constraint::

    max_{||delta||_p <= eps}  D(g(x + delta), g(x))   s.t.  argmax f(x + delta) = argmax f(x)

for a batch ``x`` ``(N, C, H, W)``, ``g = attribution(model, x, target)`` of the same shape
and ``D`` the attack's objective. :class:`AttributionAttack` runs the loop; a subclass
defines the ball (:meth:`~AttributionAttack.random_start`, :meth:`~AttributionAttack.direction`,
:meth:`~AttributionAttack.project`) and the objective. Results are compared with
:func:`attribution_metrics` (``||g - g0||_2`` and ``1 - cos``, float64).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from ..attributions import Attribution, Model, resolve_target, summed

__all__ = [
    "SCHEDULES",
    "TINY",
    "AttackResult",
    "AttributionAttack",
    "Target",
    "angle_degrees",
    "attribution_metrics",
    "lp_norm",
    "per_sample",
    "select_per_sample",
]

SCHEDULES = ("cosine", "step", "constant")
#: Floor of every denominator (norms, masses): a zero attribution divides by this, not by 0.
TINY = 1e-30
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
        runs: for :func:`attrcert.attack.attack`, the result of each attack it ran, by name.

    For a single attack all fields describe the returned ``delta``. For
    :func:`attrcert.attack.attack`, ``deviation``, ``cosine_distance`` and ``angle_deg``
    are maxima over its runs, each maximised separately, and ``delta``, ``label_kept``,
    ``norm`` belong to the run with the largest deviation (or cosine distance).
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
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(TINY)
    return deviation, 1.0 - cos.clamp(-1.0, 1.0)


def angle_degrees(cosine_distance: Tensor) -> Tensor:
    """``degrees(arccos(1 - cosine_distance))``, the cosine clamped to [-1, 1]."""
    return torch.rad2deg(torch.arccos((1.0 - cosine_distance).clamp(-1.0, 1.0)))


def per_sample(t: Tensor, like: Tensor) -> Tensor:
    """``t`` ``(N,)`` viewed as ``(N, 1, ..., 1)`` to scale or mask ``like`` sample by sample."""
    return t.view(-1, *([1] * (like.ndim - 1)))


def lp_norm(delta: Tensor, p: float) -> Tensor:
    """``||delta_n||_p`` per sample, float64 ``(N,)``."""
    return torch.linalg.vector_norm(delta.detach().reshape(delta.shape[0], -1).double(),
                                    ord=p, dim=1)


def select_per_sample(mask: Tensor, a: AttackResult, b: AttackResult) -> AttackResult:
    """Per sample: ``a`` where ``mask`` (``(N,)`` bool, CPU) else ``b``."""
    out: dict[str, Tensor] = {}
    for f in fields(AttackResult):
        if f.name == "runs":
            continue
        va, vb = getattr(a, f.name), getattr(b, f.name)
        out[f.name] = torch.where(per_sample(mask.to(va.device), va), va, vb)
    return AttackResult(**out)  # type: ignore[arg-type]  # every field but runs is a Tensor


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

    Shapes: ``x`` ``(N, C, H, W)``, ``target`` ``(N,)`` (or one int); the result's ``delta``
    is shaped like ``x`` (its dtype and device), its other fields are ``(N,)`` on the CPU.
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
        points_per_pass: int | None = None,
    ) -> AttackResult:
        """Attack the attribution of ``x`` ``(N, C, H, W)`` for classes ``target`` ``(N,)``.

        Args:
            model: classifier returning logits ``(N, k)``, in eval mode, same dtype as ``x``.
            x: the inputs.
            attribution: the method ``g``.
            target: class per sample (default: the predictions).
            start: an initial ``delta`` for the first restart instead of a random one
                (projected into the ball), e.g. a worst case of the linear model.
            points_per_pass: the attribution's points (integrated gradients' Riemann
                points) whose graph may be held at once for the whole batch (``None``: all
                of them). Fewer: each step takes ``g`` segment by segment without a graph,
                the objective's gradient ``w = dD/dg`` on that sum, then ``J^T w =
                sum_s J_s^T w`` one segment's graph at a time (each point's forward pass
                twice per step); the same ascent up to rounding.
        """
        x = x.detach()
        target = resolve_target(model, x, target)
        with torch.no_grad():
            reference = model(x).argmax(1)
        pieces = attribution.in_passes(points_per_pass)
        g0 = summed(pieces, model, x, target)
        context = self.prepare(g0)
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        best: AttackResult | None = None
        best_score: Tensor | None = None
        for r in range(self.restarts):
            init = start.to(x) if (start is not None and r == 0) \
                else self.random_start(x, generator)
            result, score = self._run(model, x, pieces, target, g0, reference, context, init)
            if best is None or best_score is None:
                best, best_score = result, score
            else:
                better = score > best_score
                best = select_per_sample(better, result, best)
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
            delta = torch.where(per_sample(flipped, delta), 0.5 * delta, delta)
        with torch.no_grad():
            flipped = model(x + delta).argmax(1) != reference
        return torch.where(per_sample(flipped, delta), torch.zeros_like(delta), delta)

    def _factor(self, t: int) -> float:
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t / max(1, self.steps)))
        if self.schedule == "step":
            return 1.0 if t < self.steps // 2 else 0.5 if t < (3 * self.steps) // 4 else 0.25
        return 1.0

    def _value_and_gradient(self, model: Model, x: Tensor, pieces: list[Attribution],
                            target: Tensor, g0: Tensor, context: object,
                            need_grad: bool) -> tuple[Tensor, Tensor | None]:
        """``g(x)`` (detached) and, if ``need_grad``, ``grad_x sum_n D_n = J^T (dD/dg)``.

        One piece: ``g`` in its graph and one backward pass of the objective. Several
        (:meth:`~attrcert.attributions.Attribution.in_passes`): ``g = sum_s g_s`` without
        graphs, ``w = dD/dg`` at that sum, then ``sum_s J_s^T w``, one segment's graph at a
        time."""
        if len(pieces) == 1:
            x_adv = x.detach().requires_grad_(need_grad)
            g = pieces[0](model, x_adv, target, create_graph=need_grad)
            if not need_grad:
                return g.detach(), None
            obj = self.objective(g, g0, context)
            if not obj.requires_grad:  # g does not depend on x: nothing to follow
                return g.detach(), torch.zeros_like(x)
            (grad,) = torch.autograd.grad(obj.sum(), x_adv, materialize_grads=True)
            return g.detach(), grad.detach()
        g = summed(pieces, model, x, target)
        if not need_grad:
            return g, None
        leaf = g.clone().requires_grad_(True)
        obj = self.objective(leaf, g0, context)
        grad = torch.zeros_like(x)
        if not obj.requires_grad:
            return g, grad
        (w,) = torch.autograd.grad(obj.sum(), leaf, materialize_grads=True)
        for piece in pieces:
            x_adv = x.detach().requires_grad_(True)
            part = piece(model, x_adv, target, create_graph=True)
            if part.requires_grad:
                (vjp,) = torch.autograd.grad(part, x_adv, grad_outputs=w.to(part),
                                             materialize_grads=True)
                grad += vjp.detach()
            del part
        return g, grad

    def _run(
        self, model: Model, x: Tensor, pieces: list[Attribution], target: Tensor, g0: Tensor,
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
            g, grad = self._value_and_gradient(model, x + delta, pieces, target, g0, context,
                                               need_grad=not last)
            dev, cos = attribution_metrics(g, g0)
            dev, cos = dev.cpu(), cos.cpu()
            score = self.score(dev, cos)
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            best_dev = torch.where(better, dev, best_dev)
            best_cos = torch.where(better, cos, best_cos)
            best_delta = torch.where(per_sample(better.to(x.device), delta), delta, best_delta)
            if last or grad is None:
                break
            del g
            step = per_sample(alpha * self._factor(t), delta) * self.direction(grad)
            candidate = self._admissible(x, delta + step)
            if self.label_constraint:
                with torch.no_grad():
                    kept = model(x + candidate).argmax(1) == reference
                candidate = torch.where(per_sample(kept, delta), candidate, delta)
                alpha = torch.where(kept, alpha, 0.5 * alpha)
            delta = candidate.detach()
        result = AttackResult(
            delta=best_delta,
            deviation=best_dev,
            cosine_distance=best_cos,
            angle_deg=angle_degrees(best_cos),
            label_kept=torch.ones(n, dtype=torch.bool),  # set by __call__
            norm=lp_norm(best_delta, self.p).cpu(),
        )
        return result, best_score

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps}, steps={self.steps}, "
                f"restarts={self.restarts}, step_size={self.step_size:.4g}, "
                f"schedule={self.schedule!r})")
