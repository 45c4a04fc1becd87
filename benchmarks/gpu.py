"""The GPU checks in one command (``benchmarks/gpu.sh`` installs, then runs this): the
bundled sample with ``--device``, the same under torchrun with one rank, and the timm zoo
(``bench_zoo.py``: saliency and integrated gradients, m = 16, at 224 px, 1000 classes), in
about 8 minutes on one H200; then one table: run, model, method, seconds per image, Jacobian
products per image, peak GPU memory, and what was checked.

    benchmarks/gpu.sh                            # on the GPU machine (--device cuda)
    benchmarks/gpu.sh --no-install --device cpu --quick   # the same path on a CPU, tiny

``--quick`` takes ``bench_zoo.py --quick --size 32 --classes 10`` (two models, m = 4).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ["bound", "sample_models/digits_softplus.pt2", "sample_models/digits", "--labels",
          "sample_models/digits/labels.csv", "--eps", "0.1"]  # the README's Quickstart


def sample_worker(device: str, output: str) -> None:
    """The Quickstart's ``bound`` in this process on ``device``; print its peak GPU bytes."""
    import torch

    from attrcert.cli import main

    try:
        main([*SAMPLE, "--device", device, "--quiet", "--output", output])
    except SystemExit as exc:
        if exc.code:
            raise
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    print("PEAK " + json.dumps(peak))


def run(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess | None, float]:
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env = {k: v for k, v in env.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start
    return proc, time.perf_counter() - start


def records(path: Path) -> list[dict]:
    doc = json.loads(path.read_text())
    return doc["samples"] if isinstance(doc, dict) else doc


def failure(proc: subprocess.CompletedProcess | None, seconds: float) -> str:
    if proc is None:
        return f"timed out after {seconds:.0f} s"
    last = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return f"exit {proc.returncode}: {last[:100]}"


def sample_rows(device: str, folder: Path) -> list[tuple[str, ...]]:
    """The Quickstart in one process, then under torchrun with one rank: same records."""
    rows: list[tuple[str, ...]] = []
    single = folder / "single.json"
    proc, seconds = run([sys.executable, __file__, "--sample-worker", device, str(single)],
                        timeout=240)
    if proc is None or proc.returncode != 0:
        return [("sample", "digits_softplus", "bound", failure(proc, seconds), "", "", "")]
    ref = records(single)
    peak = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("PEAK "))
    gpu = "" if peak is None else f"{peak / 2**30:.2f} GB"
    rows.append(("sample", "digits_softplus", ref[0]["method"],
                 f"{seconds / len(ref):.3g}", "", gpu,
                 f"{len(ref)} images, exit 0 (incl. start-up)"))
    ranked = folder / "torchrun.json"
    proc, seconds = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                         "--nproc-per-node", "1", "-m", "attrcert", *SAMPLE, "--device",
                         device, "--quiet", "--output", str(ranked)], timeout=240)
    if proc is None or proc.returncode != 0:
        rows.append(("torchrun, 1 rank", "digits_softplus", "bound",
                     failure(proc, seconds), "", "", ""))
        return rows
    got = records(ranked)
    same = len(got) == len(ref) and all(
        abs(a["xi_max"] - b["xi_max"]) <= 1e-6 * max(abs(b["xi_max"]), 1e-12)
        for a, b in zip(sorted(got, key=lambda r: r["index"]),
                        sorted(ref, key=lambda r: r["index"]), strict=True))
    rows.append(("torchrun, 1 rank", "digits_softplus", got[0]["method"],
                 f"{seconds / len(got):.3g}", "", "",
                 "xi_max as in one process" if same else "RECORDS DIFFER"))
    return rows


def zoo_rows(args: argparse.Namespace, folder: Path, deadline: float) -> list[tuple[str, ...]]:
    out = folder / "zoo.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_zoo.py"), "--device", args.device,
           "--deadline", str(deadline), "--json", str(out), "--threads", str(args.threads)]
    cmd += ["--quick", "--size", "32", "--classes", "10"] if args.quick else []
    proc, seconds = run(cmd, timeout=deadline + 60)
    if proc is None or not out.exists():
        return [("timm zoo", "", "", failure(proc, seconds), "", "", "")]
    rows: list[tuple[str, ...]] = []
    for res in json.loads(out.read_text()):
        method = ("saliency" if res["method"] == "saliency" else "IG")
        name = f"timm zoo, {res['size']} px"
        if "failed" in res:
            rows.append((name, res["model"], method, res["failed"], "", "", ""))
            continue
        gpu = "" if res["gpu_peak_gb"] is None else f"{res['gpu_peak_gb']:.2f} GB"
        rows.append((name, res["model"], method, f"{res['seconds']:.3g}",
                     f"{res['products']:.0f}" + (f" + {res['start_products']:.0f} coarse"
                                                 if res.get("start_products") else ""), gpu,
                     "attack within T'_e" if res["unbeaten"] else
                     "ATTACK BEAT T'_e" if res["smooth"] else "non-smooth: estimates"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke run)")
    parser.add_argument("--budget", type=float, default=450,
                        help="seconds for everything (the zoo takes what the sample leaves)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--sample-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sample_worker:
        sample_worker(*args.sample_worker)
        return
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("sample and torchrun ...", file=sys.stderr, flush=True)
        rows = sample_rows(args.device, folder)
        left = args.budget - (time.monotonic() - start)
        print(f"timm zoo ({left:.0f} s left) ...", file=sys.stderr, flush=True)
        rows += zoo_rows(args, folder, max(left, 30))
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"\ndevice {args.device} ({gpu}), torch {torch.__version__}, "
          f"{time.monotonic() - start:.0f} s in all\n")
    print("| run | model | method | s / image | products / image | peak GPU | check |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if any("ATTACK" in r[-1] or "DIFFER" in r[-1] or r[3].startswith(("exit", "timed"))
           for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
