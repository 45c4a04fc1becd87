"""Seconds per Jacobian product of integrated gradients, by the ways attrcert has had to
multiply by ``J``, interleaved in one process.

Usage (from the repository root)::

    python benchmarks/bench_products.py                      # ResNet-18-shaped, 64 px, m = 16
    python benchmarks/bench_products.py --side 224 --steps 16 --repeats 3

Model: timm's ``resnet18`` with Softplus and an average-pooled stem (smooth), 10 classes,
random weights. Ways, each timed per product ``J v`` (median of ``--repeats``):

- ``double-VJP kept``: the previous default, ``J v`` as the VJP of ``u -> J^T u`` on the
  retained graph of all ``m`` points (:class:`attrcert.spectral.JacobianProducts`);
- ``double-VJP rebuilt``: the same with every point rebuilt for each product
  (``points_per_pass=1``), the regime of the 224 px integrated-gradients rows before;
- ``curvature kept``: ``J v = G v + u (M v)``, ``M v`` one VJP of ``G``'s first-order graph
  (:class:`attrcert.spectral.CurvatureProducts`), all points kept;
- ``curvature rebuilt``: the same, every point rebuilt for each product, one at a time
  (``points_per_pass=1``);
- ``curvature, half kept``: ``points_per_pass = m/2``: ``m/4`` points kept, the rest
  rebuilt in passes of ``m/4`` (:func:`attrcert.spectral.curvature.curvature_segments`);
- ``forward-over-reverse``: ``M v`` as the forward-mode derivative of ``G`` along ``v``
  (dual numbers through the gradient), all points in one batch, nothing kept;
- ``reverse-over-reverse, rebuilt in one pass``: ``G``'s first-order graph of all points
  built for the product and its VJP taken, nothing kept.

The first four are also the ratio ``J^T u`` would cost (one product each way).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwad

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attrcert.attributions import get_method  # noqa: E402
from attrcert.spectral import JacobianProducts  # noqa: E402
from attrcert.spectral.curvature import CurvatureProducts  # noqa: E402


def smooth_resnet18() -> torch.nn.Module:
    import timm

    class Softplus(torch.nn.Softplus):  # timm passes inplace=True
        def __init__(self, inplace: bool = False, **kwargs: object) -> None:
            super().__init__()

    torch.manual_seed(0)
    model = timm.create_model("resnet18", act_layer=Softplus, num_classes=10).eval()
    model.maxpool = torch.nn.AvgPool2d(3, 2, 1)
    return model


def timed(run: Callable[[], object], repeats: int) -> float:
    run()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = smooth_resnet18()
    x = torch.rand(1, 3, args.side, args.side, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([3])
    ig = get_method("integrated_gradients", steps=args.steps)
    d = x.numel()
    v = torch.randn(1, d)
    with torch.no_grad():
        start = time.perf_counter()
        model(x.expand(args.steps, -1, -1, -1))
        forward = time.perf_counter() - start

    def fwd_over_rev() -> torch.Tensor:
        with fwad.dual_level():
            dual = fwad.make_dual(x.clone().requires_grad_(True), v.view_as(x))
            big_g = ig.parts(model, dual, target, create_graph=True)[1]
            return fwad.unpack_dual(big_g).tangent

    def per_product(build: Callable[[], JacobianProducts | CurvatureProducts]) -> float:
        ops = build()  # its graphs live only while it is timed
        return timed(lambda: ops.matvec(v), args.repeats)

    rows = [
        ("double-VJP kept", per_product(lambda: JacobianProducts(ig, model, x, target))),
        ("double-VJP rebuilt", per_product(
            lambda: JacobianProducts(ig, model, x, target, points_per_pass=1))),
        ("curvature kept", per_product(lambda: CurvatureProducts(ig, model, x, target))),
        ("curvature rebuilt", per_product(
            lambda: CurvatureProducts(ig, model, x, target, points_per_pass=1))),
        ("curvature, half kept", per_product(lambda: CurvatureProducts(
            ig, model, x, target, points_per_pass=max(2, args.steps // 2)))),
    ]
    rows.append(("forward-over-reverse", timed(fwd_over_rev, args.repeats)))

    def rev_over_rev() -> torch.Tensor:
        leaf = x.clone().requires_grad_(True)
        big_g = ig.parts(model, leaf, target, create_graph=True)[1]
        return torch.autograd.grad(big_g, leaf, grad_outputs=v.view_as(x))[0]

    rows.append(("reverse-over-reverse, rebuilt in one pass", timed(rev_over_rev, args.repeats)))
    print(f"ResNet-18-shaped Softplus net, 3x{args.side}x{args.side}, IG m = {args.steps}, "
          f"{args.threads} thread(s); one forward pass of the m points: {forward:.3f} s")
    print("| way | s per product | forward passes of the m points |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / forward:.1f} |")


if __name__ == "__main__":
    main()
