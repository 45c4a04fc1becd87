"""Time the ways of computing full attribution Jacobians, in one process.

Usage (from the repository root)::

    python benchmarks/bench_jacobian.py [--steps 50] [--samples 2] [--threads 2]

Model: ``sample_models/digits_softplus.pt2`` (d = 784); method: integrated gradients.
Candidates: attrcert's ``loop`` and ``replicate`` strategies (with and without batch
sharing), and the obvious alternatives on the same attribution: a plain per-row
``torch.autograd.grad`` loop over all rows, ``is_grads_batched``, ``torch.func.jacrev``,
``torch.func.jacfwd`` and ``torch.autograd.functional.jacobian``. Every result is
checked against attrcert's to 1e-4 relative (float32). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from attrcert.attributions import get_method, resolve_target
from attrcert.jacobian import attribution_jacobian

ROOT = Path(__file__).resolve().parents[1]


def ig_function(model, target: int, steps: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """IG of one sample ``(C, H, W)`` -> ``(d,)`` written with torch.func (for jacrev/jacfwd)."""
    alphas = torch.arange(1, steps + 1, dtype=torch.float32) / steps

    def f_sum(path: torch.Tensor) -> torch.Tensor:
        return model(path)[:, target].sum()

    def g(x1: torch.Tensor) -> torch.Tensor:
        path = alphas.view(-1, 1, 1, 1) * x1.unsqueeze(0)
        return (x1 * torch.func.grad(f_sum)(path).mean(0)).flatten()

    return g


def per_row_all(attribution, model, x, target) -> torch.Tensor:
    leaf = x.clone().requires_grad_(True)
    g = attribution(model, leaf, target, create_graph=True).flatten()
    rows = [torch.autograd.grad(g[i], leaf, retain_graph=True)[0].flatten()
            for i in range(g.numel())]
    return torch.stack(rows)[None]


def batched_grads(attribution, model, x, target, chunk: int = 64) -> torch.Tensor:
    leaf = x.clone().requires_grad_(True)
    g = attribution(model, leaf, target, create_graph=True).flatten()
    d = g.numel()
    eye = torch.eye(d)
    out = [torch.autograd.grad(g, leaf, eye[s : s + chunk], retain_graph=True,
                               is_grads_batched=True)[0].reshape(-1, d)
           for s in range(0, d, chunk)]
    return torch.cat(out)[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds over all candidates; the median is kept")
    parser.add_argument("--skip-slow", action="store_true", help="only attrcert's strategies")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = torch.export.load(str(ROOT / "sample_models/digits_softplus.pt2")).module()
    images = torch.load(ROOT / "sample_models/digits.pt", weights_only=True)[: args.samples]
    target = resolve_target(model, images, None)
    ig = get_method("integrated_gradients", steps=args.steps)
    n = images.shape[0]

    def ours(strategy: str, batch: int, chunk: int | None = None):
        def run():
            parts = [attribution_jacobian(ig, model, images[i : i + batch],
                                          target[i : i + batch], strategy=strategy,
                                          chunk_size=chunk) for i in range(0, n, batch)]
            return torch.cat(parts)
        return run

    def one_by_one(fn):
        return lambda: torch.cat([fn(images[i : i + 1], int(target[i])) for i in range(n)])

    candidates: list[tuple[str, Callable[[], torch.Tensor]]] = [
        ("attrcert loop, 1 sample per graph", ours("loop", 1)),
        (f"attrcert loop, {n} samples share each pass", ours("loop", n)),
        ("attrcert replicate, chunk 8", ours("replicate", 1, 8)),
        ("attrcert replicate, chunk 32", ours("replicate", 1, 32)),
    ]
    if not args.skip_slow:
        candidates += [
            ("per-row autograd.grad loop over all d rows", one_by_one(
                lambda x, y: per_row_all(ig, model, x, torch.tensor([y])))),
            ("autograd.grad is_grads_batched (chunk 64)", one_by_one(
                lambda x, y: batched_grads(ig, model, x, torch.tensor([y])))),
            ("torch.func.jacrev (chunk 64)", one_by_one(
                lambda x, y: torch.func.jacrev(ig_function(model, y, args.steps),
                                               chunk_size=64)(x[0]).reshape(1, 784, 784))),
            ("torch.func.jacfwd", one_by_one(
                lambda x, y: torch.func.jacfwd(ig_function(model, y, args.steps))(
                    x[0]).reshape(1, 784, 784))),
            ("torch.autograd.functional.jacobian", one_by_one(
                lambda x, y: torch.autograd.functional.jacobian(
                    lambda z: ig(model, z, torch.tensor([y]), create_graph=True).flatten(),
                    x).reshape(1, 784, 784))),
        ]
    attribution_jacobian(ig, model, images[:1], target[:1])  # warm-up: allocator, lazy init
    # Round robin, so that drift of the machine hits every candidate alike; median kept.
    times: dict[str, list[float]] = {name: [] for name, _ in candidates}
    errors: dict[str, float] = {}
    reference = None
    for _ in range(args.repeat):
        for name, fn in candidates:
            start = time.perf_counter()
            jac = fn()
            times[name].append((time.perf_counter() - start) / n)
            if reference is None:
                reference = jac
            err = ((jac - reference).norm() / reference.norm()).item()
            assert err < 1e-4, f"{name} disagrees: relative error {err:.2e}"
            errors[name] = err
            print(f"  {name}: {times[name][-1]:.2f} s/sample", flush=True)
    rows = [(name, statistics.median(times[name]), errors[name]) for name, _ in candidates]
    base = rows[0][1]
    print(f"\nd = 784, IG m = {args.steps}, {n} samples, {args.threads} threads, median of "
          f"{args.repeat} rounds, torch {torch.__version__}\n")
    print("| method | s / sample | vs attrcert loop | rel. diff |")
    print("|---|---|---|---|")
    for name, seconds, err in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / base:.1f}x | {err:.1e} |")


if __name__ == "__main__":
    main()
