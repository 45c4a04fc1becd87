"""How tight is sound mode? ``T_e_sound / T_e_hat`` (proved bound over the best attack).

Usage (from the repository root)::

    python benchmarks/bench_sound.py [--samples 4] [--eps 0.01,0.05,0.1] [--threads 1]

Models: ``sample_models/digits_tanh_mlp.pt2`` (the scikit-learn tanh MLP, d = 64, on
``sample_models/digits8.pt``) and ``sample_models/digits_softplus.pt2`` (the Softplus CNN,
d = 784, on ``sample_models/digits.pt``); the first ``--samples`` images of each, saliency,
l2 ball (``--norm inf`` for l-inf), target = the predicted class.

For each sample: ``T_e_sound`` (:class:`attrcert.sound.SoundBounder`, float64; seconds
measured), ``T_e = xi_max eps`` (Theorem 1, float64) and ``T_e_hat``, the largest
``||g(x') - g(x)||_2`` found by :func:`attrcert.attack.attack` (PGD, Euclidean and cosine
objectives, ``--restarts`` random restarts, seeds 0 and 7, ``--steps`` steps, no label
constraint, since the proved bound covers the whole ball) in float64. The table gives the
mean and max over samples of ``T_e_sound / T_e_hat`` and ``T_e_sound / T_e``, which of the
bounds won, and the seconds per sample of the sound bound (the attack not included).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from attrcert.attack import attack
from attrcert.attributions import get_method
from attrcert.perturbation import Perturbation
from attrcert.sound import SoundBounder

MODELS = {
    "tanh MLP (sklearn, d=64)": ("sample_models/digits_tanh_mlp.pt2",
                                 "sample_models/digits8.pt"),
    "Softplus CNN (d=784)": ("sample_models/digits_softplus.pt2", "sample_models/digits.pt"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--eps", default="0.01,0.05,0.1")
    ap.add_argument("--norm", default="2")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default=",".join(range_names()))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    att = get_method("saliency")
    print("| model | eps | T_e_sound / T_e_hat (mean, max) | T_e_sound / T_e (mean) "
          "| winner | s / sample |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        name = list(MODELS)[int(name)]
        model_path, images_path = MODELS[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.export.load(model_path).module()
        x = torch.load(images_path, weights_only=True)[:args.samples].to(torch.float64)
        for eps in (float(e) for e in args.eps.split(",")):
            pert = Perturbation(args.norm, eps)
            bounder = SoundBounder(model, x[:1].float(), att, pert)
            ratios, ratios_te, secs, winners = [], [], [], []
            for i in range(x.shape[0]):
                xi = x[i:i + 1]
                y = int(bounder_forward(bounder, xi).argmax())
                start = time.perf_counter()
                res = bounder.bound(xi, y)
                secs.append(time.perf_counter() - start)
                jac = bounder.jacobian(xi, y)
                t_e = eps * float(torch.linalg.matrix_norm(jac, 2))
                if pert.is_linf:
                    t_e = eps * float((jac.T @ jac).abs().sum()) ** 0.5
                best = 0.0
                chain = _Chain(bounder)
                for seed in (0, 7):
                    found = attack(chain, xi, attribution=att, target=torch.tensor([y]),
                                   perturbation=pert, steps=args.steps,
                                   restarts=args.restarts, seed=seed,
                                   label_constraint=False)
                    best = max(best, float(found.deviation[0]))
                assert res.value >= best, (name, eps, i, res, best)
                ratios.append(res.value / best)
                ratios_te.append(res.value / t_e)
                winners.append(res.method)
            win = ", ".join(f"{w} {winners.count(w)}" for w in sorted(set(winners)))
            print(f"| {name} | {eps:g} | {statistics.mean(ratios):.2f}, {max(ratios):.2f} "
                  f"| {statistics.mean(ratios_te):.2f} | {win} "
                  f"| {statistics.mean(secs):.2f} |", flush=True)


def range_names() -> list[str]:
    return [str(i) for i in range(len(MODELS))]


class _Chain(torch.nn.Module):
    """The model as the float64 chain that sound mode read (the attack runs on it too)."""

    def __init__(self, bounder: SoundBounder) -> None:
        super().__init__()
        self.bounder = bounder

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        from attrcert.sound import forward
        return forward(self.bounder.graph, t)


def bounder_forward(bounder: SoundBounder, x: torch.Tensor) -> torch.Tensor:
    from attrcert.sound import forward
    with torch.no_grad():
        return forward(bounder.graph, x)


if __name__ == "__main__":
    main()
