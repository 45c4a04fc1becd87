"""The record of one smoothed image: the certificate's numbers and what they rest on."""

from __future__ import annotations

import math

from ..document import Record, finite_or_none
from .certificate import certify_cosine, tolerance_limits
from .options import LimitOptions, PixelOptions, SmoothingOptions
from .pixels import PixelCertificate

__all__ = ["PIXEL_ASSUMPTION", "SMOOTHING_ASSUMPTION", "smoothing_record"]

#: What ``cos_sim_lower`` and its companions rest on, stated in every record.
SMOOTHING_ASSUMPTION = (
    "probabilistic certificate of the smoothed attribution h(x) = E g(x + eta), eta uniform "
    "in the l2 ball of radius r, each g scaled or clipped to norm <= M; not of g itself: "
    "holds with probability >= 1 - alpha over the noise samples, for any model "
    "(docs/smoothing.md)")
#: What the pixel certificate rests on.
PIXEL_ASSUMPTION = (
    "probabilistic certificate of the Gaussian-smoothed top-k bin map (each pixel's most "
    "probable bin under noise N(0, sigma^2 I)), not of g's own bins: every certified pixel "
    "keeps its bin for all ||delta||_2 <= eps, all of them together with probability >= "
    "1 - alpha (Holm or Bonferroni over the pixels)")


def _pixel_fields(pixels: PixelOptions, cert: PixelCertificate) -> Record:
    return {
        "sigma": pixels.sigma,
        "top_k": list(pixels.top_k),
        "selection_samples": pixels.selection,
        "correction": pixels.correction,
        "pixel_tau": cert.tau,
        "certified_fraction": cert.fraction,
        "abstain_fraction": 1.0 - cert.fraction,
        "pixels": int(cert.certified.numel()),
        "certified_counts": cert.counts,
        "certified_top_fraction": cert.counts[-1] / max(1, int(cert.certified.numel())),
        "pixel_assumption": PIXEL_ASSUMPTION,
    }


def smoothing_record(*, sample: Record, method: str, options: SmoothingOptions, d: int,
                     attr_norm: float, h_norm: float, zero_attributions: int,
                     limits: LimitOptions | None, pixels: PixelOptions | None,
                     pixel_certificate: PixelCertificate | None) -> Record:
    """One image's record, after ``sample``'s fields (its index, target and prediction:
    :meth:`attrcert.run.Run.sample`).

    Fields: ``cos_sim_lower`` (the certified cosine, confidence ``confidence = 1 -
    alpha``), ``angle_deg`` (its angle), ``vacuous``, ``cos_to_estimate_lower`` (against
    the reported estimate ``h_hat`` instead of the true ``h``), ``deviation_bound`` (``M
    V_U / V_S``, a sure bound on ``||h(x + delta) - h(x)||``), ``volume_ratio``, ``h_norm``
    (``||h_hat||``), ``estimate_error`` and ``h_norm_lower`` (the concentration bound),
    ``radius``, ``samples``, ``M``, ``normalization``, ``eps``, ``d``, ``attr_norm``
    (``||g(x)||``), ``zero_attributions``; with a tolerance ``omega``, ``metric``,
    ``eps_max`` (``eps_max_unbounded``), ``radius_min``, ``radius_min_floor``; with pixels
    ``sigma``, ``top_k``, ``pixel_tau``, ``certified_fraction``, ``abstain_fraction``,
    ``certified_counts`` (per bin, 0 = outside the largest top-k), ``certified_top_fraction``
    (pixels certified in the most important bin), ``selection_samples``, ``correction``.
    """
    bound = options.bound
    cert = certify_cosine(h_norm, samples=options.samples, bound=bound, alpha=options.alpha,
                          eps=options.eps, radius=options.radius, d=d)
    warnings: list[str] = []
    rec: Record = {
        **sample,
        "method": method,
        "norm": "2",
        "eps": options.eps,
        "radius": options.radius,
        "samples": options.samples,
        "alpha": options.alpha,
        "confidence": 1.0 - options.alpha,
        "M": bound,
        "normalization": options.normalization,
        "d": d,
        "attr_norm": finite_or_none(attr_norm),
        "h_norm": cert.h_norm,
        "estimate_error": cert.estimate_error,
        "h_norm_lower": cert.h_norm_lower,
        "volume_ratio": cert.volume_ratio,
        "deviation_bound": cert.deviation_bound,
        "cos_sim_lower": cert.cos_sim_lower,
        "angle_deg": cert.angle_deg,
        "vacuous": cert.vacuous,
        "cos_to_estimate_lower": cert.cos_to_estimate_lower,
        "zero_attributions": zero_attributions,
        "assumption": SMOOTHING_ASSUMPTION,
        "certificate": "uniform smoothing, l2 (Wang & Kong 2024)",
        "attack_checked": False,
    }
    if cert.vacuous:
        warnings.append(
            f"vacuous: the smoothed attribution can move by up to {cert.deviation_bound:.3g} "
            f"(M V_U/V_S), not less than its certified norm {cert.h_norm_lower:.3g}: use a "
            "larger --radius, a smaller --eps or more --samples")
    if zero_attributions:
        warnings.append(f"{zero_attributions} of {options.samples} noisy copies had a zero "
                        "attribution (counted as 0 in h)")
    if limits is not None:
        lim = tolerance_limits(cert.h_norm_lower, bound=bound, eps=options.eps,
                               radius=options.radius, d=d, omega=limits.omega,
                               metric=limits.metric)
        rec.update({"omega": limits.omega, "metric": limits.metric, "eps_max": lim.eps_max,
                    "eps_max_unbounded": lim.eps_max is None,
                    "radius_min": lim.radius_min, "radius_min_floor": lim.radius_min_floor})
    if pixels is not None and pixel_certificate is not None:
        rec.update(_pixel_fields(pixels, pixel_certificate))
        if not pixel_certificate.attainable:
            rest = options.samples - pixels.selection
            needed = pixels.selection + _needed(pixel_certificate, options.alpha, rest)
            warnings.append(
                f"no pixel can be certified: {rest} test samples cannot show a bin "
                f"probability above tau = {pixel_certificate.tau:.3g} at alpha / pixels; use "
                f"more --samples (at least {needed}) "
                "or a larger --sigma")
    rec["warnings"] = warnings
    return rec


def _needed(cert: PixelCertificate, alpha: float, rest: int) -> int:
    """Test samples for which ``tau^n <= alpha / P``, plus the selection ones."""
    p = int(cert.certified.numel())
    if cert.tau >= 1.0:
        return rest
    return math.ceil(math.log(alpha / p) / math.log(cert.tau))
