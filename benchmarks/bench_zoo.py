"""The timm zoo per image: seconds, where they go (attribution, spectrum, Proposition 1,
attack), Jacobian products and peak memory of an l2 certificate with its attack, for one
timm model of each family (:data:`zoo.ZOO`: timm's own code, ``pretrained=False``, seeded
random weights with random BatchNorm statistics, what timm initialises to zero drawn at
random), 1000 classes, at 224 px.

Usage (from the repository root)::

    python benchmarks/bench_zoo.py                                  # every model, 224 px
    python benchmarks/bench_zoo.py --archs resnet18,vit --methods saliency
    python benchmarks/bench_zoo.py --quick                          # 64 px, 2 models, smoke
    python benchmarks/bench_zoo.py --device cuda                    # the same on a GPU

Each (model, method) runs ``attrcert.certify(..., norm=2, eps=EPS, spectral="iterative",
verify=True)`` on ``--images`` seeded random images in its own subprocess (its peak RSS is
its own). The phases are timed where ``certify`` calls them: ``attribution`` is
:func:`attrcert.analysis.analyse` less its spectrum (the attribution, its graph, the zero
probes), ``spectrum`` the matrix-free ``xi_max`` / ``v_max``
(:func:`attrcert.spectral.spectrum_iterative`), ``Prop. 1`` the label test
(:func:`attrcert.proposition1.label_test`: screened, the exact gradients of the few
classes the per-class bounds cannot rule out), ``attack`` the attack of
``--verify``. ``products`` counts the spectrum's operator products per image
(``Spectrum.products``: ``J v`` and ``J^T u``, then ``+ N coarse``: the warm start's
products with integrated gradients' coarse ``J``; 0 where the spectrum is skipped, a
``degenerate`` saliency). At sizes other than the
registry's (32, 224) the 224 architecture is built with ``img_size=SIZE`` where timm takes
it (the transformers), as is where it does not (the convolutional nets).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attrcert import certify, differentiable_hard  # noqa: E402
from attrcert.memory import parse_size  # noqa: E402
from zoo import ZOO, Entry, build, entry, inputs  # noqa: E402

EPS = 0.01
METHODS = ("saliency", "integrated_gradients")
TIMM = [e.key for e in ZOO if e.library == "timm"]
QUICK_ARCHS = "efficientnet,resnet18"
PHASES = ("attribution", "spectrum", "prop1", "attack")


def model_at(found: Entry, size: int, classes: int) -> nn.Module:
    """The zoo model for ``size`` px: the registry's, else its 224 architecture with
    ``img_size=size`` where the timm constructor takes it."""
    if size in found.sizes:
        return build(found, size, classes)
    arch = found.arch(224)
    if arch is None:
        raise ValueError(f"{found.key} has no {size} px architecture")
    sized = arch[:-1] + f", img_size={size})" if arch.endswith(")") else f"{arch}(img_size={size})"
    for candidate in (sized, arch):
        try:
            return build(Entry(found.key, found.family, {size: candidate, 224: arch}, None),
                         size, classes)
        except TypeError:  # the constructor takes no img_size: convolutional, any size
            continue
    raise ValueError(f"{found.key} cannot be built at {size} px")


def timed(module: Any, name: str, bucket: dict[str, float], key: str) -> None:
    """Add the seconds of every call of ``module.name`` to ``bucket[key]``."""
    inner = getattr(module, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            bucket[key] += time.perf_counter() - start

    setattr(module, name, wrapped)


def products(res: dict[str, Any]) -> str:
    """The products of one result: ``J``'s, and the warm start's with the coarse ``J``."""
    start = res.get("start_products") or 0
    return f"{res['products']:.0f}" + (f" + {start:.0f} coarse" if start else "")


def count_products(module: Any, counter: list[int]) -> None:
    """Add the operator products of every ``module.spectrum_iterative`` call (its
    ``Spectrum.products``: ``J v`` and ``J^T u``, or Hessian-vector products) to
    ``counter[0]``, and those of its warm start (``Spectrum.start_products``, with the
    coarse ``J``) to ``counter[1]``."""
    inner = module.spectrum_iterative

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = inner(*args, **kwargs)
        if getattr(out, "products", None) is not None:
            counter[0] += int(out.products.sum())
        if getattr(out, "start_products", None) is not None:
            counter[1] += int(out.start_products.sum())
        return out

    module.spectrum_iterative = wrapped


def worker(args: argparse.Namespace) -> None:
    """One (model, method): print a JSON line."""
    torch.set_num_threads(args.threads)
    key, method = args.worker
    device = torch.device(args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = model_at(entry(key), args.size, args.classes).to(device)
    x = inputs(args.images, args.size).to(device)
    if any(isinstance(m, nn.Hardsigmoid) for m in model.modules()):
        model = differentiable_hard(model, x[:1])  # as the command line does
    phases = dict.fromkeys(PHASES, 0.0)
    analysis = sys.modules["attrcert.analysis"]
    timed(sys.modules["attrcert.run"], "analyse", phases, "attribution")
    counter = [0, 0]
    count_products(analysis, counter)
    timed(analysis, "spectrum_iterative", phases, "spectrum")
    timed(sys.modules["attrcert.records"], "label_test", phases, "prop1")
    timed(sys.modules["attrcert.certify"], "add_attack_fields", phases, "attack")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = certify(model, x, eps=EPS, norm=2, method=method, steps=args.steps,
                          spectral="iterative", memory_budget=parse_size(args.memory_budget),
                          device=device, verify=True, attack_steps=args.attack_steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    n = x.shape[0]
    phases["attribution"] -= phases["spectrum"]  # analyse() holds the spectrum
    print(json.dumps({
        "seconds": (time.perf_counter() - start) / n,
        **{k: v / n for k, v in phases.items()},
        "products": counter[0] / n,
        "start_products": counter[1] / n,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "gpu_peak_gb": (torch.cuda.max_memory_allocated(device) / 2**30
                        if device.type == "cuda" else None),
        "params": sum(p.numel() for p in model.parameters()),
        "xi_max": [r["xi_max"] for r in records],
        "nonsmooth": [op.split(" (")[0] for op in records[0]["nonsmooth_ops"]],
        "degenerate": [_short(reason) for reason in records[0]["degenerate"]],
        "smooth": records[0]["smooth"],
        "unbeaten": all(r["T_e_hat"] <= r["T_e_prime"] * (1 + 1e-3) for r in records),
        "load": os.getloadavg()[0],
    }))


def _short(reason: str) -> str:
    """A record's ``degenerate`` line (:mod:`attrcert.degenerate`) in a few words."""
    if "completeness gap" in reason:
        return "IG's completeness gap > ||g||: m too small"
    if "Jacobian" in reason:
        return "T_e = 0"
    return reason.split(":")[0]


def run_case(key: str, method: str, args: argparse.Namespace, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", key, method, "--size", str(args.size),
           "--threads", str(args.threads), "--steps", str(args.steps), "--images",
           str(args.images), "--device", args.device, "--classes", str(args.classes),
           "--memory-budget", args.memory_budget, "--attack-steps", str(args.attack_steps)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"failed": f"exit {proc.returncode}: {last[:120]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(key: str, method: str, size: int, steps: int, res: dict) -> str:
    name = f"{entry(key).arch(224) or key} ({entry(key).family})"
    meth = f"IG m = {steps}" if method == "integrated_gradients" else "saliency"
    if "failed" in res:
        return f"| {name} | {size} | {meth} | {res['failed']} | | | | | | | | |"
    gpu = "" if res["gpu_peak_gb"] is None else f"{res['gpu_peak_gb']:.2f} GB"
    notes = ("smooth" if not res["nonsmooth"] else "non-smooth: " + ", ".join(res["nonsmooth"]))
    if res["degenerate"]:
        notes += f", degenerate ({'; '.join(res['degenerate'])})"
    if not res["unbeaten"]:  # a certificate only on smooth models; estimates otherwise
        notes += ", ATTACK BEAT T'_e" if res["smooth"] else ", attack above T'_e (estimate)"
    return (f"| {name} | {size} | {meth} | {res['seconds']:.3g} | {res['attribution']:.3g} | "
            f"{res['spectrum']:.3g} | {res['prop1']:.3g} | {res['attack']:.3g} | "
            f"{products(res)} | {res['peak_rss_gb']:.2f} GB | {gpu} | "
            f"{res['params'] / 1e6:.1f} M params, {notes}, load {res['load']:.1f} |")


HEADER = ("| model | px | method | s / image | attribution | spectrum | Prop. 1 | attack | "
          "products | peak RSS | peak GPU | notes |\n|---|---|---|---|---|---|---|---|---|---|"
          "---|---|")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default=None, help=f"comma-separated, of {','.join(TIMM)}")
    parser.add_argument("--size", type=int, default=None, help="input side (default 224)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: 64 px, {QUICK_ARCHS}, 100 classes, IG m = 4")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--steps", type=int, default=None, help="IG m (default 16)")
    parser.add_argument("--classes", type=int, default=None, help="default 1000")
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--memory-budget", default="8GB", help="attrcert's --memory-budget")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds for the whole run: later cases are skipped")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "METHOD"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = args.size or (64 if args.quick else 224)
    args.steps = args.steps or (4 if args.quick else 16)
    args.classes = args.classes or (100 if args.quick else 1000)
    args.archs = args.archs or (QUICK_ARCHS if args.quick else ",".join(TIMM))
    if args.worker:
        worker(args)
        return
    start, rows, results = time.monotonic(), [], []
    for key in args.archs.split(","):
        for method in args.methods.split(","):
            left = args.timeout if args.deadline is None else min(
                args.timeout, args.deadline - (time.monotonic() - start))
            if left < 5:
                res = {"failed": "skipped (--deadline)"}
            else:
                print(f"  {key} {args.size} px {method} ...", file=sys.stderr, flush=True)
                res = run_case(key, method, args, left)
                print(f"    {json.dumps(res)}", file=sys.stderr, flush=True)
            results.append({"model": key, "method": method, "size": args.size, **res})
            rows.append(row(key, method, args.size, args.steps, res))
    print(f"\nl2, eps {EPS}, --verify with {args.attack_steps} attack steps, {args.classes} "
          f"classes, {args.images} image(s), {args.threads} thread(s), device {args.device}, "
          f"torch {torch.__version__}; seconds per image\n")
    print(HEADER)
    for line in rows:
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
