"""The figures of ``attrcert smooth --report`` (matplotlib, Agg backend), drawn from the
records and :class:`~attrcert.smoothing.SmoothedSample` s of a run. Imported only by
:func:`attrcert.report.smooth_html.write_smoothing_report`.

Units: eps and r in the pixel units of the images as loaded ([0, 1]); attributions in
the model's logit units (saliency: per pixel unit); the smoothed attribution ``h`` in units
of ``M`` (1 when attributions are scaled to unit norm).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; set before pyplot is imported
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap

from ..document import Record
from ..smoothing import SmoothedSample, certify_cosine
from ..writing import write_bytes

__all__ = ["certified_fraction_figure", "cosine_curve_figure", "smoothed_sample_figure"]

DPI = 100
STYLE: Any = {"font.size": 12, "axes.titlesize": 12, "figure.titlesize": 13,
         "legend.fontsize": 10}
ABSTAIN_COLOR = (0.75, 0.75, 0.75, 1.0)


def _save(fig: plt.Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def _plane(a: np.ndarray) -> np.ndarray:
    return a[0] if a.shape[0] == 1 else a.sum(0)


def _signed(fig: plt.Figure, ax: plt.Axes, a: np.ndarray, title: str, label: str) -> None:
    scale = float(max(np.abs(a).max(), 1e-12))
    im = ax.imshow(a, cmap="RdBu_r", vmin=-scale, vmax=scale)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(label)


def bin_colors(levels: int) -> ListedColormap:
    """Abstain (grey), then bins 0 .. levels - 1 from dark (outside every top-k) to bright
    (the smallest top-k, the most important pixels)."""
    ramp = plt.get_cmap("inferno")(np.linspace(0.05, 0.95, levels))
    return ListedColormap([ABSTAIN_COLOR, *ramp])


def smoothed_sample_figure(sample: SmoothedSample, record: Record, path: Path) -> None:
    """Image, ``g(x)``, ``h_hat(x)`` and, with pixel certificates, the bins of ``g(x)`` and
    the certified bin map (grey: abstain)."""
    with plt.rc_context(STYLE):
        pixels = sample.certified is not None and sample.clean_bins is not None
        panels = 5 if pixels else 3
        fig, axes = plt.subplots(1, panels, figsize=(3.7 * panels, 3.9), layout="constrained")
        image = sample.image.numpy()
        if image.shape[0] == 3:
            axes[0].imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
        else:
            axes[0].imshow(image[0], cmap="gray", vmin=0, vmax=1)
        axes[0].set_title(f"{record['source']}\npredicted {record['predicted']}, "
                          f"target {record['target']}")
        unit = "logit" if record["method"] != "saliency" else "logit per pixel unit"
        _signed(fig, axes[1], _plane(sample.attribution.numpy()),
                f"attribution g(x)\n||g|| = {record['attr_norm']:.3g}", f"g ({unit})")
        _signed(fig, axes[2], _plane(sample.smoothed.numpy()),
                f"smoothed h^(x), n = {record['samples']}\n||h^|| = {record['h_norm']:.3g} "
                f"(M = {record['M']:g})", "h^ (units of M)")
        if pixels:
            assert sample.certified is not None and sample.clean_bins is not None
            levels = len(record["top_k"]) + 1
            cmap = bin_colors(levels)
            norm = BoundaryNorm(np.arange(-1.5, levels), cmap.N)
            axes[3].imshow(sample.clean_bins.numpy(), cmap=cmap, norm=norm)
            axes[3].set_title(f"bins of g(x): top {', '.join(f'{k:g}' for k in record['top_k'])}%")
            im = axes[4].imshow(sample.certified.numpy(), cmap=cmap, norm=norm)
            share = 100 * record["certified_fraction"]
            axes[4].set_title(f"certified bins, sigma = {record['sigma']:g}\n"
                              f"{share:.1f}% certified (grey: abstain)")
            bar = fig.colorbar(im, ax=axes[4], fraction=0.046, pad=0.04,
                               ticks=np.arange(-1, levels))
            bar.ax.set_yticklabels(["abstain", "outside", *[f"top {k:g}%" for k in
                                                             record["top_k"]]])
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{record['source']}: cos(h(x + delta), h(x)) >= "
                     f"{record['cos_sim_lower']:.4g} for ||delta||_2 <= {record['eps']:g} "
                     f"(r = {record['radius']:g}, confidence {record['confidence']:g})")
        _save(fig, path)


def cosine_curve(record: Record, eps: np.ndarray) -> np.ndarray:
    """The certified cosine of one record at each ``eps`` (same estimate, same confidence:
    the certificate is closed-form in eps)."""
    return np.array([certify_cosine(record["h_norm"], samples=record["samples"],
                                    bound=record["M"], alpha=record["alpha"], eps=float(e),
                                    radius=record["radius"], d=record["d"]).cos_sim_lower
                     for e in eps])


def cosine_curve_figure(records: Sequence[Record], path: Path, points: int = 41) -> None:
    """``cos_sim_lower`` against eps for every sample, from 0 to twice the run's eps."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
        top = 2.0 * max(float(r["eps"]) for r in records)
        eps = np.linspace(0.0, top, points)
        curves = np.stack([cosine_curve(r, eps) for r in records])
        for curve in curves:
            ax.plot(eps, curve, color="tab:blue", alpha=0.35, linewidth=1)
        ax.plot(eps, curves.mean(0), color="tab:blue", linewidth=2.5, label="mean over samples")
        run_eps = float(records[0]["eps"])
        ax.axvline(run_eps, color="black", linestyle="--", linewidth=1,
                   label=f"the run's eps = {run_eps:g}")
        ends = [r["eps_max"] for r in records if r.get("eps_max") is not None]
        if ends:
            ax.scatter(ends, [1.0 - r["omega"] if r["metric"] == "cosine" else np.nan
                              for r in records if r.get("eps_max") is not None],
                       marker="x", color="tab:red", zorder=3, label="eps_max (cosine tolerance)")
        ax.set_xlabel("eps (l2 radius of the perturbation, pixel units)")
        ax.set_ylabel("certified lower bound on cos(h(x + delta), h(x))")
        ax.set_ylim(-1.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
        ax.set_title(f"certified cosine against eps (r = {records[0]['radius']:g}, "
                     f"n = {records[0]['samples']}, confidence {records[0]['confidence']:g}; "
                     "-1: vacuous)")
        _save(fig, path)


def certified_fraction_figure(records: Sequence[Record], path: Path) -> None:
    """Per sample, the share of pixels certified in each bin and the share that abstain."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(records) + 3), 4.8),
                               layout="constrained")
        levels = len(records[0]["top_k"]) + 1
        cmap = bin_colors(levels)
        names = ["outside", *[f"top {k:g}%" for k in records[0]["top_k"]]]
        x = np.arange(len(records))
        bottom = np.zeros(len(records))
        for level in range(levels):
            share = np.array([r["certified_counts"][level] / r["pixels"] for r in records])
            ax.bar(x, share, bottom=bottom, color=cmap(level + 1), label=names[level])
            bottom += share
        ax.bar(x, 1.0 - bottom, bottom=bottom, color=ABSTAIN_COLOR, label="abstain")
        ax.set_xticks(x, [str(r["source"]) for r in records], rotation=60, ha="right")
        ax.set_ylabel("share of the image's pixels")
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title(f"certified pixels per bin (sigma = {records[0]['sigma']:g}, "
                     f"eps = {records[0]['eps']:g}, {records[0]['correction']})")
        _save(fig, path)
