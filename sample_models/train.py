"""Train the sample digit classifiers shipped in ``sample_models/``.

Run from the repository root (needs the ``train`` extra, i.e. scikit-learn)::

    python sample_models/train.py

Data: scikit-learn's bundled 8x8 handwritten digits (no download), scaled to [0, 1] and
bilinearly upscaled to 28x28. 20% is held out (stratified, ``random_state=0``).

Outputs (all inside ``sample_models/``):

* ``digits_softplus.pt2``        torch.export program, Softplus/avg-pool CNN, dynamic batch
* ``digits_softplus.pt``         TorchScript (traced) of the same model
* ``digits_softplus.safetensors`` its state dict (rebuild with ``digits_arch.softplus_cnn``)
* ``digits_relu_maxpool.pt2``    torch.export program, ReLU/max-pool CNN, dynamic batch
* ``digits_relu_maxpool.safetensors`` its state dict (``digits_arch.relu_maxpool_cnn``)
* ``digits/digit_XX.png`` + ``digits/labels.csv``  first 16 held-out images (8-bit)
* ``digits.pt``                  the same 16 images as a float32 (16, 1, 28, 28) tensor

The script is seeded and deterministic (single intra-op thread, deterministic algorithms):
re-running it with the same torch build reproduces byte-identical output files.
"""

from __future__ import annotations

import csv
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from digits_arch import make_cnn, relu_maxpool_cnn, softplus_cnn  # noqa: E402

SEED = 0
NUM_THREADS = 1
VERIFY_BATCHES = (1, 3, 2000)
SIZE = 28
N_SAMPLES = 16
TARGET_ACC = 0.95
MIN_ACC = 0.90
EPOCHS = 30
BATCH_SIZE = 64
LR = 3e-3


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(x_train, y_train, x_test, y_test)``; images are (N, 1, 28, 28) in [0, 1]."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    x = x.clamp(0.0, 1.0)
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx = np.arange(len(y))
    idx_train, idx_test = train_test_split(
        idx, test_size=0.2, stratify=digits.target, random_state=0
    )
    idx_train = torch.from_numpy(idx_train)
    idx_test = torch.from_numpy(idx_test)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return int((model(x).argmax(dim=1) == y).sum()) / len(y)


def train(
    smooth: bool,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
) -> tuple[nn.Sequential, float]:
    name = "softplus" if smooth else "relu_maxpool"
    seed_everything(SEED)
    model = make_cnn(smooth)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    gen = torch.Generator().manual_seed(SEED)
    n = len(x_train)
    acc = 0.0
    # Fixed budget (a few seconds on CPU) rather than early stopping: the cosine
    # schedule ends in a stable, well-converged model instead of one that just
    # crossed the threshold.
    for epoch in range(1, EPOCHS + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, BATCH_SIZE):
            b = perm[start : start + BATCH_SIZE]
            loss = F.cross_entropy(model(x_train[b]), y_train[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        sched.step()
        acc = accuracy(model, x_test, y_test)
        print(f"  [{name}] epoch {epoch:2d}  loss {total / n:.4f}  held-out acc {acc:.4f}")
    model.eval()
    if acc < MIN_ACC:
        raise RuntimeError(f"{name}: held-out accuracy {acc:.4f} < {MIN_ACC}")
    if acc < TARGET_ACC:
        warnings.warn(f"{name}: held-out accuracy {acc:.4f} < target {TARGET_ACC}", stacklevel=1)
    return model, acc


def _check_close(ref: torch.Tensor, out: torch.Tensor, what: str) -> None:
    err = (ref - out).abs().max().item()
    if err > 1e-5:
        raise RuntimeError(f"{what}: max abs diff {err:.3g} > 1e-5")


def _batch(x_test: torch.Tensor, size: int) -> torch.Tensor:
    """First ``size`` held-out images, cycling through the held-out set if it is smaller."""
    reps = -(-size // len(x_test))
    return x_test.repeat(reps, 1, 1, 1)[:size].clone()


def _verify_loaded(
    model: nn.Module, loaded: nn.Module, x_test: torch.Tensor, name: str, *, double: bool
) -> None:
    """Loaded copy must match eager ``model`` on several batch sizes, incl. input gradients."""
    for bs in VERIFY_BATCHES:
        x = _batch(x_test, bs)
        with torch.no_grad():
            _check_close(model(x), loaded(x), f"{name} batch {bs}")

    grads = []
    for m in (model, loaded):
        x = _batch(x_test, 3).requires_grad_(True)
        (g,) = torch.autograd.grad(m(x)[:, 0].sum(), x, create_graph=double)
        gg = torch.autograd.grad(g.sum(), x)[0] if double else None
        grads.append((g.detach(), gg))
    _check_close(grads[0][0], grads[1][0], f"{name} input gradient")
    if double:
        _check_close(grads[0][1], grads[1][1], f"{name} double backward")


def export_and_verify(model: nn.Module, path: Path, x_test: torch.Tensor, *, double: bool) -> None:
    """Save ``model`` with torch.export (dynamic batch dim) and check the reloaded program."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    ep = torch.export.export(model, (_batch(x_test, 2),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(path))
    loaded = torch.export.load(str(path)).module()  # NB: .eval()/.train() raise on this
    _verify_loaded(model, loaded, x_test, path.name, double=double)


def torchscript_and_verify(model: nn.Module, path: Path, x_test: torch.Tensor) -> None:
    """Save ``model`` as TorchScript and check the reloaded module.

    ``torch.jit.trace`` rather than ``torch.jit.script``: scripting emits module constants
    in string-hash order, so the file changes from run to run; the trace is byte-stable.
    The model has no data-dependent control flow, so the trace is exact for any batch size.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated in recent torch
        traced = torch.jit.trace(model, _batch(x_test, 2))
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
    loaded.eval()
    _verify_loaded(model, loaded, x_test, path.name, double=True)


def safetensors_and_verify(
    model: nn.Module, path: Path, x_test: torch.Tensor, factory: Callable[[], nn.Module]
) -> None:
    """Save the state dict and check it loads into the untrained ``digits_arch`` factory."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    fresh = factory()
    fresh.load_state_dict(load_file(str(path)))
    fresh.eval()
    _verify_loaded(model, fresh, x_test, path.name, double=False)


def save_samples(x_test: torch.Tensor, y_test: torch.Tensor) -> None:
    """Write the first held-out images as PNGs + labels.csv and as one tensor (digits.pt)."""
    out_dir = HERE / "digits"
    out_dir.mkdir(exist_ok=True)
    for old in out_dir.glob("digit_*.png"):
        old.unlink()
    pixels = torch.round(x_test[:N_SAMPLES, 0] * 255.0).to(torch.uint8)  # (16, 28, 28)
    rows = []
    for i in range(N_SAMPLES):
        name = f"digit_{i:02d}.png"
        Image.fromarray(pixels[i].numpy(), mode="L").save(out_dir / name)
        rows.append((name, int(y_test[i])))
    with open(out_dir / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["name", "label"])
        writer.writerows(rows)

    tensor = (pixels.to(torch.float32) / 255.0).unsqueeze(1).contiguous()  # (16, 1, 28, 28)
    torch.save(tensor, HERE / "digits.pt")

    # The PNG folder and digits.pt must give identical inputs.
    back = torch.stack(
        [
            torch.from_numpy(np.asarray(Image.open(out_dir / name), dtype=np.float32) / 255.0)
            for name, _ in rows
        ]
    ).unsqueeze(1)
    if not torch.equal(back, torch.load(HERE / "digits.pt", weights_only=True)):
        raise RuntimeError("digits/ PNGs and digits.pt disagree")


def main() -> None:
    t0 = time.perf_counter()
    # One intra-op thread: the batches are tiny, so a second thread gains ~10% when the
    # machine is idle, but when other processes keep both cores busy the OpenMP workers
    # spin-wait and a run takes minutes instead of seconds. The thread count also affects
    # float summation order, so keep it fixed for bitwise-reproducible weights.
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    seed_everything(SEED)

    x_train, y_train, x_test, y_test = load_data()
    print(f"data: {len(x_train)} train / {len(x_test)} held-out images, 28x28")

    results = {}
    for smooth in (True, False):
        model, acc = train(smooth, x_train, y_train, x_test, y_test)
        model = model.float().eval()
        stem = "digits_softplus" if smooth else "digits_relu_maxpool"
        results[stem] = acc
        export_and_verify(model, HERE / f"{stem}.pt2", x_test, double=smooth)
        if smooth:
            torchscript_and_verify(model, HERE / f"{stem}.pt", x_test)
        factory = softplus_cnn if smooth else relu_maxpool_cnn
        safetensors_and_verify(model, HERE / f"{stem}.safetensors", x_test, factory)

    save_samples(x_test, y_test)

    for stem, acc in results.items():
        print(f"{stem}: held-out accuracy {acc:.4f} ({len(y_test)} images, {EPOCHS} epochs)")
    print(f"done in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
