"""The first-order passes within the memory budget: peak RSS and seconds of ``g`` at the two
perturbations ``x +- eps v_max`` of Eq. 39 (two rows, integrated gradients with m points) for
a zoo net, all m x 2 points in one pass against the points that ``--memory-budget B`` allows
(``Sizing.value_points = B // 2A``, :func:`attrcert.analysis.attribute_rows`), each in its own
subprocess (its peak RSS is its own, the process and model included).

Usage (from the repository root)::

    python benchmarks/bench_value_passes.py                   # Softplus ResNet-50, 3x224x224
    python benchmarks/bench_value_passes.py --arch vit --budgets none,8,4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_zoo import ARCHS  # noqa: E402

from attrcert.analysis import attribute_rows  # noqa: E402
from attrcert.attributions import get_method  # noqa: E402
from attrcert.memory import activation_bytes  # noqa: E402
from tests.zoo import seeded  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    """One budget: print a JSON line."""
    torch.set_num_threads(args.threads)
    label, build = ARCHS[args.arch][args.size]
    model = seeded(lambda: build(10)).eval()
    x = torch.rand(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    ig = get_method("integrated_gradients", steps=args.steps)
    activation = activation_bytes(model, x)
    points = None if args.worker == "none" else max(1, int(float(args.worker) * 1e9
                                                           // (2 * activation)))
    start = time.perf_counter()
    g = attribute_rows(ig, model, x, torch.zeros(2, dtype=torch.long), points)
    seconds = time.perf_counter() - start
    print(json.dumps({"label": label, "activation": activation, "points": points,
                      "seconds": seconds, "sum": float(g.double().abs().sum()),
                      "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet", choices=sorted(ARCHS))
    parser.add_argument("--size", type=int, default=224, choices=(32, 224))
    parser.add_argument("--steps", type=int, default=16, help="integrated-gradients m")
    parser.add_argument("--budgets", default="none,4,2", help="GB, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args)
        return
    common = [sys.executable, __file__, "--arch", args.arch, "--size", str(args.size),
              "--steps", str(args.steps), "--threads", str(args.threads)]
    reference = None
    for text in args.budgets.split(","):
        out = subprocess.run([*common, "--worker", text], capture_output=True, text=True,
                             check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if reference is None:
            reference = result
            print(f"{result['label']} 3x{args.size}x{args.size}, IG m = {args.steps}, 2 rows, "
                  f"{args.threads} thread(s), torch {torch.__version__}; A = "
                  f"{result['activation'] / 1e6:.0f} MB\n")
            print("| budget | points x rows per pass | seconds | ratio | peak RSS | "
                  "sum abs g rel. diff |")
            print("|---|---|---|---|---|---|")
        diff = abs(result["sum"] - reference["sum"]) / reference["sum"]
        points = "all" if result["points"] is None else result["points"]
        print(f"| {text} | {points} | {result['seconds']:.3g} | "
              f"{result['seconds'] / reference['seconds']:.2f}x | {result['peak'] / 1e9:.2f} GB "
              f"| {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
