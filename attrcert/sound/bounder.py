"""SoundBounder: one model, attribution and ball; proved bounds per sample."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..attributions import Attribution, InputXGradient, IntegratedGradients, Saliency
from ..bounds import cosine_bound
from ..errors import InputError, OptionError
from ..perturbation import Perturbation, l2_radius_factor
from ..results import Record, finite_or_none
from .bounds import diag_plus, interval_bound, mean_value_bound, structured_bound
from .enclosures import Enclosure, enclose
from .graph import extract_chain
from .intervals import REL, SUM_REL, TINY, mul, mul_cr, to_cr, to_lohi
from .layers import forward
from .rounding import model_rounding
from .structured import Structured, add_scaled, add_term, round_sums

MAX_D = 4096  # the mean-value bound forms d x d matrices; above this only ``interval`` runs


@dataclass
class SoundResult:
    """``T_e_sound`` and the bounds it is the minimum of (``None``: not available)."""

    interval: float
    mean_value: float | None

    @property
    def value(self) -> float:
        return self.interval if self.mean_value is None else min(self.interval,
                                                                  self.mean_value)

    @property
    def method(self) -> str:
        return "interval" if self.mean_value is None or self.interval <= self.mean_value \
            else "mean_value"


class _Sums:
    """Running sums of centre/radius vectors and of their magnitudes (integrated
    gradients' ``m`` points): a float64 sum of ``m`` terms errs by at most ``SUM_REL`` times
    the sum of their magnitudes."""

    def __init__(self) -> None:
        self.parts: dict[str, list[Tensor]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.parts

    def add(self, key: str, cr: tuple[Tensor, Tensor]) -> None:
        c, r = cr
        acc = self.parts.setdefault(key, [torch.zeros_like(c)] * 3)
        self.parts[key] = [acc[0] + c, acc[1] + r, acc[2] + c.abs() + r]

    def total(self, key: str, scale: float) -> tuple[Tensor, Tensor]:
        c, r, mag = self.parts[key]
        return c * scale, (r + SUM_REL * mag) * scale * (1.0 + 1e-12) + TINY


class SoundBounder:
    """Proved bounds for one model, attribution and ball (see the module docstring).

    The model is read once (:func:`extract_chain`) and checked against its own forward pass
    on ``example``; ``bound(x, target, jac_center)`` then bounds one sample.
    """

    def __init__(self, model: torch.nn.Module, example: Tensor, attribution: Attribution,
                 perturbation: Perturbation) -> None:
        if not isinstance(attribution, (Saliency, InputXGradient, IntegratedGradients)):
            raise OptionError(f"--sound supports saliency, input_x_gradient and "
                              f"integrated_gradients, not {attribution!r}")
        if not isinstance(model, torch.nn.Module):
            raise InputError("--sound needs a torch.nn.Module")
        self.layers = extract_chain(model, example[:1])
        self.rounding = model_rounding(model, example)
        self.has_threshold = any(la.act is not None and la.act.threshold is not None
                                 for la in self.layers)
        self.attribution = attribution
        # the ball used: l-inf for p = inf; for 2 < p < inf the l2 ball of radius
        # d^(1/2 - 1/p) eps (Lemma 1, as Corollary 1), for 1 <= p <= 2 that of radius eps
        self.linf = math.isinf(perturbation.norm)
        self.q = 1.0 if self.linf else 2.0
        d = example[0].numel()
        self.eps = perturbation.eps * (1.0 if self.linf
                                       else l2_radius_factor(d, perturbation.norm))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = forward(self.layers, example[:1].detach().to(torch.float64))
            theirs = model(example[:1]).detach().to(torch.float64)
        scale = float(theirs.abs().max()) + 1.0
        tol = 1e-9 if theirs.dtype == torch.float64 and example.dtype == torch.float64 \
            else 1e-4
        if ours.shape != theirs.shape or float((ours - theirs).abs().max()) > tol * scale:
            raise InputError("--sound could not read this model's graph faithfully (its "
                             "chain of layers does not reproduce the model's output)")

    @property
    def norm_used(self) -> str:
        return "inf" if self.linf else "2"

    def _pair(self, z: Tensor, radius: float, target: int, hessian: bool, defer: bool,
              e0: tuple[Tensor, Tensor]) -> tuple[Enclosure, Enclosure]:
        """The enclosure of torch's ``f`` (with its rounding) and the one the mean-value
        bound uses: ``f`` itself, or its twin where a Softplus threshold is in the chain."""
        enc = enclose(self.layers, z, radius, self.q, target,
                      hessian=hessian and not self.has_threshold, defer_first=defer,
                      rounding=self.rounding, e0=e0)
        if not (hessian and self.has_threshold):
            return enc, enc
        twin = enclose(self.layers, z, radius, self.q, target, hessian=True,
                       defer_first=defer, twin_above=enc.above)
        return enc, twin

    def _gather(self, x: Tensor, target: int, hessian: bool
                ) -> tuple[Enclosure, Enclosure, Tensor | None, Tensor]:
        """Enclosures of the gradient factor ``G`` of the attribution (IG: ``mean_a G(z_a)``,
        ``H``: ``sum_a (a/m^2) Hess f_y(z_a)``) for torch's function and for the twin, ``u0``
        (``x``, ``x - b``, or None) and ``r``, the bound on ``|x_hat' - x'|`` (the attack's
        float point against the ball point it stands for: ``u (|x| + 3.01 eps)``)."""
        eps, att, u = self.eps, self.attribution, self.rounding.u
        r = (u * (x.abs() + 3.01 * eps)) * (1.0 + REL)
        zero = torch.zeros_like(x)
        if not isinstance(att, IntegratedGradients):
            enc, twin = self._pair(x, eps, target, hessian, False, (r, zero))
            return enc, twin, (x.reshape(-1) if isinstance(att, InputXGradient) else None), r
        base = att.baseline_for(x).to(torch.float64)
        m = att.steps
        acc_t, acc_s = _Sums(), _Sums()
        ok = True
        st_sum: Structured | None = None
        wsum: list[Tensor] | None = None
        first_tangent: tuple[Tensor, Tensor] | None = None
        span = (x - base).abs()
        for a in range(1, m + 1):
            alpha = a / m
            # the float path point b + alpha (x_hat - b), each operation rounded
            e_ball = alpha * r + 5.0 * u * (base.abs() + alpha * (span + eps + r))
            e_point = 5.0 * u * (base.abs() + alpha * span)
            enc, tw = self._pair(base + alpha * (x - base), alpha * eps, target, hessian,
                                 True, (e_ball, e_point))
            if tw.first is not None:  # sum_a (a/m^2) w_a, and sum |terms| for its rounding
                tcm, trm, wc, wr = tw.first
                wsum = [wc * (alpha / m), wr * (alpha / m), (wc.abs() + wr) * (alpha / m)] \
                    if wsum is None else [wsum[0] + wc * (alpha / m), wsum[1] + wr * (alpha / m),
                                          wsum[2] + (wc.abs() + wr) * (alpha / m)]
                first_tangent = (tcm, trm)
            ok = ok and tw.mvt_ok
            if tw.struct is not None:  # weight a/m^2; sums of m terms: rounding SUM_REL
                st_sum = add_scaled(st_sum, tw.struct, alpha / m)
            acc_t.add("g", to_cr(*enc.grad))
            acc_t.add("g0", to_cr(*enc.grad0))
            acc_s.add("g", to_cr(*tw.grad))
            acc_s.add("g0", to_cr(*tw.grad0))
            for key, val in (("gap", enc.gap), ("gap0", enc.gap0), ("rb", enc.round_ball),
                             ("rp", enc.round_point)):
                if val is not None:
                    acc_t.add(key, (torch.zeros_like(val), val))
            assert enc.round_ball is not None and enc.round_point is not None
            for key, g, rnd in (("mb", enc.grad, enc.round_ball),
                                ("mp", enc.grad0, enc.round_point)):
                acc_t.add(key, (torch.zeros_like(rnd),
                                torch.maximum(g[0].abs(), g[1].abs()) + rnd))
        if st_sum is not None and wsum is not None and first_tangent is not None:
            add_term(st_sum, *first_tangent, wsum[0],
                     wsum[1] * (1.0 + SUM_REL) + SUM_REL * wsum[2] + TINY)
        hess = None
        if st_sum is not None:  # the accumulated sums' rounding: <= SUM_REL of the magnitude
            round_sums(st_sum)
            hess = (st_sum.c, st_sum.r + st_sum.q)
        # torch's mean of m gradients: w_hat = fl(1/m), m products and a sum of m terms,
        # gamma_{m+2} times sum |G_hat_a| / m, plus the mean of the gradients' own errors
        gam = self.rounding.gamma(m + 2)
        rb = acc_t.total("rb", 1.0 / m)[1] + gam * acc_t.total("mb", 1.0 / m)[1]
        rp = acc_t.total("rp", 1.0 / m)[1] + gam * acc_t.total("mp", 1.0 / m)[1]
        enc = Enclosure(to_lohi(*acc_t.total("g", 1.0 / m)),
                        to_lohi(*acc_t.total("g0", 1.0 / m)), None, ok,
                        acc_t.total("gap", 1.0 / m)[1] if "gap" in acc_t else None,
                        acc_t.total("gap0", 1.0 / m)[1] if "gap0" in acc_t else None,
                        round_ball=rb * (1.0 + REL), round_point=rp * (1.0 + REL))
        twin = Enclosure(to_lohi(*acc_s.total("g", 1.0 / m)),
                         to_lohi(*acc_s.total("g0", 1.0 / m)), hess, ok, struct=st_sum)
        return enc, twin, (x - base).reshape(-1), r

    def rounding_term(self, enc: Enclosure, u0: Tensor | None, r: Tensor) -> float:
        """``sup ||g_hat(x_hat') - g(x')||_2 + ||g_hat(x) - g(x)||_2``: torch's rounding of the
        attribution over the ball and at ``x`` (:func:`rounding_error` bounds that of the
        gradient factor, ``enc.round_ball``/``round_point``; IG: of the mean over its points).
        Saliency: those. ``g = u * G`` (input x gradient ``u = x``, IG ``u = x - b``): torch
        computes ``fl(fl(x_hat' - b) * G_hat)``, which errs from ``u' G`` by at most
        ``|r| (|G| + F) + (|u| + eps) F + 2.01 u_r (|u| + eps + |r|)(|G| + F)`` over the ball
        (``F`` the factor's bound, ``u_r`` the unit roundoff) and ``|u| F + 2.01 u_r |u| (|G| +
        F)`` at ``x``."""
        assert enc.round_ball is not None and enc.round_point is not None
        fb, fp = enc.round_ball, enc.round_point
        if u0 is None:
            eb, ep = fb, fp
        else:
            ur, eps, rr = self.rounding.u, self.eps, r.reshape(-1)
            gb = torch.maximum(enc.grad[0].abs(), enc.grad[1].abs()) + fb
            gp = torch.maximum(enc.grad0[0].abs(), enc.grad0[1].abs()) + fp
            span = u0.abs()
            eb = rr * gb + (span + eps) * fb + 2.01 * ur * (span + eps + rr) * gb
            ep = span * fp + 2.01 * ur * span * gp
        total = float(torch.linalg.vector_norm(eb) + torch.linalg.vector_norm(ep))
        return total * (1.0 + SUM_REL) + TINY

    def bound(self, x: Tensor, target: int, jac_center: Tensor | None = None) -> SoundResult:
        """Bounds on ``sup ||g_hat(x_hat') - g_hat(x)||_2`` for one sample ``x``
        ``(1, C, H, W)``, ``g_hat`` the attribution as torch computes it in the model's
        precision and ``x_hat'`` any float point for a point of the ball.

        Both bounds are proved for the exact function ``g`` (torch's, Softplus thresholds
        included) and then the rounding term (:meth:`rounding_term`) is added.
        ``interval`` encloses ``g`` itself. The mean-value bound is applied to the twin
        ``g_s`` of :func:`enclose` when the chain has a Softplus threshold (the identity on
        the units whose interval lies above it, the smooth twin elsewhere), plus
        ``sup ||g - g_s||`` over the ball and at ``x`` (``Enclosure.gap``), which only the
        units whose interval straddles the threshold add to.
        ``jac_center``: another centre ``C`` to try, e.g. ``J_g(x)`` (any matrix is valid);
        the enclosure's own centre ``Mc`` is always tried, and since ``J_g(x)`` lies in
        ``[Mc - R, Mc + R]`` with ``R = O(eps)`` that bound already tends to ``T_e``.
        """
        x = x.detach().to(torch.float64)
        eps = self.eps
        hessian = x[0].numel() <= MAX_D
        enc, smooth, u0, r = self._gather(x, target, hessian)
        if u0 is None:  # saliency: g = G, J_g = H
            g, g0 = enc.grad, enc.grad0
            jac = smooth.hess
            scale, scale0 = 1.0, 1.0
        else:  # g = u * G with u = x - b (IG) or x, du/dx = I: J_g = diag(G) + diag(u) H
            ub = (u0 - eps, u0 + eps)
            g = mul(*ub, *enc.grad)
            g0 = mul(u0, u0, *enc.grad0)
            jac = None
            if smooth.hess is not None:
                jac = diag_plus(mul_cr(ub[0].view(-1, 1), ub[1].view(-1, 1), *smooth.hess),
                                 smooth.grad)
            scale, scale0 = u0.abs() + eps, u0.abs()
        interval = interval_bound(g, g0)
        mean_value = None
        if jac is not None and smooth.mvt_ok:
            centers = [jac[0]] + ([] if jac_center is None
                                  else [jac_center.to(torch.float64).cpu()])
            mean_value = min(mean_value_bound(jac, c, eps, self.linf) for c in centers)
            if smooth.struct is not None:
                mean_value = min(mean_value, structured_bound(
                    smooth.struct, smooth.grad, u0, eps, self.linf))
            if smooth is not enc and enc.gap is not None and enc.gap0 is not None:
                mean_value += float(torch.linalg.vector_norm(scale * enc.gap)
                                    + torch.linalg.vector_norm(scale0 * enc.gap0)) \
                    * (1.0 + 1e-10)
        extra = self.rounding_term(enc, u0, r)
        grow = 1.0 + (x.numel() + 3) * 2.0 ** -52  # the float64 norm of the attack's deviation
        return SoundResult((interval + extra) * grow,
                           None if mean_value is None else (mean_value + extra) * grow)

    def jacobian(self, x: Tensor, target: int) -> Tensor:
        """``J_g(x)`` ``(d, d)`` by autograd through the float64 chain (the centre ``C``)."""
        from ..jacobian import attribution_jacobian

        def chain(t: Tensor) -> Tensor:
            return forward(self.layers, t)

        y = torch.tensor([target], device=x.device)
        return attribution_jacobian(self.attribution, chain, x, y)[0].detach()

    def update(self, x: Tensor, targets: Tensor, attr_norms: list[float],
               records: list[Record], jac_centers: list[Tensor | None] | None = None) -> None:
        """Add ``T_e_sound``, ``T_e_sound_method``, ``T_c_sound``, ``T_c_sound_deg`` to each
        record of a batch (Corollary 2 applied to ``T_e_sound``)."""
        for i, rec in enumerate(records):
            res = self.bound(x[i:i + 1], int(targets[i]),
                             None if jac_centers is None else jac_centers[i])
            cos = cosine_bound(res.value, attr_norms[i])
            rec.update({
                "T_e_sound": finite_or_none(res.value),
                "T_e_sound_method": res.method,
                "T_e_sound_interval": finite_or_none(res.interval),
                "T_e_sound_mean_value": finite_or_none(res.mean_value),
                "T_c_sound": finite_or_none(cos.distance),
                "T_c_sound_deg": finite_or_none(cos.degrees),
            })

    @staticmethod
    def check_attack(records: list[Record]) -> None:
        """After an attack (``verify``): ``violation_sound`` is whether it beat ``T_e_sound``,
        which a proved bound must never allow (it would be a bug: a warning says so)."""
        for rec in records:
            hat, proved = rec.get("T_e_hat"), rec.get("T_e_sound")
            beaten = hat is not None and proved is not None and hat > proved
            rec["violation_sound"] = beaten
            if beaten:
                rec["warnings"].append("an attack exceeded the proved bound T_e_sound: this "
                                       "is a bug in attrcert, please report it")
