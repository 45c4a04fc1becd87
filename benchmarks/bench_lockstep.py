"""Several samples' spectra in lockstep (one pass of products per round for all of them)
against one sample at a time: where batching the samples pays.

Usage (from the repository root)::

    python benchmarks/bench_lockstep.py                              # 32-128 px, 1 thread
    python benchmarks/bench_lockstep.py --sides 224 --methods saliency --samples 4
    python benchmarks/bench_lockstep.py --device cuda --sides 64,224  # on a GPU

Model: timm's ``resnet18`` made smooth as in ``bench_speed.py`` (Softplus, average-pooled
stem, 1000 classes, random weights), exported per size; inputs: ``--samples`` crops of
scikit-learn's two photos, resized. Each row runs
:func:`attrcert.spectral.spectrum_iterative` (``tol`` 1e-4, the default start) on the
predicted classes twice in one process, ``samples_per_pass=1`` and ``=--samples``;
columns: seconds per image of each, their ratio, the products (the same in both by
construction), the largest relative difference of ``xi_max``.
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
from attrcert.spectral import spectrum_iterative  # noqa: E402


def photos(n: int, side: int) -> torch.Tensor:
    """``n`` different square crops of the two bundled photos, ``side`` px, in [0, 1]."""
    crops = []
    for k in range(n):
        image = load_sample_image(("china.jpg", "flower.jpg")[k % 2])
        h, w = image.shape[:2]
        size = min(h, w) - 40 * (k // 2)
        left = (w - size) * (k // 2 % 3) // 2
        crop = Image.fromarray(image[:size, left : left + size]).resize((side, side),
                                                                         Image.BILINEAR)
        crops.append(torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255)
                     .permute(2, 0, 1))
    return torch.stack(crops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", default="32,64,96,128")
    parser.add_argument("--methods", default="saliency,integrated_gradients")
    parser.add_argument("--steps", type=int, default=8, help="IG m")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{args.samples} samples, {args.threads} thread(s), device {device}, torch "
          f"{torch.__version__}")
    print("| px | method | one at a time (s / image) | lockstep (s / image) | ratio | "
          "products / image | xi_max rel. diff |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for side in (int(s) for s in args.sides.split(",")):
            model = attrcert.load_model(str(build("resnet18", side, Path(tmp))))
            model = model.to(device)
            x = photos(args.samples, side).to(device)
            with torch.no_grad():
                target = model(x).argmax(1)
            for name in args.methods.split(","):
                method = get_method(name, steps=args.steps)
                seconds, spectra = [], []
                for group in (1, args.samples):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    began = time.perf_counter()
                    spectra.append(spectrum_iterative(method, model, x, target,
                                                      samples_per_pass=group))
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds.append((time.perf_counter() - began) / args.samples)
                one, many = spectra
                assert one.products is not None
                diff = float(((many.xi_max - one.xi_max).abs() / one.xi_max).max())
                label = f"IG m = {args.steps}" if name == "integrated_gradients" else name
                print(f"| {side} | {label} | {seconds[0]:.3g} | {seconds[1]:.3g} | "
                      f"{seconds[1] / seconds[0]:.2f}x | "
                      f"{float(one.products.double().mean()):.1f} | {diff:.1e} |",
                      flush=True)


if __name__ == "__main__":
    main()
