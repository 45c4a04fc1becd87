"""Integrated gradients' spectrum from a random start against the warm start (the top
singular vector of the Jacobian of IG with an eighth of the points, docs/math.md §7).

Usage (from the repository root)::

    python benchmarks/bench_warm_start.py                         # m = 8 at 64-160 px
    python benchmarks/bench_warm_start.py --sides 224 --steps 16 --only warm

Model: timm's ``resnet18`` made smooth as in ``bench_speed.py`` (Softplus, average-pooled
stem, 1000 classes, random weights), exported per size; input: ``china.jpg`` resized; one
thread. Each row runs :func:`attrcert.spectral.spectrum_iterative` (Golub-Kahan, ``tol``
1e-4) on the predicted class, once with the warm start forced off (``WARM_MIN_D`` above
``d``) and once on; columns: seconds, ``J``'s products, the coarse products, ``xi_max``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_speed import build  # noqa: E402

import attrcert  # noqa: E402
from attrcert.attributions import get_method  # noqa: E402
from attrcert.spectral import iterative  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", default="64,96,128,160")
    parser.add_argument("--steps", type=int, default=8, help="IG m")
    parser.add_argument("--only", choices=("both", "warm", "random"), default="both")
    args = parser.parse_args()
    torch.set_num_threads(1)
    starts = ("random", "warm") if args.only == "both" else (args.only,)
    print("| px | m | start | s | products | coarse products | xi_max |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for side in (int(s) for s in args.sides.split(",")):
            model = attrcert.load_model(str(build("resnet18", side, Path(tmp))))
            photo = Image.fromarray(load_sample_image("china.jpg")).resize(
                (side, side), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255).permute(2, 0, 1)
            x = x[None]
            with torch.no_grad():
                target = model(x).argmax(1)
            ig = get_method("integrated_gradients", steps=args.steps)
            for start in starts:
                iterative.WARM_MIN_D = 1 if start == "warm" else x.numel() + 1
                began = time.perf_counter()
                s = iterative.spectrum_iterative(ig, model, x, target)
                seconds = time.perf_counter() - began
                coarse = 0 if s.start_products is None else int(s.start_products.sum())
                assert s.products is not None
                print(f"| {side} | {args.steps} | {start} | {seconds:.1f} | "
                      f"{int(s.products.sum())} | {coarse} | {float(s.xi_max[0]):.8g} |",
                      flush=True)


if __name__ == "__main__":
    main()
