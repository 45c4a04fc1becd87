"""Where the matrix-free spectrum starts to beat the full Jacobian (``spectral="auto"``).

Usage (from the repository root)::

    python benchmarks/bench_crossover.py [--sides 4,6,8,10,12,16,28] [--threads 1]

For each side ``s`` (d = s^2): a Softplus / average-pool CNN (Conv 8x3x3, pool 2, Linear 32,
Linear 10; random weights, seed 0) on one random 1 x s x s input, integrated gradients with
m = ``--steps``; ``xi_max`` by the full path (:func:`attrcert.jacobian.attribution_jacobian`
+ :func:`attrcert.spectral.spectrum_full`) and by :func:`attrcert.spectral.spectrum_iterative`
(PROPACK, tol 1e-4), alternating, median of ``--repeat``. Prints a Markdown table; the
threshold :data:`attrcert.sizing.AUTO_FULL_MAX_D` comes from it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from attrcert.attributions import get_method
from attrcert.jacobian import attribution_jacobian
from attrcert.spectral import spectrum_full, spectrum_iterative


def cnn(side: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Softplus(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(8 * (side // 2) ** 2, 32), nn.Softplus(),
                         nn.Linear(32, 10)).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="4,6,8,10,12,16,28")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ig = get_method("integrated_gradients", steps=args.steps)
    print(f"IG m = {args.steps}, {args.threads} thread(s), torch {torch.__version__}\n")
    print("| d | full (s) | matrix-free (s) | full / matrix-free | products | xi_max rel. diff |")
    print("|---|---|---|---|---|---|")
    for side in (int(s) for s in args.sides.split(",")):
        torch.manual_seed(0)
        net = cnn(side)
        x = torch.rand(1, 1, side, side)
        target = net(x).argmax(1)
        full_t, iter_t = [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            full = spectrum_full(attribution_jacobian(ig, net, x, target))
            full_t.append(time.perf_counter() - start)
            start = time.perf_counter()
            it = spectrum_iterative(ig, net, x, target)
            iter_t.append(time.perf_counter() - start)
        f, i = statistics.median(full_t), statistics.median(iter_t)
        diff = abs(float(it.xi_max[0] / full.xi_max[0]) - 1)
        print(f"| {side * side} | {f:.3f} | {i:.3f} | {f / i:.2f} | {int(it.products[0])} | "
              f"{diff:.1e} |", flush=True)
    print(f"\n1-minute load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
