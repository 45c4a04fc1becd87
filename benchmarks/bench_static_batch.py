"""What a static-batch export costs against a dynamic one (issue 22): the same timm model
exported with a dynamic batch and with ``torch.export.export(model, (torch.randn(1, 3, S,
S),))``, which attrcert runs in :class:`attrcert.loading.batching.StaticBatch`: under
``torch.vmap`` (what it does when vmap agrees with calling the model row by row), and row
by row (its fallback, forced here).

Usage (from the repository root)::

    python benchmarks/bench_static_batch.py                        # efficientnet_b0, 224
    python benchmarks/bench_static_batch.py --model convnext_atto --size 64 --rounds 5

Per candidate, on one seeded image, in rounds run round robin (the median is kept; the
first call of "static, vmap" includes its one-time check of vmap against row-by-row calls):

- ``attribute``: integrated gradients with ``--steps`` points (one pass of ``m`` stacked
  rows: the first-order pass of every record);
- ``J^T u``: one product of the attribution's Jacobian with a vector (the double backward
  that the matrix-free solver repeats for ``xi_max``), IG with ``--steps`` points;
- ``certify``: ``attrcert.certify`` end to end (``--certify-steps`` points, iterative
  spectrum at ``tol = 1e-2``), unless ``--no-certify``.

The values of both candidates are compared (relative difference in the last column).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attrcert import AttributionSpec, SolverOptions, attribute, certify  # noqa: E402
from attrcert.loading import load_model  # noqa: E402


def export(net: torch.nn.Module, size: int, dynamic: bool, path: Path) -> torch.nn.Module:
    example = torch.randn(2 if dynamic else 1, 3, size, size)
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(net, (example,), dynamic_shapes=shapes), path)
    return load_model(path)


def jtu(model: torch.nn.Module, x: torch.Tensor, u: torch.Tensor, steps: int) -> torch.Tensor:
    xr = x.clone().requires_grad_(True)
    g = attribute(model, xr, method="integrated_gradients", steps=steps, target=torch.tensor([0]),
                  create_graph=True)
    (out,) = torch.autograd.grad((g * u).sum(), xr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--certify-steps", type=int, default=8)
    parser.add_argument("--no-certify", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import timm

    torch.manual_seed(0)
    net = timm.create_model(args.model, pretrained=False, num_classes=10).eval()
    with tempfile.TemporaryDirectory() as tmp:
        models = {"dynamic batch": export(net, args.size, True, Path(tmp) / "d.pt2"),
                  "static, vmap": export(net, args.size, False, Path(tmp) / "s.pt2"),
                  "static, row by row": export(net, args.size, False, Path(tmp) / "s.pt2")}
    models["static, row by row"].vectorized = False  # the fallback
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, args.size, args.size, generator=gen)
    u = torch.randn(1, 3, args.size, args.size, generator=gen)
    tasks: dict[str, Callable[[torch.nn.Module], torch.Tensor]] = {
        "attribute": lambda m: attribute(m, x, method="integrated_gradients",
                                         steps=args.steps, target=torch.tensor([0])),
        "J^T u": lambda m: jtu(m, x, u, args.steps),
    }
    if not args.no_certify:
        spec = AttributionSpec(method="integrated_gradients", steps=args.certify_steps)
        solver = SolverOptions(spectral="iterative", tol=1e-2)
        tasks["certify"] = lambda m: torch.tensor(
            certify(m, x, eps=0.01, attribution=spec, solver=solver)[0]["xi_max"])
    times: dict[tuple[str, str], list[float]] = {}
    values: dict[tuple[str, str], torch.Tensor] = {}
    for _ in range(args.rounds):
        for task, run in tasks.items():
            for name, model in models.items():
                start = time.perf_counter()
                values[task, name] = run(model).detach().double()
                times.setdefault((task, name), []).append(time.perf_counter() - start)
    print(f"{args.model} at {args.size}x{args.size}, IG m = {args.steps} "
          f"(certify: m = {args.certify_steps}), {args.threads} thread(s), torch "
          f"{torch.__version__}, median of {args.rounds} rounds\n")
    print("| pass | candidate | s | vs dynamic | rel. diff |")
    print("|---|---|---|---|---|")
    for task in tasks:
        dyn = statistics.median(times[task, "dynamic batch"])
        for name in models:
            sec = statistics.median(times[task, name])
            a, b = values[task, name], values[task, "dynamic batch"]
            diff = float((a - b).norm() / b.norm().clamp_min(1e-30))
            print(f"| {task} | {name} | {sec:.3f} | {sec / dyn:.2f}x | {diff:.1e} |")
    vmapped = models["static, vmap"].vectorized  # type: ignore[union-attr]
    print(f"\nstatic, vmap: vectorized = {vmapped} (decided on its first call)")


if __name__ == "__main__":
    main()
