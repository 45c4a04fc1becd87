"""The full path on a batch of 16 against ``torch.autograd.functional.jacobian``, in one process.

Usage (from the repository root)::

    python benchmarks/bench_batch.py [--batch 16] [--steps 16] [--threads 2] [--repeat 2]
                                     [--device cuda]

Model: ``sample_models/digits_softplus.pt2`` (d = 784), the first ``--batch`` sample digits,
integrated gradients (m = ``--steps``, zero baseline), target = the predicted class. Each
candidate produces every sample's Jacobian ``J`` (``d x d``) and then ``xi_max`` / ``v_max``
/ ``sum |P_ij|`` by the same :func:`attrcert.spectral.spectrum_full`, so only the way to
``J`` differs:

- ``attrcert``: :func:`attrcert.jacobian.attribution_jacobian` with the default strategy,
  one sample per call (``certify``'s default batch on a CPU);
- ``attrcert, whole batch``: one call on all samples (rows of every sample per pass);
- ``attrcert replicate``: the accelerator strategy, on the whole batch;
- ``functional.jacobian, batch``: ``torch.autograd.functional.jacobian`` of the batch's
  attribution ``(N, d) -> (N, d)``, the obvious call on a batch, then its ``N`` diagonal
  blocks (it also computes the ``N^2 - N`` zero blocks between samples);
- ``functional.jacobian, per sample``: the same function called once per sample;
- ``functional.jacobian, vectorize``: per sample with ``vectorize=True`` (vmap).

The candidates run round robin ``--repeat`` times and the median is kept (the slow batch
call runs once). Every candidate's ``xi_max`` is compared with attrcert's. Prints a Markdown
table and the 1-minute load average (above ~2 on 2 cores, another process shared them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from attrcert.attributions import get_method, resolve_target
from attrcert.jacobian import attribution_jacobian
from attrcert.loading import load_model
from attrcert.spectral import Spectrum, spectrum_full

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--skip-batch-call", action="store_true",
                        help="skip functional.jacobian on the whole batch (the slowest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_model(ROOT / "sample_models" / "digits_softplus.pt2").to(device)
    x = torch.load(ROOT / "sample_models" / "digits.pt", weights_only=True)[: args.batch]
    x = x.to(device)
    n, d = x.shape[0], x[0].numel()
    ig = get_method("integrated_gradients", steps=args.steps)
    target = resolve_target(model, x, None)

    def attribution_of(t: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        def g(inputs: torch.Tensor) -> torch.Tensor:
            return ig(model, inputs, t, create_graph=True).reshape(inputs.shape[0], -1)
        return g

    def ours_per_sample() -> torch.Tensor:
        return torch.cat([attribution_jacobian(ig, model, x[i : i + 1], target[i : i + 1])
                          for i in range(n)])

    def ours_batch() -> torch.Tensor:
        return attribution_jacobian(ig, model, x, target)

    def ours_replicate() -> torch.Tensor:
        return attribution_jacobian(ig, model, x, target, strategy="replicate")

    def functional_batch() -> torch.Tensor:
        full = torch.autograd.functional.jacobian(attribution_of(target), x)  # (N,d,N,C,H,W)
        full = full.reshape(n, d, n, d)
        return torch.stack([full[i, :, i, :] for i in range(n)])

    def functional_per_sample(vectorize: bool = False) -> torch.Tensor:
        return torch.stack([
            torch.autograd.functional.jacobian(attribution_of(target[i : i + 1]),
                                               x[i : i + 1], vectorize=vectorize)
            .reshape(d, d) for i in range(n)])

    candidates: dict[str, Callable[[], torch.Tensor]] = {
        "attrcert (loop, 1 sample per call: certify's CPU default)": ours_per_sample,
        "attrcert (loop, whole batch in one call)": ours_batch,
        "attrcert (replicate, whole batch: the GPU strategy)": ours_replicate,
        "`torch.autograd.functional.jacobian`, per sample": functional_per_sample,
        "`torch.autograd.functional.jacobian(vectorize=True)`, per sample":
            lambda: functional_per_sample(vectorize=True),
    }
    once = {} if args.skip_batch_call else {
        "`torch.autograd.functional.jacobian` on the batch (N d x N d)": functional_batch}
    times: dict[str, list[float]] = {name: [] for name in [*candidates, *once]}
    spectra: dict[str, Spectrum] = {}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(name: str, fn: Callable[[], torch.Tensor]) -> None:
        print(f"running {name}", file=sys.stderr, flush=True)  # progress, not results
        sync()
        start = time.perf_counter()
        jac = fn()
        spectrum = spectrum_full(jac)
        sync()
        times[name].append(time.perf_counter() - start)
        spectra[name] = spectrum
        del jac

    for _ in range(args.repeat):
        for name, fn in candidates.items():
            timed(name, fn)
    for name, fn in once.items():
        timed(name, fn)
    reference = next(iter(candidates))
    base = statistics.median(times[reference])
    ref_xi = spectra[reference].xi_max
    print(f"d = {d}, batch = {n}, IG m = {args.steps}, {device}, {args.threads} threads, torch "
          f"{torch.__version__}, load {os.getloadavg()[0]:.2f}\n")
    print("| Jacobian + spectrum of the batch | s (batch) | s / sample | time / attrcert's | "
          "xi_max rel. diff |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        t = statistics.median(values)
        diff = float(((spectra[name].xi_max / ref_xi) - 1).abs().max())
        print(f"| {name} | {t:.2f} | {t / n:.3f} | {t / base:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
