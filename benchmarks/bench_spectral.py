"""Time ``xi_max`` / ``v_max`` by the full Jacobian against the matrix-free solvers.

Usage (from the repository root)::

    python benchmarks/bench_spectral.py [--cases 784,3072] [--samples 2] [--threads 2]
    python benchmarks/bench_spectral.py --cases 150528 --timeout 1500   # ResNet-18 shape

Cases (integrated gradients, zero baseline, target = the predicted class):

- ``784``: ``sample_models/digits_softplus.pt2`` on the sample digits, IG m = 50 (``--steps``);
- ``3072``: a small Softplus / average-pool CNN on random 3x32x32 inputs (random weights,
  seeded), IG m = 50;
- ``150528``: a ResNet-18-shaped network (BasicBlock, [2, 2, 2, 2], Softplus instead of
  ReLU, average instead of max pooling, so it is twice differentiable; random weights,
  seeded; eval-mode BatchNorm) on one random 3x224x224 input, IG m = 16 (``--big-steps``).
  The full Jacobian is not run there: ``J`` alone is ``d^2`` float32 = 90.6 GB.

Methods: ``full`` (attrcert: ``attribution_jacobian``, loop strategy, + ``spectrum_full``),
``arpack``, ``lanczos`` and ``propack`` (:func:`attrcert.spectral.spectrum_iterative` with
that solver), ``blocked`` (:func:`attrcert.spectral.abs_sum_gram_blocked`, Theorem 2's l-inf
constant without holding ``J``), and at d = 784 two other ways to the full Jacobian, each
followed by ``spectrum_full``: ``torch.autograd.functional.jacobian`` and
``torch.func.jacrev`` (chunk 64).

Every (case, method) runs in a fresh subprocess, so that its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own; the table gives the peak and
its rise over the process after loading the model and one plain attribution (warm-up).
Times include building the attribution graph. ``products`` counts Jacobian-vector
products per sample: VJPs ``J^T u`` and second-order ``J v`` for the iterative solvers,
row VJPs for the full Jacobian (rows that are exact zeros of ``u * G`` need none).
``xi_max rel. diff`` is ``max |xi / xi_ref - 1|`` over the samples, ``xi_ref`` from
``full`` (from ``arpack`` where ``full`` is skipped). ``load`` is the 1-minute load
average when the worker finished: on a 2-core machine, anything above about 2 means
another process shared the cores and the times are inflated (oversubscribed OpenMP
threads slow small autograd passes by up to 10x). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attrcert.attributions import Attribution, get_method  # noqa: E402
from attrcert.jacobian import attribution_jacobian  # noqa: E402
from attrcert.loading import load_model  # noqa: E402
from attrcert.spectral import (  # noqa: E402
    JacobianProducts,
    Spectrum,
    abs_sum_gram_blocked,
    spectrum_full,
    spectrum_iterative,
)

CASES = ("784", "3072", "150528")
METHODS = {
    "784": ("full", "autograd.functional", "jacrev", "arpack", "lanczos", "propack", "blocked"),
    "3072": ("full", "arpack", "lanczos", "propack", "blocked"),
    "150528": ("arpack", "lanczos", "propack"),
}


def small_cnn() -> nn.Module:
    """Softplus / average-pool CNN for 3x32x32 inputs, 10 classes (d = 3072)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.Softplus(), nn.AvgPool2d(2),  # 32 -> 16
        nn.Conv2d(16, 32, 3, padding=1), nn.Softplus(), nn.AvgPool2d(2),  # 16 -> 8
        nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.Softplus(), nn.Linear(64, 10),
    )


class BasicBlock(nn.Module):
    """ResNet's BasicBlock with Softplus: ``act(bn(conv(act(bn(conv x)))) + shortcut x)``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.Softplus()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + self.shortcut(x))


def smooth_resnet18(classes: int = 1000) -> nn.Module:
    """ResNet-18's layout ([2, 2, 2, 2] BasicBlocks, 64-512 channels, 3x224x224 input) with
    Softplus and a 3x3/2 average-pool stem: twice differentiable (11.7 M parameters)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                               nn.Softplus(), nn.AvgPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


def setup(case: str, samples: int, steps: int, big_steps: int
          ) -> tuple[nn.Module, Tensor, Tensor, Attribution, int]:
    """Model, inputs, targets, attribution and IG steps of a case."""
    gen = torch.Generator().manual_seed(0)
    if case == "784":
        model = load_model(ROOT / "sample_models/digits_softplus.pt2")
        x = torch.load(ROOT / "sample_models/digits.pt", weights_only=True)[:samples]
    elif case == "3072":
        torch.manual_seed(0)
        model = small_cnn().eval()
        x = torch.rand(samples, 3, 32, 32, generator=gen)
    else:
        torch.manual_seed(0)
        model = smooth_resnet18().eval()
        x = torch.rand(1, 3, 224, 224, generator=gen)
        steps = big_steps
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        target = model(x).argmax(1)
    return model, x, target, get_method("integrated_gradients", steps=steps), steps


def ig_function(model: nn.Module, target: int, steps: int) -> Callable[[Tensor], Tensor]:
    """IG of one sample ``(C, H, W)`` -> ``(d,)`` written with torch.func (for jacrev)."""
    alphas = torch.arange(1, steps + 1, dtype=torch.float32) / steps

    def f_sum(path: Tensor) -> Tensor:
        return model(path)[:, target].sum()

    def g(x1: Tensor) -> Tensor:
        path = alphas.to(x1.device).view(-1, 1, 1, 1) * x1.unsqueeze(0)
        return (x1 * torch.func.grad(f_sum)(path).mean(0)).flatten()

    return g


def count_products(log_every: float | None) -> list[int]:
    """Count every ``JacobianProducts`` product (and log its time to stderr when asked)."""
    counter = [0]
    for name in ("matvec", "rmatvec"):
        original = getattr(JacobianProducts, name)

        def wrapped(self: JacobianProducts, v: Tensor, _f=original, _name=name) -> Tensor:
            start = time.perf_counter()
            out = _f(self, v)
            counter[0] += v.shape[0]
            if log_every is not None and counter[0] % log_every == 0:
                print(f"    product {counter[0]} ({_name}): {time.perf_counter() - start:.2f} s, "
                      f"peak RSS {peak_rss_mb():.0f} MB", file=sys.stderr, flush=True)
            return out

        setattr(JacobianProducts, name, wrapped)
    return counter


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(args: argparse.Namespace) -> None:
    """Run one (case, method) and print a JSON line."""
    torch.set_num_threads(args.threads)
    case, method = args.worker
    model, x, target, ig, steps = setup(case, args.samples, args.steps, args.big_steps)
    device = torch.device(args.device)
    model, x, target = model.to(device), x.to(device), target.to(device)
    n, d = x.shape[0], x[0].numel()
    ig(model, x[:1], target[:1])  # warm-up: allocator, lazy init
    base = peak_rss_mb()
    counter = count_products(args.log_every)
    xis: list[float] = []
    products: list[int] = []
    extra: list[float] = []
    start = time.perf_counter()
    for i in range(n):
        xi, yi = x[i : i + 1], target[i : i + 1]
        before = counter[0]
        spec: Spectrum | None = None
        if method == "full":
            spec = spectrum_full(attribution_jacobian(ig, model, xi, yi, strategy="loop"))
            products.append(int((xi != 0).sum()))
        elif method == "autograd.functional":
            jac = torch.autograd.functional.jacobian(
                lambda z, yi=yi: ig(model, z, yi, create_graph=True).flatten(), xi)
            spec = spectrum_full(jac.reshape(1, d, d))
            products.append(d)
        elif method == "jacrev":
            fn = ig_function(model, int(yi), steps)
            spec = spectrum_full(torch.func.jacrev(fn, chunk_size=64)(xi[0]).reshape(1, d, d))
            products.append(d)
        elif method in ("arpack", "lanczos", "propack"):
            spec = spectrum_iterative(ig, model, xi, yi, tol=args.tol, solver=method)
            assert spec.products is not None and int(spec.products[0]) == counter[0] - before
            products.append(counter[0] - before)
        else:  # blocked
            extra.append(float(abs_sum_gram_blocked(ig, model, xi, yi,
                                                    chunk_size=args.chunk)[0]))
            products.append(counter[0] - before)
        if spec is not None:
            xis.append(float(spec.xi_max[0]))
            if spec.abs_sum_gram is not None:
                extra.append(float(spec.abs_sum_gram[0]))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / n
    gpu_mb = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
              else None)
    print(json.dumps({"seconds": seconds, "products": products, "xi": xis, "abs_sum": extra,
                      "peak_mb": peak_rss_mb(), "base_mb": base, "d": d, "n": n,
                      "load": os.getloadavg()[0], "gpu_peak_mb": gpu_mb}))


def run_case(case: str, method: str, args: argparse.Namespace) -> dict | str:
    cmd = [sys.executable, __file__, "--worker", case, method, "--samples", str(args.samples),
           "--threads", str(args.threads), "--steps", str(args.steps), "--big-steps",
           str(args.big_steps), "--tol", str(args.tol), "--chunk", str(args.chunk),
           "--device", args.device]
    if args.log_every is not None:
        cmd += ["--log-every", str(args.log_every)]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=args.timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return f"timed out after {args.timeout} s"
    if proc.returncode != 0:
        return f"failed (exit {proc.returncode})"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="784,3072", help=f"comma-separated, of {CASES}")
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of each case's methods (default all)")
    parser.add_argument("--samples", type=int, default=2, help="inputs for d = 784 and 3072")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda[:N]; on CUDA the worker's JSON line also gives "
                        "gpu_peak_mb (torch.cuda.max_memory_allocated)")
    parser.add_argument("--steps", type=int, default=50, help="IG m for d = 784 and 3072")
    parser.add_argument("--big-steps", type=int, default=16, help="IG m for d = 150528")
    parser.add_argument("--tol", type=float, default=1e-4, help="spectrum_iterative's tol")
    parser.add_argument("--chunk", type=int, default=16, help="abs_sum_gram_blocked's chunk")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess")
    parser.add_argument("--log-every", type=int, default=None,
                        help="log every k-th product's time to stderr")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    wanted = None if args.methods is None else set(args.methods.split(","))
    rows = []
    for case in args.cases.split(","):
        if case not in CASES:
            parser.error(f"unknown case {case!r}: use {', '.join(CASES)}")
        results: dict[str, dict | str] = {}
        for method in METHODS[case]:
            if wanted is not None and method not in wanted:
                continue
            print(f"  d = {case}, {method} ...", file=sys.stderr, flush=True)
            results[method] = run_case(case, method, args)
            print(f"    {results[method]}", file=sys.stderr, flush=True)
        ref_name = "full" if isinstance(results.get("full"), dict) else "arpack"
        ref = results.get(ref_name)
        base_time = ref["seconds"] if isinstance(ref, dict) else None
        for method, res in results.items():
            rows.append((case, method, res, ref, base_time, ref_name))
    print(f"\nIG, {args.samples} samples at d = 784 / 3072 (m = {args.steps}), 1 at d = 150528 "
          f"(m = {args.big_steps}); {args.threads} threads; tol {args.tol}; blocked chunk "
          f"{args.chunk}; torch {torch.__version__}\n")
    print("| d | method | s / sample | speed-up vs ref | products / sample | peak RSS (MB) | "
          "RSS rise (MB) | xi_max | xi_max rel. diff vs ref | l-inf sum_ij abs(P_ij) | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case, method, res, ref, base_time, ref_name in rows:
        if isinstance(res, str):
            print(f"| {case} | {method} | {res} | | | | | | | | |")
            continue
        speed = f"{base_time / res['seconds']:.1f}x" if base_time else ""
        if method == ref_name:
            speed = "1.0x (ref)"
        prods = "/".join(str(p) for p in res["products"])
        xi = "/".join(f"{v:.6g}" for v in res["xi"])
        diff = ""
        if res["xi"] and isinstance(ref, dict) and ref["xi"]:
            diff = f"{max(abs(a / b - 1) for a, b in zip(res['xi'], ref['xi'], strict=True)):.1e}"
        linf = "/".join(f"{v:.6g}" for v in res["abs_sum"])
        if method == "blocked" and isinstance(ref, dict) and ref["abs_sum"]:
            worst = max(abs(a / b - 1) for a, b in zip(res["abs_sum"], ref["abs_sum"],
                                                       strict=True))
            linf += f" (rel. diff {worst:.1e})"
        print(f"| {case} | {method} | {res['seconds']:.3f} | {speed} | {prods} | "
              f"{res['peak_mb']:.0f} | {res['peak_mb'] - res['base_mb']:.0f} | {xi} | {diff} | "
              f"{linf} | {res.get('load', float('nan')):.1f} |")


if __name__ == "__main__":
    main()
