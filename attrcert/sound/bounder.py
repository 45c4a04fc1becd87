"""SoundBounder: one model, attribution and ball; proved bounds per sample."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..attributions import Attribution, InputXGradient, IntegratedGradients, Saliency
from ..bounds import cosine_bound
from ..document import Record, finite_or_none
from ..errors import InputError, OptionError
from ..perturbation import Perturbation, l2_radius_factor
from .deviation import interval_bound, structured_bound
from .enclosures import Balls, HessianWeights, PassOptions, TorchRounding, fixed_tangents
from .graph import read_graph
from .hessian import HessianSum
from .intervals import REL, SUM_REL, TINY, mul, to_lohi
from .nodes import forward
from .pieces import CHUNK_BYTES, Centres, centres, chunk_size, run, weighted
from .pointpass import cheap_masks, telescope_at
from .rounding import model_rounding
from .telescope import eligible

MAX_D = 4096  # the mean-value bound forms d x d matrices; above this only ``interval`` runs
SPLITS = 4  # nested radii of the mean-value bound (saliency, input x gradient)
SPLITS_IG = 2  # integrated gradients: its m points already cost m pieces each


@dataclass
class SoundResult:
    """``T_e_sound`` and the bounds it is the minimum of (``None``: not available), and the
    label certificate: ``margin``, a lower bound on torch's ``f_y - max_{j != y} f_j`` over the
    ball (:mod:`.margin`; ``None``: one class)."""

    interval: float
    mean_value: float | None
    margin: float | None = None

    @property
    def value(self) -> float:
        return self.interval if self.mean_value is None else min(self.interval,
                                                                  self.mean_value)

    @property
    def method(self) -> str:
        return "interval" if self.mean_value is None or self.interval <= self.mean_value \
            else "mean_value"


def widen_by(box: tuple[Tensor, Tensor], w: Tensor | None) -> tuple[Tensor, Tensor]:
    """``[lo - w, hi + w]`` (``box`` itself when ``w`` is None)."""
    if w is None:
        return box
    return box[0] - w - REL * box[0].abs(), box[1] + w + REL * box[1].abs()


class SoundBounder:
    """Proved bounds for one model, attribution and ball (see :mod:`attrcert.sound`).

    The model is read once (:func:`.graph.read_graph`) and checked against its own forward
    pass on ``example``; :meth:`bound` then bounds one sample. ``splits``: the number ``K`` of
    nested radii (:mod:`.pieces`); by default ``SPLITS`` for saliency and input x gradient,
    ``SPLITS_IG`` for integrated gradients (whose ``m`` points already cost ``m`` pieces
    each).
    ``telescope``: use the telescoped cross terms (:mod:`.telescope`) where they apply (one
    centre: saliency and input x gradient). ``budget``: bytes the pieces enclosed at once
    may hold (the run's memory budget; at most :data:`.pieces.CHUNK_BYTES`).
    """

    def __init__(self, model: torch.nn.Module, example: Tensor, attribution: Attribution,
                 perturbation: Perturbation, *, splits: int | None = None,
                 telescope: bool = True, budget: int | None = None) -> None:
        if not isinstance(attribution, (Saliency, InputXGradient, IntegratedGradients)):
            raise OptionError(f"--sound supports saliency, input_x_gradient and "
                              f"integrated_gradients, not {attribution!r}")
        if not isinstance(model, torch.nn.Module):
            raise InputError("--sound needs a torch.nn.Module")
        self.graph = read_graph(model, example[:1])
        self.rounding = model_rounding(model, example)
        self.has_threshold = self.graph.has_threshold
        # a stop-gradient makes J_g no Hessian: only the interval bound is proved then
        self.mean_value = not self.graph.stops_gradient
        self.attribution = attribution
        self.splits = splits if splits is not None else (
            SPLITS_IG if isinstance(attribution, IntegratedGradients) else SPLITS)
        # the ball used: l-inf for p = inf; for 2 < p < inf the l2 ball of radius
        # d^(1/2 - 1/p) eps (Lemma 1, as Corollary 1), for 1 <= p <= 2 that of radius eps
        self.linf = math.isinf(perturbation.norm)
        self.q = 1.0 if self.linf else 2.0
        d = example[0].numel()
        self.d = d
        self.eps = perturbation.eps * (1.0 if self.linf
                                       else l2_radius_factor(d, perturbation.norm))
        self.chunk = chunk_size(self.graph, d, CHUNK_BYTES if budget is None
                                else min(CHUNK_BYTES, budget))
        self.fixed = fixed_tangents(self.graph, example[:1])
        # the telescoped cross terms are spectral (l2) bounds; for l-inf the entrywise ones
        # enter through ||R 1||, which they would not beat
        self.ups = eligible(self.graph) if telescope and not self.linf \
            and self.mean_value else {}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = forward(self.graph, example[:1].detach().to(torch.float64))
            theirs = model(example[:1]).detach().to(torch.float64)
        scale = float(theirs.abs().max()) + 1.0
        tol = 1e-9 if theirs.dtype == torch.float64 and example.dtype == torch.float64 \
            else 1e-4
        if ours.shape != theirs.shape or float((ours - theirs).abs().max()) > tol * scale:
            raise InputError("--sound could not read this model's graph faithfully (its "
                             "graph of operations does not reproduce the model's output)")

    @property
    def norm_used(self) -> str:
        return "inf" if self.linf else "2"

    def rounding_term(self, gsum: tuple[Tensor, Tensor], fb: Tensor, fp: Tensor,
                      gpoint: tuple[Tensor, Tensor], u0: Tensor | None, r: Tensor) -> float:
        """``sup ||g_hat(x_hat') - g(x')||_2 + ||g_hat(x) - g(x)||_2``: torch's rounding of the
        attribution over the ball and at ``x``, from ``fb``/``fp``, the bounds on that of its
        gradient factor (IG: of the mean over its points), and the factor's enclosures
        ``gsum`` (ball) and ``gpoint`` (``(centre, radius)``). Saliency: ``fb`` and ``fp``.
        ``g = u * G`` (input x gradient ``u = x``, IG ``u = x - b``): torch computes
        ``fl(fl(x_hat' - b) * G_hat)``, which errs from ``u' G`` by at most
        ``|r| (|G| + F) + (|u| + eps) F + 2.01 u_r (|u| + eps + |r|)(|G| + F)`` over the ball
        (``F`` the factor's bound, ``u_r`` the unit roundoff) and ``|u| F + 2.01 u_r |u|
        (|G| + F)`` at ``x``."""
        if u0 is None:
            eb, ep = fb, fp
        else:
            ur, eps, rr = self.rounding.u, self.eps, r.reshape(-1)
            gb = gsum[0].abs() + gsum[1] + fb
            gp = gpoint[0].abs() + gpoint[1] + fp
            span = u0.abs()
            eb = rr * gb + (span + eps) * fb + 2.01 * ur * (span + eps + rr) * gb
            ep = span * fp + 2.01 * ur * span * gp
        total = float(torch.linalg.vector_norm(eb) + torch.linalg.vector_norm(ep))
        return total * (1.0 + SUM_REL) + TINY

    def bound(self, x: Tensor, target: int) -> SoundResult:
        """Bounds on ``sup ||g_hat(x_hat') - g_hat(x)||_2`` for one sample ``x``
        ``(1, C, H, W)``, ``g_hat`` the attribution as torch computes it in the model's
        precision and ``x_hat'`` any float point for a point of the ball.

        Both bounds are proved for the exact function ``g`` (torch's, Softplus thresholds
        included), and the rounding term (:meth:`rounding_term`) is added. ``interval``
        encloses ``g`` itself over the ball. The mean-value bound (:mod:`.pieces`,
        :func:`.bounds.structured_bound`) is applied to the twin ``g_s`` of
        :func:`.enclosures.enclose` when the graph has a Softplus threshold, plus
        ``sup ||g - g_s||`` over the ball and at ``x``, which only the units whose interval
        straddles the threshold add to. The twin is decided by the whole ball's pass, or,
        with one centre and layers the telescope applies to (:mod:`.telescope`), by a cheap
        pass before the point pass, so that every pass encloses the same function.
        """
        x = x.detach().to(torch.float64)
        eps, d, k = self.eps, self.d, self.splits
        cen, u0, r = centres(self.attribution, x, eps, self.rounding.u)
        acc = HessianSum(d, x.device, track_a=u0 is not None) \
            if d <= MAX_D and self.mean_value else None
        balls = Balls(cen.z, cen.radius, self.q)
        common = PassOptions(fixed=self.fixed)
        masks = None
        if acc is not None and self.ups and cen.z.shape[0] == 1:
            # one centre: the telescoped cross terms, their point pass first (with the
            # twin's masks from a cheap pass over the ball, so that every pass shares them)
            if self.has_threshold:
                masks = cheap_masks(self.graph, balls, self.fixed)
            common = replace(common, telescope=telescope_at(
                self.graph, cen.z, self.q, target, self.ups, replace(common, twin=masks)))
        full = run(self.graph, balls, target, replace(
            common, hessian=None if acc is None else HessianWeights(acc, cen.hw / k, cen.hw / k),
            twin=masks, gap=self.has_threshold,
            rounding=TorchRounding(self.rounding, cen.e_ball, cen.e_point)), self.chunk)
        if masks is None and full.above:
            masks = full.above
        gsum = weighted(*full.grad, cen.gw / k)
        if acc is not None and k > 1:
            gsum = self._partial(target, cen, masks, acc, gsum, common)
        gap_b = gap_p = None
        if full.gap is not None and full.gap0 is not None:
            gap_b = weighted(full.gap, full.gap, cen.gw)[0]
            gap_p = weighted(full.gap0, full.gap0, cen.gw)[0]
        # torch's G: the twin's, within the gap
        gball = weighted(*widen_by(full.grad, full.gap), cen.gw)
        gpoint = weighted(*widen_by(full.grad0, full.gap0), cen.gw)
        assert full.round_ball is not None and full.round_point is not None
        fb = weighted(full.round_ball, full.round_ball, cen.gw)[0]
        fp = weighted(full.round_point, full.round_point, cen.gw)[0]
        if isinstance(self.attribution, IntegratedGradients):
            # torch's mean of m gradients: w_hat = fl(1/m), m products and a sum of m terms,
            # gamma_{m+2} times sum |G_hat_a| / m, plus the mean of the gradients' own errors
            gam = self.rounding.gamma(self.attribution.steps + 2)
            gb, gp = widen_by(full.grad, full.gap), widen_by(full.grad0, full.gap0)
            mags_b = gb[0].abs().maximum(gb[1].abs()) + full.round_ball
            mags_p = gp[0].abs().maximum(gp[1].abs()) + full.round_point
            fb = fb + gam * weighted(mags_b, mags_b, cen.gw)[0]
            fp = fp + gam * weighted(mags_p, mags_p, cen.gw)[0]
        scale: Tensor | float
        scale0: Tensor | float
        if u0 is None:  # saliency: g = G
            g, g0 = to_lohi(*gball), to_lohi(*gpoint)
            scale, scale0 = 1.0, 1.0
        else:  # g = u * G with u = x - b (IG) or x
            g = mul(u0 - eps, u0 + eps, *to_lohi(*gball))
            g0 = mul(u0, u0, *to_lohi(*gpoint))
            scale, scale0 = u0.abs() + eps, u0.abs()
        interval = interval_bound(g, g0)
        mean_value = None
        if acc is not None:
            mean_value = structured_bound(acc.finish(), gsum, u0, eps, self.linf)
            if gap_b is not None and gap_p is not None:
                mean_value += float(torch.linalg.vector_norm(scale * gap_b)
                                    + torch.linalg.vector_norm(scale0 * gap_p)) \
                    * (1.0 + 1e-10)
        extra = self.rounding_term(gball, fb, fp, gpoint, u0, r)
        grow = 1.0 + (x.numel() + 3) * 2.0 ** -52  # the float64 norm of the attack's deviation
        assert full.margin is not None  # the piece centred at x with radius eps is the last
        margin = float(full.margin[-1].min()) if full.margin.shape[1] > 1 else None
        return SoundResult((interval + extra) * grow,
                           None if mean_value is None else (mean_value + extra) * grow, margin)

    def _partial(self, target: int, cen: Centres, masks: dict[int, Tensor] | None,
                 acc: HessianSum, gsum: tuple[Tensor, Tensor],
                 common: PassOptions) -> tuple[Tensor, Tensor]:
        """The pieces at ``t_i = i / K < 1`` (the twin of the whole ball's pass: its masks
        hold on every smaller ball), added to ``acc``; ``gsum`` plus their weighted ``G``."""
        k = self.splits
        ts = torch.arange(1, k, dtype=torch.float64) / k
        z = cen.z.repeat(k - 1, *([1] * (cen.z.ndim - 1)))
        radius = (ts.view(-1, 1) * cen.radius.view(1, -1)).reshape(-1)
        h = (cen.hw / k).repeat(k - 1)
        t = (ts.view(-1, 1) * (cen.hw / k).view(1, -1)).reshape(-1)
        twin = None if masks is None else {
            key: v.repeat(k - 1, *([1] * (v.ndim - 1))) for key, v in masks.items()}
        enc = run(self.graph, Balls(z, radius, self.q), target,
                  replace(common, hessian=HessianWeights(acc, h, t), twin=twin), self.chunk)
        gw = (cen.gw / k).repeat(k - 1)
        c, rr = weighted(*enc.grad, gw)
        return gsum[0] + c, (gsum[1] + rr + SUM_REL * (gsum[0].abs() + c.abs())) \
            * (1.0 + SUM_REL)

    def jacobian(self, x: Tensor, target: int) -> Tensor:
        """``J_g(x)`` ``(d, d)`` by autograd through the float64 chain (the centre ``C``)."""
        from ..jacobian import attribution_jacobian

        def chain(t: Tensor) -> Tensor:
            return forward(self.graph, t)

        y = torch.tensor([target], device=x.device)
        return attribution_jacobian(self.attribution, chain, x, y)[0].detach()

    def update(self, x: Tensor, targets: Tensor, attr_norms: list[float],
               records: list[Record]) -> None:
        """Add ``T_e_sound``, ``T_e_sound_method``, ``T_c_sound``, ``T_c_sound_deg`` to each
        record of a batch (Corollary 2 applied to ``T_e_sound``), and the proved label
        certificate ``margin_lower`` (a lower bound on ``f_y - max_{j != y} f_j`` over the
        ball, torch's rounding included) with ``label_certified`` (``margin_lower > 0``)."""
        for i, rec in enumerate(records):
            res = self.bound(x[i:i + 1], int(targets[i]))
            cos = cosine_bound(res.value, attr_norms[i])
            rec.update({
                "T_e_sound": finite_or_none(res.value),
                "T_e_sound_method": res.method,
                "T_e_sound_interval": finite_or_none(res.interval),
                "T_e_sound_mean_value": finite_or_none(res.mean_value),
                "T_c_sound": finite_or_none(cos.distance),
                "T_c_sound_deg": finite_or_none(cos.degrees),
                "margin_lower": finite_or_none(res.margin),
                "label_certified": res.margin is not None and res.margin > 0.0,
            })
            if not self.mean_value:
                rec["warnings"].append(
                    "the model stops gradients (aten.detach): T_e_sound is the interval bound "
                    "(the attribution's Jacobian is no Hessian there), and T_e comes from "
                    "autograd's Jacobian, which treats detached values as constants, not from "
                    "the attribution's own derivative")

    @staticmethod
    def check_attack(records: list[Record]) -> None:
        """After an attack (``verify``): ``violation_sound`` is whether it beat ``T_e_sound``
        or went below ``margin_lower`` (the label attack's ``margin_hat``), which proved
        bounds must never allow (it would be a bug: a warning says so)."""
        for rec in records:
            hat, proved = rec.get("T_e_hat"), rec.get("T_e_sound")
            beaten = hat is not None and proved is not None and hat > proved
            low, found = rec.get("margin_lower"), rec.get("margin_hat")
            below = low is not None and found is not None and found < low
            rec["violation_sound"] = beaten or below
            if beaten or below:
                what = "T_e_sound" if beaten else "margin_lower"
                rec["warnings"].append(f"an attack beat the proved {what}: this is a bug in "
                                       "attrcert, please report it")
