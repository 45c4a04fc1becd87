"""How tight and how fast is sound mode? ``T_e_sound / T_e_hat`` (proved bound over the best
attack), seconds per sample, and the cost of integrated gradients.

Usage (from the repository root)::

    python benchmarks/bench_sound.py [--models mlp,cnn,resnet] [--samples 4]
        [--eps 0.01,0.05,0.1] [--norm 2] [--dtype float64] [--threads 1]
    python benchmarks/bench_sound.py --cost [--samples 2]     # IG (m = 16) against saliency
    python benchmarks/bench_sound.py --method integrated_gradients ...  # m = 16

Models: ``mlp`` is ``sample_models/digits_tanh_mlp.pt2`` (the scikit-learn tanh MLP, d = 64,
on ``sample_models/digits8.pt``), ``cnn`` ``sample_models/digits_softplus.pt2`` (the Softplus
CNN, d = 784, on ``sample_models/digits.pt``), ``resnet`` a ResNet-shaped net (Softplus,
eval BatchNorm, one residual block, global average pooling, d = 64) trained here on
scikit-learn's bundled 8x8 digits (needs the ``train`` extra; no download). The first
``--samples`` held-out images of each, saliency (``--method``), target = the predicted class.

For each sample: ``T_e_sound`` (:class:`attrcert.sound.SoundBounder`; seconds measured, the
attack not included), ``T_e`` (Theorem 1, or Theorem 2 for l-inf) and ``T_e_hat``, the
largest ``||g(x') - g(x)||_2`` found by :func:`attrcert.attack.attack` (PGD, ``--restarts``
restarts, seeds 0 and 7, ``--steps`` steps, no label constraint, since the proved bound
covers the whole ball). ``--dtype float64`` runs model, bound and attack in float64 (the
rounding term is then negligible); ``float32`` keeps the models' own precision, so the
bound covers torch's float32 attribution (rounding term included). The benchmark asserts
``T_e_sound >= T_e_hat`` on every sample. Peer column: auto_LiRPA, the one registry package
that bounds Jacobians, pins ``torch < 1.13`` and does not import with NumPy 2 (0.3, the
latest on PyPI), so no peer runs here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # zoo, as bench_zoo

from attrcert.attack import attack
from attrcert.attributions import get_method
from attrcert.perturbation import Perturbation
from attrcert.sound import SoundBounder
from zoo import ResidualSoftplus


def resnet() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Softplus(),
                         ResidualSoftplus(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


def train_resnet() -> tuple[nn.Module, torch.Tensor]:
    """The ResNet-shaped net trained on scikit-learn's digits (80% split as in
    ``sample_models/train_mlp.py``, Adam, 40 epochs, seed 0) and its held-out images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.reshape(-1, 1, 8, 8) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=0.2,
                                              stratify=digits.target, random_state=0)
    torch.manual_seed(0)
    net = resnet()
    xt, yt = torch.tensor(x_tr, dtype=torch.float32), torch.tensor(y_tr)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    test = torch.tensor(x_te, dtype=torch.float32)
    with torch.no_grad():
        acc = float((net(test).argmax(1) == torch.tensor(y_te)).float().mean())
    print(f"(ResNet-shaped net: held-out accuracy {acc:.3f})", flush=True)
    return net, test


def load(name: str) -> tuple[nn.Module, torch.Tensor, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "mlp":
            return (torch.export.load("sample_models/digits_tanh_mlp.pt2").module(),
                    torch.load("sample_models/digits8.pt", weights_only=True),
                    "tanh MLP (sklearn, d=64)")
        if name == "cnn":
            return (torch.export.load("sample_models/digits_softplus.pt2").module(),
                    torch.load("sample_models/digits.pt", weights_only=True),
                    "Softplus CNN (d=784)")
    net, test = train_resnet()
    return net, test, "ResNet-shaped (BN, residual, GAP, d=64)"


def best_attack(model: nn.Module, x: torch.Tensor, att: object, y: int, pert: Perturbation,
                steps: int, restarts: int) -> float:
    best = 0.0
    for seed in (0, 7):
        found = attack(model, x, attribution=att, target=torch.tensor([y]),  # type: ignore[arg-type]
                       perturbation=pert, steps=steps, restarts=restarts, seed=seed,
                       label_constraint=False)
        best = max(best, float(found.deviation[0]))
    return best


def tightness(args: argparse.Namespace) -> None:
    dt = torch.float64 if args.dtype == "float64" else torch.float32
    att = get_method(args.method, steps=16)
    print(f"({args.method}{', m = 16' if args.method == 'integrated_gradients' else ''})")
    print("| model | ball | eps | T_e_sound / T_e_hat (mean, max) | T_e_sound / T_e (mean) "
          "| winner | s / sample |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model, images, label = load(name)
        model = model.to(dt)
        x = images[:args.samples].to(dt)
        for eps in (float(e) for e in args.eps.split(",")):
            pert = Perturbation(args.norm, eps)
            bounder = SoundBounder(model, x[:1], att, pert)
            ratios, ratios_te, secs, winners = [], [], [], []
            for i in range(x.shape[0]):
                xi = x[i:i + 1]
                with torch.no_grad():
                    y = int(model(xi).argmax())
                start = time.perf_counter()
                res = bounder.bound(xi, y)
                secs.append(time.perf_counter() - start)
                jac = bounder.jacobian(xi.double(), y)
                t_e = eps * float(torch.linalg.matrix_norm(jac, 2))
                if pert.is_linf:
                    t_e = eps * float((jac.T @ jac).abs().sum()) ** 0.5
                best = best_attack(model, xi, att, y, pert, args.steps, args.restarts)
                assert res.value >= best, (name, eps, i, res, best)
                ratios.append(res.value / best)
                ratios_te.append(res.value / t_e)
                winners.append(res.method)
            win = ", ".join(f"{w} {winners.count(w)}" for w in sorted(set(winners)))
            ball = "l-inf" if pert.is_linf else f"l{args.norm}"
            print(f"| {label}, {x.shape[0]} samples | {ball} | {eps:g} "
                  f"| {statistics.mean(ratios):.2f}, {max(ratios):.2f} "
                  f"| {statistics.mean(ratios_te):.2f} | {win} "
                  f"| {statistics.mean(secs):.2f} |", flush=True)


def cost(args: argparse.Namespace) -> None:
    """Seconds per sample of the sound bound on the CNN: saliency against integrated
    gradients with ``m = 16`` (both with their default splits), in the same process."""
    model, images, label = load("cnn")
    dt = torch.float64 if args.dtype == "float64" else torch.float32
    model = model.to(dt)
    x = images[:args.samples].to(dt)
    pert = Perturbation(2, 0.1)
    print("| model | method | s / sample | ratio to saliency |")
    print("|---|---|---|---|")
    base = None
    for method in ("saliency", "integrated_gradients"):
        bounder = SoundBounder(model, x[:1], get_method(method, steps=16), pert)
        secs = []
        for i in range(x.shape[0]):
            xi = x[i:i + 1]
            with torch.no_grad():
                y = int(model(xi).argmax())
            start = time.perf_counter()
            bounder.bound(xi, y)
            secs.append(time.perf_counter() - start)
        mean = statistics.mean(secs)
        base = base or mean
        name = method if method == "saliency" else "integrated_gradients (m = 16)"
        print(f"| {label} | {name} | {mean:.2f} | {mean / base:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,cnn,resnet")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--eps", default="0.01,0.05,0.1")
    ap.add_argument("--norm", default="2")
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cost", action="store_true")
    ap.add_argument("--method", default="saliency",
                    choices=("saliency", "input_x_gradient", "integrated_gradients"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.cost:
        cost(args)
    else:
        tightness(args)


if __name__ == "__main__":
    main()
