"""What cutting integrated gradients' points into passes costs the attack: seconds and peak
RSS of PGD-l2 on the attribution (Euclidean objective) with all m points in one graph per
step against ``points_per_pass`` = 8, 4, 1 (``AttributionAttack(..., points_per_pass=)``),
each configuration in its own subprocess (its peak RSS is its own), with the deviation it
reached against the whole graph's.

Usage (from the repository root)::

    python benchmarks/bench_attack_passes.py                       # ResNet-18 Softplus, 3x32x32
    python benchmarks/bench_attack_passes.py --arch resnet --size 224 --attack-steps 2 \\
        --per-pass none,4,1
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

from attrcert.attack import PGDL2  # noqa: E402
from attrcert.attributions import get_method  # noqa: E402
from attrcert.sizing import point_bytes  # noqa: E402
from tests.zoo import seeded  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    """One configuration: print a JSON line (seconds, peak RSS, deviation, MB per point)."""
    torch.set_num_threads(args.threads)
    label, build = ARCHS[args.arch][args.size]
    model = seeded(lambda: build(10)).eval()
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0])
    ig = get_method("integrated_gradients", steps=args.steps)
    if args.worker == "point":
        print(json.dumps({"label": label, "point": point_bytes(ig, model, x, target)}))
        return
    per_pass = None if args.worker == "none" else int(args.worker)
    start = time.perf_counter()
    found = PGDL2(args.eps, steps=args.attack_steps, seed=0)(model, x, ig, target,
                                                             points_per_pass=per_pass)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak": peak,
                      "deviation": float(found.deviation[0])}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet", choices=sorted(ARCHS))
    parser.add_argument("--size", type=int, default=32, choices=(32, 224))
    parser.add_argument("--steps", type=int, default=16, help="integrated-gradients m")
    parser.add_argument("--attack-steps", type=int, default=5)
    parser.add_argument("--eps", type=float, default=0.5)
    parser.add_argument("--per-pass", default="none,8,4,1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args)
        return
    common = [sys.executable, __file__, "--arch", args.arch, "--size", str(args.size),
              "--steps", str(args.steps), "--attack-steps", str(args.attack_steps),
              "--eps", str(args.eps), "--threads", str(args.threads)]

    def run(worker: str) -> dict:
        out = subprocess.run([*common, "--worker", worker], capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    point = run("point")
    print(f"{point['label']} 3x{args.size}x{args.size}, IG m = {args.steps}, PGD-l2 eps "
          f"{args.eps}, {args.attack_steps} steps, {args.threads} thread(s), torch "
          f"{torch.__version__}; one point's graph {point['point'] / 1e6:.1f} MB\n")
    print("| points per pass | seconds | ratio | peak RSS | deviation | rel. diff |")
    print("|---|---|---|---|---|---|")
    reference = None
    for text in args.per_pass.split(","):
        result = run(text)
        reference = reference or result
        diff = abs(result["deviation"] - reference["deviation"]) / reference["deviation"]
        print(f"| {text} | {result['seconds']:.3g} | "
              f"{result['seconds'] / reference['seconds']:.2f}x | "
              f"{result['peak'] / 1e9:.2f} GB | {result['deviation']:.6g} | {diff:.1e} |",
              flush=True)


if __name__ == "__main__":
    main()
