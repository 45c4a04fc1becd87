"""How to choose ``--beta-smooth``: agreement of the beta-smoothed explanation with the
original one, and its bounds, on a trained ReLU / max-pool CNN.

Usage (from the repository root; needs the ``train`` extra, scikit-learn, no download)::

    python benchmarks/bench_beta.py [--betas 1,2,5,10,20,50,100] [--bound-samples 16]
        [--eps 0.01] [--topk 0.05] [--attack-steps 20] [--threads 1]

Model: ``sample_models/digits_relu_maxpool.safetensors`` (ReLU, 2x2 max-pooling, trained by
``sample_models/train.py`` on scikit-learn's 8x8 digits upscaled to 28 x 28, d = 784), on the
360 held-out images of that script's split. For each beta, with the smoothed copy made by
:func:`attrcert.loading.smoothing.beta_smooth`:

- prediction agreement: the share of the 360 images on which the smoothed net predicts the
  original's class; and the smoothed net's test accuracy (the original's on the first row);
- explanation agreement, on the 360 images: the saliency map of the smoothed net against the
  original's (both for the original's predicted class): mean cosine similarity, and the mean
  overlap of their top ``--topk`` pixels by magnitude (``|top_k(g) & top_k(g')| / k``);
- bounds, on the first ``--bound-samples`` images: mean ``||g||``, ``T_e`` (Theorem 1) and
  ``T'_e`` (Eq. 11) of the smoothed saliency at ``--eps`` (l2), ``T_e^``, the attack's
  largest deviation (``--attack-steps`` PGD steps), and the angle bound ``T_c`` (Corollary
  2, degrees), all from :func:`attrcert.certify` in float64.

The original's saliency is degenerate (its Jacobian is zero almost everywhere: ``T_e = 0``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "sample_models"))

from attrcert import certify  # noqa: E402
from attrcert.attributions import get_method  # noqa: E402
from attrcert.loading import load_model  # noqa: E402
from attrcert.loading.smoothing import beta_smooth  # noqa: E402


def saliency(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return get_method("saliency")(model, x, target).detach().flatten(1)


def agreement(g: torch.Tensor, h: torch.Tensor, frac: float) -> tuple[float, float]:
    """Mean cosine similarity and mean top-k overlap of the rows of ``g`` and ``h``."""
    cos = torch.nn.functional.cosine_similarity(g, h, dim=1)
    k = max(1, int(frac * g.shape[1]))
    top_g = g.abs().topk(k, dim=1).indices
    top_h = h.abs().topk(k, dim=1).indices
    overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top_g, top_h,
                                                                          strict=True)]
    return float(cos.mean()), statistics.fmean(overlap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--betas", default="1,2,5,10,20,50,100")
    parser.add_argument("--bound-samples", type=int, default=16)
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--topk", type=float, default=0.05)
    parser.add_argument("--attack-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from train import load_data

    _, _, x, y = load_data()
    model = load_model(ROOT / "sample_models/digits_relu_maxpool.safetensors",
                       arch=str(ROOT / "sample_models/digits_arch.py") + ":relu_maxpool_cnn")
    model = model.double().eval()
    x = x.double()
    with torch.no_grad():
        pred = model(x).argmax(1)
    g0 = saliency(model, x, pred)
    n = args.bound_samples
    print(f"# {x.shape[0]} held-out images; bounds on the first {n}, saliency, l2, "
          f"eps = {args.eps}, float64; top-k: k = {max(1, int(args.topk * g0.shape[1]))}")
    print("| beta | prediction agreement | accuracy | saliency cosine | top-k overlap "
          "| ||g|| | T_e | T'_e | T_e^ (attack) | T_c (deg) | seconds |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    acc0 = float((pred == y).double().mean())
    start = time.perf_counter()
    recs = certify(model, x[:n], eps=args.eps, method="saliency", target=pred[:n],
                   spectral="iterative")
    t_e0 = statistics.fmean(r["T_e"] for r in recs)
    norm0 = statistics.fmean(r["attr_norm"] for r in recs)
    print(f"| original (ReLU) | 1 | {acc0:.3f} | 1 | 1 | {norm0:.3g} | {t_e0:.3g} "
          f"(degenerate) | - | - | - | {time.perf_counter() - start:.1f} |")
    for beta in (float(b) for b in args.betas.split(",")):
        start = time.perf_counter()
        smooth = beta_smooth(model, beta, x[:2])
        with torch.no_grad():
            pred_s = smooth(x).argmax(1)
        agree = float((pred_s == pred).double().mean())
        acc = float((pred_s == y).double().mean())
        cos, overlap = agreement(g0, saliency(smooth, x, pred), args.topk)
        recs = certify(smooth, x[:n], eps=args.eps, method="saliency", target=pred[:n],
                       spectral="iterative", verify=True, attack_steps=args.attack_steps)
        mean = {k: statistics.fmean(r[k] for r in recs)
                for k in ("attr_norm", "T_e", "T_e_prime", "T_e_hat", "T_c_deg")}
        print(f"| {beta:g} | {agree:.3f} | {acc:.3f} | {cos:.3f} | {overlap:.3f} "
              f"| {mean['attr_norm']:.3g} | {mean['T_e']:.3g} | {mean['T_e_prime']:.3g} "
              f"| {mean['T_e_hat']:.3g} | {mean['T_c_deg']:.3g} "
              f"| {time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
