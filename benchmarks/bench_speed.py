"""Seconds per image of an l2 certificate at ImageNet size, this checkout against an earlier
commit of attrcert, in one run on the same machine (issue 23's targets).

Usage (from the repository root; a quiet machine, see BENCHMARKS.md)::

    python benchmarks/bench_speed.py                          # every case, against 14f44d9
    python benchmarks/bench_speed.py --cases r18-sal-160 --against HEAD~3
    python benchmarks/bench_speed.py --threads 2 --cases r50-sal-224 --only new

Models: timm's own ``resnet18`` / ``resnet50`` (random weights, seeded) with Softplus in
place of ReLU and average pooling in place of the stem's max-pooling, so that they are
smooth, 1000 classes, exported with ``torch.export`` (dynamic batch) into a temporary
folder. Input: scikit-learn's ``china.jpg`` photo resized to the case's size. Each case
runs ``attrcert.certify(..., eps=EPS, norm=2, spectral="iterative")`` (the CLI's path:
``xi_max``, ``c``, ``T'_e``, Proposition 1) on one image in its own subprocess, once per
checkout, interleaved, with ``--threads`` torch threads. The earlier commit is
``git archive``d into a temporary folder and imported from there with the same torch.
Columns: seconds of ``certify`` per image (the model loaded and warmed up before), peak
RSS of the worker, ``xi_max`` and ``label_radius`` of each, and where the new version's
time went (attribution and spectrum / Proposition 1 / the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: name -> (architecture, side, method, steps)
CASES = {
    "r18-sal-160": ("resnet18", 160, "saliency", 1),
    "r18-sal-224": ("resnet18", 224, "saliency", 1),
    "r18-ig8-160": ("resnet18", 160, "integrated_gradients", 8),
    "r18-ig16-224": ("resnet18", 224, "integrated_gradients", 16),
    "r50-sal-224": ("resnet50", 224, "saliency", 1),
    "r18-sal-64": ("resnet18", 64, "saliency", 1),  # a quick check of the script
}
DEFAULT = ("r18-sal-160", "r18-sal-224", "r18-ig8-160", "r18-ig16-224", "r50-sal-224")
EPS = 0.01

WORKER = r"""
import json, resource, sys, time
import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
torch.set_num_threads(int(sys.argv[5]))
import attrcert
from attrcert import certify
new = sys.argv[6] == "new"
phases = {"label": 0.0, "analyse": 0.0}
if new:
    records, cert = sys.modules["attrcert.records"], sys.modules["attrcert.run"]  # analyse()
    real_label, real_analyse = records.label_test, cert.analyse
    def label_test(*a, **k):
        t = time.perf_counter(); out = real_label(*a, **k)
        phases["label"] += time.perf_counter() - t; phases["classes"] = int(out.classes.sum())
        return out
    def analyse(*a, **k):
        t = time.perf_counter(); out = real_analyse(*a, **k)
        phases["analyse"] += time.perf_counter() - t
        if out.spectrum.products is not None:
            phases["products"] = int(out.spectrum.products.sum())
        if getattr(out.spectrum, "start_products", None) is not None:
            phases["coarse"] = int(out.spectrum.start_products.sum())
        return out
    records.label_test, cert.analyse = label_test, analyse
model = attrcert.load_model(sys.argv[1])
side = int(sys.argv[2])
photo = Image.fromarray(load_sample_image("china.jpg")).resize((side, side), Image.BILINEAR)
x = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255).permute(2, 0, 1)[None]
with torch.no_grad():
    model(x)
start = time.perf_counter()
rec = certify(model, x, eps=float(sys.argv[7]), norm=2, method=sys.argv[3],
              steps=int(sys.argv[4]), spectral="iterative")[0]
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "xi_max": rec["xi_max"], "T_e_prime": rec["T_e_prime"],
                  "label_radius": rec["label_radius"], "phases": phases,
                  "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}))
"""


def build(arch: str, side: int, folder: Path) -> Path:
    """timm's ``arch`` made smooth (Softplus, average-pooled stem), exported to ``folder`` for
    ``side`` x ``side`` inputs (dynamic batch, static spatial size)."""
    import timm
    import torch

    class Softplus(torch.nn.Softplus):  # timm passes inplace=True
        def __init__(self, inplace: bool = False, **kwargs: object) -> None:
            super().__init__()

    path = folder / f"{arch}-{side}.pt2"
    if path.exists():
        return path
    torch.manual_seed(0)
    model = timm.create_model(arch, act_layer=Softplus, num_classes=1000).eval()
    model.maxpool = torch.nn.AvgPool2d(3, 2, 1)
    batch = torch.export.Dim("batch", min=1)
    example = torch.rand(2, 3, side, side)
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), path)
    return path


def checkout(commit: str, folder: Path) -> Path:
    """The ``attrcert`` package of ``commit`` unpacked into ``folder``."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "attrcert"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def run(root: Path, model: Path, side: int, method: str, steps: int, threads: int,
        which: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(model), str(side), method,
                          str(steps), str(threads), which, str(EPS)],
                         env=env, capture_output=True, text=True, cwd=root)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(DEFAULT))
    parser.add_argument("--against", default="14f44d9")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=("both", "new", "old"), default="both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        old = checkout(args.against, folder / "old") if args.only != "new" else None
        print("| case | old s | new s | old/new | xi_max rel. diff | label radius old / new "
              "| RSS old / new GB | new: analyse / label s (classes) / products |")
        print("|---|---|---|---|---|---|---|---|")
        for name in args.cases.split(","):
            arch, side, method, steps = CASES[name]
            model = build(arch, side, folder)
            started = time.time()
            new = run(ROOT, model, side, method, steps, args.threads, "new") \
                if args.only != "old" else {}
            prev = run(old, model, side, method, steps, args.threads, "old") \
                if old is not None else {}
            ratio = (prev["seconds"] / new["seconds"] if "seconds" in prev and "seconds" in new
                     else None)
            diff = (abs(new["xi_max"] - prev["xi_max"]) / prev["xi_max"]
                    if prev.get("xi_max") and new.get("xi_max") is not None else None)
            phases = new.get("phases", {})
            cells = [
                name,
                f"{prev['seconds']:.1f}" if "seconds" in prev else prev.get("error", "-"),
                f"{new['seconds']:.1f}" if "seconds" in new else new.get("error", "-"),
                f"{ratio:.2f}x" if ratio else "-",
                f"{diff:.1e}" if diff is not None else "-",
                f"{prev.get('label_radius', '-')} / {new.get('label_radius', '-')}",
                f"{prev.get('rss_gb', 0):.2f} / {new.get('rss_gb', 0):.2f}",
                (f"{phases.get('analyse', 0):.1f} / {phases.get('label', 0):.1f} "
                 f"({phases.get('classes', '-')}) / {phases.get('products', '-')}"
                 + (f" + {phases['coarse']} coarse" if phases.get("coarse") else "")),
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
            print(f"  ({time.time() - started:.0f} s wall, load "
                  f"{os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
