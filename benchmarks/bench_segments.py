"""What cutting integrated gradients' points into passes costs: seconds of the matrix-free
spectrum (``xi_max``, ``v_max``) with all m points in one kept graph against
``points_per_pass`` = 8, 4, 2, 1 (the rest rebuilt for every product), in the same process,
on a zoo architecture; with the graph each keeps (measured bytes of one point times the
points a pass holds) and the agreement of ``xi_max``.

Usage (from the repository root)::

    python benchmarks/bench_segments.py                      # ResNet-18 Softplus at 3x32x32
    python benchmarks/bench_segments.py --arch vit --size 32 --steps 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_handwritten import ARCHS  # noqa: E402

from attrcert.attributions import get_method  # noqa: E402
from attrcert.sizing import point_bytes  # noqa: E402
from attrcert.spectral import JacobianProducts, segment_sizes, spectrum_iterative  # noqa: E402
from zoo import seeded  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet", choices=sorted(ARCHS))
    parser.add_argument("--size", type=int, default=32, choices=(32, 224))
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--per-pass", default="none,8,4,2,1")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    label, build = ARCHS[args.arch][args.size]
    model = seeded(lambda: build(10)).eval()
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0])
    ig = get_method("integrated_gradients", steps=args.steps)
    per_point = point_bytes(ig, model, x, target)
    counted = {"passes": 0}
    original = JacobianProducts.__init__

    def init(self, *a, **k):  # type: ignore[no-untyped-def]
        original(self, *a, **k)
        counted["ops"] = self

    JacobianProducts.__init__ = init  # type: ignore[method-assign]
    print(f"{label} 3x{args.size}x{args.size}, IG m = {args.steps}, {args.threads} thread(s), "
          f"torch {torch.__version__}; one point's graph {per_point / 1e6:.1f} MB\n")
    print("| points per pass | kept + rebuilt per product | graph held | seconds | ratio | "
          "products | graphs built | xi_max rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    reference = None
    for text in args.per_pass.split(","):
        per_pass = None if text == "none" else int(text)
        sizes = segment_sizes(args.steps, per_pass)
        kept = sizes[0] if (len(sizes) == 1 or (per_pass or 0) > 1) else 0
        held = per_point * (kept + (1 if len(sizes) > 1 else 0))
        start = time.perf_counter()
        spectrum = spectrum_iterative(ig, model, x, target, points_per_pass=per_pass)
        seconds = time.perf_counter() - start
        xi = float(spectrum.xi_max[0])
        if reference is None:
            reference = (seconds, xi)
        ops = counted["ops"]
        print(f"| {text} | {kept} + {args.steps - kept} | {held / 1e6:.0f} MB | {seconds:.3g} | "
              f"{seconds / reference[0]:.2f}x | {int(spectrum.products[0])} | {ops.passes} | "
              f"{abs(xi - reference[1]) / reference[1]:.1e} |", flush=True)


if __name__ == "__main__":
    main()
