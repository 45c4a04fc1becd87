"""What ``attrcert smooth`` costs at ImageNet size: timm's ``resnet50`` (random weights,
``pretrained=False``: timing only) on one seeded 3 x 224 x 224 image, saliency, n noise
samples, each configuration in its own subprocess (its peak RSS is its own):

- the default (copies per pass from the memory budget, ``--memory-budget`` as given) at 1
  and 2 threads;
- a fixed number of noisy copies per pass (``--per-pass``);
- one attribution ``g(x)`` alone, the unit the cost is counted in (n + 1 attributions per
  image for the uniform certificate, 2n + 1 with ``--sigma``).

Usage (from the repository root)::

    python benchmarks/bench_smooth.py                          # n = 100, threads 1 and 2
    python benchmarks/bench_smooth.py --samples 20 --threads 1 --per-pass auto,1,10
    python benchmarks/bench_smooth.py --device cuda --threads 1      # on an accelerator
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attrcert.attributions import Saliency  # noqa: E402
from attrcert.memory import activation_bytes, format_size  # noqa: E402
from attrcert.smoothing import SmoothingOptions, smooth  # noqa: E402
from attrcert.smoothing.sampling import noise  # noqa: E402


def build() -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet50", pretrained=False, num_classes=1000).eval()


def worker(args: argparse.Namespace) -> None:
    """One configuration: print a JSON line."""
    torch.set_num_threads(args.threads)
    model = build()
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    out: dict[str, object] = {"threads": args.threads, "per_pass": args.worker}
    if args.worker == "single":
        device = torch.device(args.device)
        model, gx = model.to(device), x.to(device)
        target = torch.zeros(1, dtype=torch.long, device=device)
        Saliency()(model, gx, target)  # warm-up
        start = time.perf_counter()
        for _ in range(3):
            Saliency()(model, gx, target).sum().item()  # .item(): wait for the device
        out["seconds"] = (time.perf_counter() - start) / 3
        start = time.perf_counter()
        noise("uniform", 1.0, b"bench", 0, 10, x.numel())
        out["noise_seconds_per_sample"] = (time.perf_counter() - start) / 10
        out["activation_bytes"] = activation_bytes(model, x)
    else:
        per_pass = None if args.worker == "auto" else int(args.worker)
        counts: list[int] = []
        start = time.perf_counter()
        rec = smooth(model, x, options=SmoothingOptions(
            radius=args.radius, samples=args.samples, eps=args.eps, samples_per_pass=per_pass),
            method="saliency", memory_budget=args.memory_budget, device=args.device,
            progress=lambda done, total: counts.append(done))[0]
        out["seconds"] = time.perf_counter() - start
        out["passes"] = len(counts)
        out["cos_sim_lower"] = rec["cos_sim_lower"]
        out["h_norm"] = rec["h_norm"]
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--radius", type=float, default=50.0)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--per-pass", default="auto")
    parser.add_argument("--memory-budget", default="4GB")
    parser.add_argument("--device", default="cpu", help="cpu, cuda ... (smooth() only)")
    parser.add_argument("--worker", default=None)
    args = parser.parse_args()
    if args.worker is not None:
        args.threads = int(args.threads)
        worker(args)
        return
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for what in ["single", *args.per_pass.split(",")]:
            cmd = [sys.executable, __file__, "--worker", what, "--threads", str(threads),
                   "--samples", str(args.samples), "--size", str(args.size),
                   "--radius", str(args.radius), "--eps", str(args.eps),
                   "--memory-budget", args.memory_budget, "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"resnet50 (timm, random weights), 1 x 3 x {args.size} x {args.size}, saliency, "
          f"n = {args.samples}, budget {args.memory_budget}, torch {torch.__version__}, "
          f"load {os.getloadavg()[0]:.1f}")
    print("| threads | configuration | s / image | s / sample | passes | peak RSS |")
    print("|---|---|---|---|---|---|")
    single = {r["threads"]: r for r in rows if r["per_pass"] == "single"}
    for r in rows:
        if r["per_pass"] == "single":
            print(f"| {r['threads']} | one attribution g(x) (noise: "
                  f"{1e3 * r['noise_seconds_per_sample']:.1f} ms / sample; A = "
                  f"{format_size(r['activation_bytes'])}) | {r['seconds']:.2f} | - | 1 | "
                  f"{format_size(r['peak_rss'])} |")
            continue
        per = r["seconds"] / args.samples
        ratio = per / single[r["threads"]]["seconds"]
        print(f"| {r['threads']} | n = {args.samples}, copies per pass {r['per_pass']} | "
              f"{r['seconds']:.1f} | {per:.3f} ({ratio:.2f}x g) | {r['passes']} | "
              f"{format_size(r['peak_rss'])} |")


if __name__ == "__main__":
    main()
