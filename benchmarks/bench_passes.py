"""What taking integrated gradients' points in passes costs outside the spectrum, each
configuration in its own subprocess (its peak RSS is its own, process and model included):

- ``attack``: PGD-l2 on the attribution (Euclidean objective) with all m points in one graph
  per step against ``points_per_pass`` = 8, 4, 1 (``AttributionAttack(..., points_per_pass=)``,
  what ``bound --verify`` and ``attack`` get from the planner), and the deviation reached;
- ``values``: ``g`` at the two perturbations ``x +- eps v_max`` of Eq. 39 (two rows) with
  all ``m x 2`` points in one pass against the points that ``--memory-budget B`` allows
  (``RunPlan.points_per_value_pass = B // 2A``, :func:`attrcert.analysis.attribute_rows`).

Usage (from the repository root)::

    python benchmarks/bench_passes.py attack --attack-steps 3        # ResNet-18 Softplus, 32
    python benchmarks/bench_passes.py attack --size 224 --attack-steps 2 --per-pass none,4,1
    python benchmarks/bench_passes.py values --size 224 --budgets none,4,2   # ResNet-50
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

from bench_handwritten import ARCHS  # noqa: E402

from attrcert.analysis import attribute_rows  # noqa: E402
from attrcert.attack import PGDL2  # noqa: E402
from attrcert.attributions import get_method  # noqa: E402
from attrcert.memory import activation_bytes  # noqa: E402
from attrcert.sizing import point_bytes  # noqa: E402
from zoo import seeded  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    """One configuration (``args.worker``: a points-per-pass or budget, or ``"info"``):
    print a JSON line."""
    torch.set_num_threads(args.threads)
    label, build = ARCHS[args.arch][args.size]
    model = seeded(lambda: build(10)).eval()
    rows = 1 if args.what == "attack" else 2
    x = torch.rand(rows, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(rows, dtype=torch.long)
    ig = get_method("integrated_gradients", steps=args.steps)
    if args.worker == "info":
        size = (point_bytes(ig, model, x, target) if args.what == "attack"
                else activation_bytes(model, x))
        print(json.dumps({"label": label, "bytes": size}))
        return
    start = time.perf_counter()
    if args.what == "attack":
        per_pass = None if args.worker == "none" else int(args.worker)
        found = PGDL2(args.eps, steps=args.attack_steps, seed=0)(model, x, ig, target,
                                                                 points_per_pass=per_pass)
        value, points = float(found.deviation[0]), per_pass
    else:
        points = (None if args.worker == "none"
                  else max(1, int(float(args.worker) * 1e9 // (2 * activation_bytes(model, x)))))
        value = float(attribute_rows(ig, model, x, target, points).double().abs().sum())
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "value": value, "points": points,
                      "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("attack", "values"))
    parser.add_argument("--arch", default="resnet", choices=sorted(ARCHS))
    parser.add_argument("--size", type=int, default=32, choices=(32, 224))
    parser.add_argument("--steps", type=int, default=16, help="integrated-gradients m")
    parser.add_argument("--attack-steps", type=int, default=5)
    parser.add_argument("--eps", type=float, default=0.5)
    parser.add_argument("--per-pass", default="none,8,4,1", help="attack: points per pass")
    parser.add_argument("--budgets", default="none,4,2", help="values: GB, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args)
        return
    common = [sys.executable, __file__, args.what, "--arch", args.arch, "--size",
              str(args.size), "--steps", str(args.steps), "--attack-steps",
              str(args.attack_steps), "--eps", str(args.eps), "--threads", str(args.threads)]

    def run(config: str) -> dict:
        out = subprocess.run([*common, "--worker", config], capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    info = run("info")
    attack = args.what == "attack"
    head = (f"PGD-l2 eps {args.eps}, {args.attack_steps} steps; one point's graph"
            if attack else "2 rows; A =")
    print(f"{info['label']} 3x{args.size}x{args.size}, IG m = {args.steps}, {head} "
          f"{info['bytes'] / 1e6:.1f} MB, {args.threads} thread(s), torch {torch.__version__}\n")
    print(f"| {'points per pass' if attack else 'budget (GB)'} | "
          f"{'' if attack else 'points x rows per pass | '}seconds | ratio | peak RSS | "
          f"{'deviation' if attack else 'sum abs g'} rel. diff |")
    print("|---|---|---|---|---|" + ("" if attack else "---|"))
    reference = None
    for config in (args.per_pass if attack else args.budgets).split(","):
        result = run(config)
        reference = reference or result
        diff = abs(result["value"] - reference["value"]) / reference["value"]
        points = "" if attack else f"{result['points'] or 'all'} | "
        print(f"| {config} | {points}{result['seconds']:.3g} | "
              f"{result['seconds'] / reference['seconds']:.2f}x | {result['peak'] / 1e9:.2f} GB "
              f"| {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
