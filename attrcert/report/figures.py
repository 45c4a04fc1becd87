"""The report's figures (matplotlib, Agg backend), drawn from the views of
:mod:`attrcert.report.compute`. Imported only by :func:`attrcert.report.html.write_report`:
the rest of attrcert works without matplotlib.

Every figure states its units: eps and pixel values are in the pixel units of the images
as loaded ([0, 1]); attributions in the units of the model's logit (IG and input x
gradient) or logit per pixel unit (saliency).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")  # no display; set before pyplot is imported
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.ticker import MaxNLocator

from ..document import Record
from ..perturbation import norm_label
from ..writing import write_bytes
from .compute import JacobianView, SampleView, Sweep

__all__ = ["deviation_histogram", "jacobian_figure", "sample_figure", "sweep_figure"]

DPI = 100
#: Applied inside each figure function only (matplotlib's global settings stay untouched).
STYLE: dict[str, Any] = {"font.size": 12, "axes.titlesize": 12, "figure.titlesize": 13,
                         "legend.fontsize": 10}
F = TypeVar("F", bound=Callable[..., None])


def _styled(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        # the stubs type rc_context's keys as Literals
        with plt.rc_context(STYLE):  # type: ignore[arg-type]
            func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _save(fig: plt.Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def _plane(a: np.ndarray) -> tuple[np.ndarray, str]:
    """A ``(C, H, W)`` attribution as one ``(H, W)`` plane: itself for one channel, the sum
    over channels otherwise (said in the title)."""
    if a.shape[0] == 1:
        return a[0], ""
    return a.sum(0), f", sum of {a.shape[0]} channels"


def _colorbar(fig: plt.Figure, im: Any, ax: plt.Axes, label: str) -> None:
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(label)


@_styled
def sample_figure(view: SampleView, eps: float, p: float, method: str, path: Path) -> None:
    """Image, attribution ``g``, worst-case direction ``u`` and ``g(x + eps u)`` side by
    side; ``g`` and ``g(x + eps u)`` share one symmetric colour scale."""
    r = view.record
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.6), layout="constrained")
    image = view.image
    if image.shape[0] == 3:
        axes[0].imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
    else:
        im = axes[0].imshow(image[0], cmap="gray", vmin=0, vmax=1)
        _colorbar(fig, im, axes[0], "pixel value")
    axes[0].set_title(f"{r['source']}\npredicted {r['predicted']}, target {r['target']}")
    g, note = _plane(view.attribution)
    g1, _ = _plane(view.moved)
    scale = float(max(np.abs(g).max(), np.abs(g1).max(), 1e-12))
    unit = "logit" if method != "saliency" else "logit per pixel unit"
    im = axes[1].imshow(g, cmap="RdBu_r", vmin=-scale, vmax=scale)
    axes[1].set_title(f"attribution g(x)\n||g|| = {r['attr_norm']:.3g}{note}")
    _colorbar(fig, im, axes[1], f"g ({unit})")
    u, note_u = _plane(view.direction)
    su = float(max(np.abs(u).max(), 1e-12))
    name = "v_max" if p == 2.0 else ("sign(v_max)" if math.isinf(p) else "v_max/||v_max||_p")
    im = axes[2].imshow(u, cmap="PuOr_r", vmin=-su, vmax=su)
    axes[2].set_title(f"worst-case direction u = {name}\n"
                      f"(unit l{norm_label(p)} norm{note_u})")
    _colorbar(fig, im, axes[2], "u (pixel units per unit eps)")
    im = axes[3].imshow(g1, cmap="RdBu_r", vmin=-scale, vmax=scale)
    moved = float(np.linalg.norm(view.moved - view.attribution))
    axes[3].set_title(f"g(x + eps u), eps = {eps:g}\n"
                      f"||g(x + eps u) - g(x)|| = {moved:.3g}")
    _colorbar(fig, im, axes[3], f"g ({unit}), same scale as g(x)")
    diff = g1 - g
    sd = float(max(np.abs(diff).max(), 1e-12))
    im = axes[4].imshow(diff, cmap="RdBu_r", vmin=-sd, vmax=sd)
    axes[4].set_title("the change g(x + eps u) - g(x)\n(its own colour scale)")
    _colorbar(fig, im, axes[4], f"change of g ({unit})")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(_sample_title(r))
    _save(fig, path)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _sample_title(r: Record) -> str:
    """``T_e``, the bound the attack was checked against, and what the attack reached (as a
    multiple of that bound, so that a violation by 0.03% is visible)."""
    which = "T'_e" if r.get("T_e_prime") is not None else "T_e"
    bound = r.get("T_e_prime") if which == "T'_e" else r.get("T_e")
    title = f"{r['source']}: T_e = {_num(r.get('T_e'))}"
    if which == "T'_e":
        title += f", T'_e = {_num(bound)}"
    hat = r.get("T_e_hat")
    if hat is not None:
        title += f"; the attack reached {_num(hat)}"
        if bound:
            title += f" = {hat / bound:.4f} {which}"
        title += f" ({'VIOLATED' if r.get('violation') else 'held'})"
    return title


@_styled
def jacobian_figure(jac: JacobianView, path: Path) -> None:
    """``|J|`` on a log colour scale: the leading 100 x 100 block and the whole matrix.

    Entries below ``max |J| / 1e4`` (and exact zeros) are drawn in the lowest colour."""
    assert jac.matrix is not None
    a = np.abs(jac.matrix)
    top = float(a.max()) if a.size else 0.0
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.4), layout="constrained")
    if top <= 0:
        for ax in axes:
            ax.text(0.5, 0.5, "J = 0", ha="center", va="center", transform=ax.transAxes)
    else:
        norm = LogNorm(vmin=top * 1e-4, vmax=top)
        base = plt.get_cmap("viridis")
        cmap = base.with_extremes(bad=base(0.0), under=base(0.0))
        k = min(100, a.shape[0])
        for ax, block, title in (
                (axes[0], a[:k, :k], f"first {k} dimensions"),
                (axes[1], a, f"full matrix, {a.shape[0]} x {a.shape[1]}")):
            im = ax.imshow(np.where(block > 0, block, np.nan), cmap=cmap, norm=norm,
                           interpolation="antialiased" if block.shape[0] > 400 else "nearest")
            ax.set_title(f"|J| of {jac.source}: {title}")
            ax.set_xlabel("input dimension j (flattened pixel)")
            ax.set_ylabel("attribution dimension i")
        _colorbar(fig, im, axes[1], "|J_ij| = |d g_i / d x_j| (log scale)")
    sv = "" if jac.xi_max_full is None else f"; largest singular value {jac.xi_max_full:.4g}"
    fig.suptitle(f"attribution Jacobian J = dg/dx (d = {jac.d}){sv}")
    _save(fig, path)


@_styled
def deviation_histogram(records: Sequence[Record], eps: float, p: float, path: Path) -> None:
    """Histogram over samples of bound minus attacked deviation (the paper's Fig. 8):
    ``T_e - T_e_hat`` and, for l2, ``T'_e - T_e_hat``. Negative: the attack won."""
    fig, ax = plt.subplots(figsize=(9, 4.6), layout="constrained")
    series = [("T_e", "T_e - T_e^", "tab:blue")]
    if p == 2.0:
        series.append(("T_e_prime", "T'_e - T_e^", "tab:orange"))
    values = {key: np.array([r[key] - r["T_e_hat"] for r in records
                             if r.get(key) is not None and r.get("T_e_hat") is not None])
              for key, _, _ in series}
    everything = np.concatenate([v for v in values.values() if v.size] or [np.zeros(1)])
    lo, hi = float(min(everything.min(), 0.0)), float(max(everything.max(), 0.0))
    pad = 0.05 * (hi - lo) if hi > lo else 1e-3
    bins = np.linspace(lo - pad, hi + pad, max(8, min(30, 2 * len(records))) + 1).tolist()
    for key, label, color in series:
        v = values[key]
        if v.size:
            below = int((v < 0).sum())
            ax.hist(v, bins=bins, histtype="stepfilled", alpha=0.45, color=color,
                    edgecolor=color, linewidth=1.5,
                    label=f"{label}  ({below} of {v.size} below 0)")
    ax.axvline(0.0, color="black", linestyle="--", linewidth=1.2)
    side = ax.get_xaxis_transform()
    ax.text(0.0, 1.01, "attack beat the bound  ", transform=side, ha="right", va="bottom",
            fontsize=9, color="tab:red")
    ax.text(0.0, 1.01, "  bound held", transform=side, ha="left", va="bottom", fontsize=9)
    ax.set_xlabel(f"bound - attacked deviation ||g(x + delta) - g(x)||_2  "
                  f"(eps = {eps:g}, l{norm_label(p)} ball)")
    ax.set_ylabel("samples")
    ax.set_title("bounds against the attack (paper's Fig. 8)", pad=18)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def _band(ax: plt.Axes, x: np.ndarray, y: np.ndarray, label: str, color: str,
          marker: str = "o", band: bool = True) -> None:
    """Mean over samples (line) and, with ``band``, the min-max band of ``y`` ``(K, N)``;
    NaN ignored."""
    ok = ~np.all(np.isnan(y), axis=1)
    if not ok.any():
        return
    with np.errstate(all="ignore"):
        mean = np.nanmean(y[ok], axis=1)
        low, high = np.nanmin(y[ok], axis=1), np.nanmax(y[ok], axis=1)
    ax.plot(x[ok], mean, marker=marker, color=color, label=f"{label} (mean)")
    if band and y.shape[1] > 1:
        ax.fill_between(x[ok], low, high, color=color, alpha=0.18, label=f"{label} (min-max)")


@_styled
def sweep_figure(sweep: Sweep, records: Sequence[Record], eps: float, p: float,
                 path: Path) -> None:
    """``T_e`` (and ``T'_e``), ``T_c`` and ``eta`` against eps (the paper's Fig. 3), with
    what the attack reached at ``eps`` as markers."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 5), layout="constrained")
    x = sweep.eps
    xlabel = f"eps (l{norm_label(p)} radius, pixel units of [0, 1] images)"
    panels = (("T_e", "T'_e", sweep.T_e, sweep.T_e_prime, "T_e_hat",
               "Euclidean bound against eps", "||g(x + delta) - g(x)||_2"),
              ("T_c", "T'_c", sweep.T_c_deg, sweep.T_c_prime_deg, "T_c_hat_deg",
               "cosine bound (as an angle) against eps",
               "angle between g(x + delta) and g(x) (degrees)"))
    for ax, (name, name_prime, bound, modified, key, title, ylabel) in zip(axes, panels,
                                                                          strict=False):
        _band(ax, x, bound, name, "tab:blue", band=p != 2.0)
        _band(ax, x, modified, name_prime, "tab:orange", "s")
        hat = np.array([r[key] for r in records if r.get(key) is not None])
        if hat.size:
            ax.scatter(np.full(hat.size, eps), hat, marker="x", color="tab:red", zorder=3,
                       label=f"attack {name}^ at eps = {eps:g}")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
    ax = axes[2]
    _band(ax, x, sweep.eta, "eta", "tab:purple")
    ax.set_title("linearity gap eta = ||g(x+eps u) - g(x) - eps J u||")
    ax.set_ylabel("eta")
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.set_xlim(0, float(max(x.max(), eps)) * 1.05)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    fig.suptitle("bounds and linearity over eps (vacuous cosine bounds are left out; "
                 "u: the worst-case direction)")
    _save(fig, path)
