"""Seconds, Jacobian products and peak memory of an l2 certificate for every hand-written
zoo architecture (zoo/handwritten.py) at realistic sizes (CIFAR 3x32x32 and ImageNet 3x224x224;
the libraries' own models: bench_zoo.py).

Usage (from the repository root)::

    python benchmarks/bench_handwritten.py                                   # every case
    python benchmarks/bench_handwritten.py --sizes 32 --archs vit,resnet     # a subset
    python benchmarks/bench_handwritten.py --device cuda                     # the same on a GPU

Architectures (``zoo/handwritten.py``, ``torch.nn`` only, seeded random weights, eval-mode
BatchNorm with random statistics, 10 classes: CIFAR-10, or a 10-class ImageNet subset such
as Imagenette; see "Classes" below), at 32 / 224:

- ``vit``: ViT-Lite-7/4 (dim 256, 7 layers, 4 heads, MLP 2x) / **ViT-B/16** (dim 768,
  12 layers, 12 heads, MLP 4x, patch 16; 85.8 M parameters);
- ``swin``: one stage of Swin-style window / shifted-window attention (dim 96, 3 heads):
  patch 2, window 4, 4 blocks / patch 4, window 7, 2 blocks (Swin-T's first stage);
- ``mixer``: MLP-Mixer, patch 4, dim 256, 8 blocks / Mixer-B/16 (dim 768, 12 blocks);
- ``convnext``: stem 2, dims 64-256, depths 2-2-2 / ConvNeXt-T (stem 4, dims 96-768,
  depths 3-3-9-3);
- ``efficientnet``: EfficientNet-B0's stages (SiLU, squeeze-excitation) at both sizes;
- ``mobilenet``: MobileNetV3-Large-like stages with Hardswish (non-smooth) and a sigmoid
  gate (MobileNetV3's Hardsigmoid gate has no second derivative in autograd: refused);
- ``resnet``: ResNet-18-shaped (basic blocks 2-2-2-2, 3x3 stem) / **ResNet-50-shaped**
  (bottlenecks 3-4-6-3, 7x7 stem, 3x3 average pool), both with Softplus (smooth);
- ``resnet_relu``: the same with ReLU (non-smooth; saliency's Jacobian is then 0);
- ``maxpool``: a Softplus CNN with one max-pooling (width 32).

Each (architecture, size, method) runs ``attrcert.certify(..., norm=2, eps=EPS,
spectral="iterative")`` (the CLI's default path for these d: ``xi_max``, ``v_max``
matrix-free, ``c`` and ``T'_e``, the label test) on ``--images`` seeded random images, in
its own subprocess so that its peak RSS (``ru_maxrss``) is its own. Methods: saliency and
integrated gradients with m = 16 (``--steps``). ``products`` counts the matrix-free
operator applications (``J v`` and ``J^T u``) per image (``Spectrum.products``; the
records of ``certify`` do not carry it, so the worker counts them). ``--memory-budget``
is attrcert's: its planner measures the graph of one integrated-gradients point
(:func:`attrcert.sizing.point_bytes`) and cuts the m points into passes that fit
(:attr:`attrcert.plan.RunPlan.points_per_product_pass`); the row's notes give both. A worker whose
resident memory passes ``--rss-limit`` is stopped (a check on the planner). ``load`` is
the 1-minute load average when the worker finished (2 cores: above about 2, other
processes shared them).

Classes: Proposition 1's label test takes one gradient per class on a copy of each image
(:func:`attrcert.certify`'s label gradients), in passes of as many classes as the memory
budget allows, so its time grows with ``k`` (``--classes``) and its memory with the budget.
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
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attrcert import certify  # noqa: E402
from attrcert.attributions import get_method  # noqa: E402
from attrcert.memory import activation_bytes, format_size, parse_size  # noqa: E402
from attrcert.plan import plan_run  # noqa: E402
from attrcert.settings import SolverOptions  # noqa: E402
from attrcert.spectral import JacobianProducts  # noqa: E402
from zoo import seeded  # noqa: E402
from zoo.handwritten import (  # noqa: E402
    EFFICIENTNET_B0,
    Mixer,
    Swin,
    ViT,
    convnext,
    efficientnet,
    maxpool_cnn,
    mobilenet,
    resnet,
)

EPS = 0.1
MOBILENET_V3_LARGE = ((16, 16, 1, 1, 1, 3), (16, 24, 2, 2, 4, 3), (24, 40, 2, 3, 3, 5),
                      (40, 80, 2, 4, 6, 3), (80, 112, 1, 2, 6, 3), (112, 160, 2, 3, 6, 5))
Build = Callable[[int], nn.Module]
ARCHS: dict[str, dict[int, tuple[str, Build]]] = {
    "vit": {
        32: ("ViT-Lite-7/4", lambda k: ViT(image=32, patch=4, dim=256, depth=7, heads=4,
                                           mlp=2, classes=k)),
        224: ("ViT-B/16", lambda k: ViT(image=224, patch=16, dim=768, depth=12, heads=12,
                                        mlp=4, classes=k)),
    },
    "swin": {
        32: ("Swin-like, window 4", lambda k: Swin(patch=2, dim=96, depth=4, heads=3,
                                                   window=4, classes=k)),
        224: ("Swin-T stage 1, window 7", lambda k: Swin(patch=4, dim=96, depth=2, heads=3,
                                                         window=7, classes=k)),
    },
    "mixer": {
        32: ("Mixer, patch 4", lambda k: Mixer(image=32, patch=4, dim=256, depth=8,
                                               classes=k)),
        224: ("Mixer-B/16", lambda k: Mixer(image=224, patch=16, dim=768, depth=12,
                                            classes=k)),
    },
    "convnext": {
        32: ("ConvNeXt, 3 stages", lambda k: convnext(dims=(64, 128, 256), depths=(2, 2, 2),
                                                      stem=2, classes=k)),
        224: ("ConvNeXt-T", lambda k: convnext(dims=(96, 192, 384, 768), depths=(3, 3, 9, 3),
                                               stem=4, classes=k)),
    },
    "efficientnet": {
        size: ("EfficientNet-B0", lambda k: efficientnet(EFFICIENTNET_B0, stem=32, head=1280,
                                                         classes=k))
        for size in (32, 224)
    },
    "mobilenet": {
        size: ("MobileNetV3-L-like", lambda k: mobilenet(stages=MOBILENET_V3_LARGE, stem=16,
                                                         head=960, classes=k))
        for size in (32, 224)
    },
    "resnet": {
        32: ("ResNet-18, Softplus", lambda k: resnet(("basic",) * 4, (2, 2, 2, 2), width=64,
                                                     classes=k)),
        224: ("ResNet-50, Softplus", lambda k: resnet(("bottleneck",) * 4, (3, 4, 6, 3),
                                                      width=64, imagenet_stem=True,
                                                      classes=k)),
    },
    "resnet_relu": {
        32: ("ResNet-18, ReLU", lambda k: resnet(("basic",) * 4, (2, 2, 2, 2), width=64,
                                                 act=nn.ReLU, classes=k)),
        224: ("ResNet-50, ReLU", lambda k: resnet(("bottleneck",) * 4, (3, 4, 6, 3),
                                                  width=64, imagenet_stem=True, act=nn.ReLU,
                                                  classes=k)),
    },
    "maxpool": {size: ("Softplus CNN + max-pool", lambda k: maxpool_cnn(width=32, classes=k))
                for size in (32, 224)},
}
METHODS = ("saliency", "integrated_gradients")


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def count_products() -> list[int]:
    """Count every ``JacobianProducts`` product (``J v`` and ``J^T u``, one per vector)."""
    counter = [0]
    for name in ("matvec", "rmatvec"):
        original = getattr(JacobianProducts, name)

        def wrapped(self: JacobianProducts, v: torch.Tensor, _f=original) -> torch.Tensor:
            counter[0] += v.shape[0]
            return _f(self, v)

        setattr(JacobianProducts, name, wrapped)
    return counter


def time_spectrum() -> list[float]:
    """Seconds spent in the matrix-free spectrum (``xi_max``, ``v_max``) of ``certify``."""
    spent = [0.0]
    orchestration = sys.modules["attrcert.analysis"]  # where analyse() calls it
    inner = orchestration.spectrum_iterative

    def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        spent[0] += time.perf_counter() - start
        return out

    orchestration.spectrum_iterative = wrapped
    return spent


def worker(args: argparse.Namespace) -> None:
    """One (arch, size, method): print a JSON line."""
    torch.set_num_threads(args.threads)
    arch, size, method = args.worker[0], int(args.worker[1]), args.worker[2]
    device = torch.device(args.device)
    label, build = ARCHS[arch][size]
    model = seeded(lambda: build(args.classes)).to(device)
    x = torch.rand(args.images, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    act = activation_bytes(model, x[:1])
    budget = parse_size(args.memory_budget)
    attribution = get_method(method, steps=args.steps)
    with torch.no_grad():
        first = model(x[:1]).argmax(1)
    planned = plan_run(model, x, attribution,
                       SolverOptions(spectral="iterative", memory_budget=budget), 2.0, first,
                       args.classes)
    info = {"label": label, "params": sum(p.numel() for p in model.parameters()),
            "activation_mb": act / 1e6, "point_mb": planned.product_point_bytes / 1e6,
            "points_per_pass": planned.points_per_product_pass, "budget": format_size(budget)}
    counter, spectrum_seconds = count_products(), time_spectrum()
    base = peak_rss_mb()
    start = time.perf_counter()
    records = certify(model, x, eps=EPS, norm=2, method=method, steps=args.steps,
                      spectral="iterative", memory_budget=budget, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    n = x.shape[0]
    info.update({
        "seconds": seconds / n, "spectrum_seconds": spectrum_seconds[0] / n,
        "products": counter[0] / n, "peak_mb": peak_rss_mb(), "base_mb": base,
        "gpu_peak_mb": (torch.cuda.max_memory_allocated(device) / 2**20
                        if device.type == "cuda" else None),
        "xi_max": [r["xi_max"] for r in records], "c": [r["c"] for r in records],
        "smooth": records[0]["smooth"], "nonsmooth_ops": records[0]["nonsmooth_ops"],
        "load": os.getloadavg()[0], "n": n,
    })
    print(json.dumps(info))


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` now, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def run_case(arch: str, size: int, method: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", arch, str(size), method,
           "--threads", str(args.threads), "--steps", str(args.steps),
           "--images", str(args.images if size != 224 else args.images_224),
           "--device", args.device, "--classes", str(args.classes),
           "--memory-budget", args.memory_budget]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    limit, start, peak = parse_size(args.rss_limit) / 2**20, time.monotonic(), 0.0
    while proc.poll() is None:
        peak = max(peak, rss_mb(proc.pid))
        if peak > limit or time.monotonic() - start > args.timeout:
            proc.kill()
            proc.wait()
            why = (f"stopped at {peak * 2**20 / 1e9:.1f} GB RSS (limit {args.rss_limit}) "
                   f"after {time.monotonic() - start:.0f} s" if peak > limit
                   else f"timed out after {args.timeout:.0f} s")
            return {"failed": why}
        time.sleep(0.2)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        return {"failed": f"exit {proc.returncode}"}
    return json.loads(out.strip().splitlines()[-1])


def row(arch: str, size: int, method: str, res: dict) -> str:
    name = f"{ARCHS[arch][size][0]} ({arch})"
    meth = "IG m = 16" if method == "integrated_gradients" else "saliency"
    if "failed" in res:
        return f"| {name} | 3x{size}x{size} | {meth} | | | | | {res['failed']} |"
    smooth = "smooth" if res["smooth"] else "non-smooth: " + ", ".join(
        op.split(" (")[0] for op in res["nonsmooth_ops"])
    return (f"| {name} | 3x{size}x{size} | {meth} | {res['seconds']:.3g} "
            f"({res['spectrum_seconds']:.3g}) | {res['products']:.0f} | "
            f"{res['peak_mb'] * 2**20 / 1e9:.2f} GB | | {res['params'] / 1e6:.2f} M params, "
            f"{smooth}{passes(res)}, load {res['load']:.1f} |")


def passes(res: dict) -> str:
    """The memory plan of an integrated-gradients case, for its notes."""
    if not res.get("point_mb"):
        return ""
    per_pass = res["points_per_pass"]
    plan = "all points in one graph" if per_pass is None else f"{per_pass} points per pass"
    return f", {res['point_mb']:.0f} MB / point: {plan} ({res['budget']} budget)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated")
    parser.add_argument("--sizes", default="32,224", help="32, 224 or both")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--steps", type=int, default=16, help="integrated-gradients m")
    parser.add_argument("--images", type=int, default=2, help="images per case at 32")
    parser.add_argument("--images-224", type=int, default=1, help="images per case at 224")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the worker's "
                        "JSON line then also gives gpu_peak_mb)")
    parser.add_argument("--memory-budget", default="8GB",
                        help="attrcert's --memory-budget: integrated gradients' points are cut "
                        "into passes that fit it")
    parser.add_argument("--rss-limit", default="14GB", help="stop a worker above this RSS")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    parser.add_argument("--worker", nargs=3, metavar=("ARCH", "SIZE", "METHOD"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for arch in args.archs.split(","):
            for method in args.methods.split(","):
                print(f"  {arch} 3x{size}x{size} {method} ...", file=sys.stderr, flush=True)
                res = run_case(arch, size, method, args)
                print(f"    {json.dumps(res)}", file=sys.stderr, flush=True)
                rows.append(row(arch, size, method, res))
    print(f"\nl2, eps {EPS}, spectral iterative (PROPACK, tol 1e-4), {args.classes} classes, "
          f"{args.threads} thread(s), device {args.device}, torch {torch.__version__}\n")
    print("| architecture | input | method | s / image (spectrum) | products / image | "
          "peak RSS | GPU s / image | notes |")
    print("|---|---|---|---|---|---|---|---|")
    for line in rows:
        print(line)


if __name__ == "__main__":
    main()
