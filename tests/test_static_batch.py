"""Models exported or traced with a fixed batch (issue 22): ``torch.export.export(model,
(torch.randn(1, 3, H, W),))`` as most users export, run one chunk of the static batch per
call, with the same values and second derivatives as a dynamic export of the same net.
timm's own models at 32 x 32."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from attrcert import AttributionSpec, SolverOptions, certify
from attrcert.errors import InputError
from attrcert.loading import load_model
from attrcert.loading.batching import StaticBatch, batched, static_batch_of

from .conftest import run_main

timm = pytest.importorskip("timm")
SIDE = 32


def _export(model: nn.Module, path, batch: int, dynamic: bool) -> str:
    example = torch.randn(batch, 3, SIDE, SIDE)
    shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(model, (example,), dynamic_shapes=shapes), path)
    return str(path)


@pytest.fixture(scope="module")
def convnext(tmp_path_factory):
    """timm's convnext_atto (GELU, LayerNorm: smooth), 10 classes, exported three ways."""
    torch.manual_seed(0)
    net = timm.create_model("convnext_atto", pretrained=False, num_classes=10).eval()
    folder = tmp_path_factory.mktemp("convnext")
    return {"net": net,
            "static": _export(net, folder / "static.pt2", 1, dynamic=False),
            "dynamic": _export(net, folder / "dynamic.pt2", 2, dynamic=True)}


@pytest.fixture(scope="module")
def loaded(convnext, tmp_path_factory):
    """The exports loaded, and a static batch of 2 (a small smooth net: the padded chunk)
    with its dynamic twin."""
    models = {kind: load_model(convnext[kind]) for kind in ("static", "dynamic")}
    torch.manual_seed(1)
    small = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.GELU(), nn.Flatten(),
                          nn.Linear(4 * 15 * 15, 5)).eval()
    folder = tmp_path_factory.mktemp("small")
    models["static2_path"] = _export(small, folder / "s2.pt2", 2, dynamic=False)
    models["static2"] = load_model(models["static2_path"])
    models["dynamic2"] = load_model(_export(small, folder / "d2.pt2", 2, dynamic=True))
    return models


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(
            folder / f"p{i}.png")
    return str(folder)


def test_a_static_export_is_detected_from_its_input_spec(loaded):
    assert isinstance(loaded["static"], StaticBatch) and loaded["static"].batch == 1
    assert loaded["static"].row_shape == (3, SIDE, SIDE)
    assert static_batch_of(loaded["static2"]) == 2
    assert static_batch_of(loaded["dynamic"]) is None
    assert not isinstance(loaded["dynamic"], StaticBatch)


@pytest.mark.parametrize(("kind", "twin"), [("static", "dynamic"), ("static2", "dynamic2")])
def test_static_batches_give_the_dynamic_exports_values_and_second_derivatives(loaded, kind,
                                                                                twin):
    """5 rows through a batch of 1 (five calls) or of 2 (the last chunk padded), against
    the dynamic export: logits, gradients and a Hessian-vector product (double backward)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, SIDE, SIDE, generator=gen, dtype=torch.float64)
    v = torch.randn(5, 3, SIDE, SIDE, generator=gen, dtype=torch.float64)
    results = []
    for model in (loaded[kind], loaded[twin]):
        net = model.to(torch.float64)
        xr = x.clone().requires_grad_(True)
        out = net(xr)
        (grad,) = torch.autograd.grad(out[:, 3].sum(), xr, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * v).sum(), xr)
        results.append((out.detach(), grad.detach(), hvp))
    for ours, theirs in zip(results[0], results[1], strict=True):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
    assert results[0][2].abs().max() > 0  # GELU and LayerNorm: curvature to compare
    assert loaded[kind].vectorized is True  # torch.vmap over the chunks: one batched pass


def test_fewer_rows_than_the_static_batch_are_padded(loaded):
    fresh = StaticBatch(loaded["static2"].model, 2, (3, SIDE, SIDE), "test")
    x = torch.rand(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(fresh.float()(x), loaded["dynamic2"].float()(x))
    assert fresh.vectorized is True  # decided on a padded chunk of 2 rows


class _Scalar(nn.Module):
    """Reads a value out of the graph (``.item()``): ``torch.vmap`` cannot batch it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1:
            raise RuntimeError("batch of 1 only")
        return torch.tanh(x.flatten(1)[:, :4]) * (1 + float(x.detach().mean().item()))


def test_chunk_by_chunk_where_vmap_cannot_batch_the_model():
    model = StaticBatch(_Scalar(), 1, None, "test")
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    out = model(x)
    assert model.vectorized is False
    want = torch.cat([_Scalar()(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(out, want)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    assert grad.requires_grad  # differentiable twice


def test_a_static_export_of_another_input_size_is_one_line(loaded):
    with pytest.raises(InputError, match=r"exported for inputs of shape .*--size 32 32"):
        loaded["static"](torch.zeros(2, 3, 48, 48))


def test_certify_gives_a_static_export_the_dynamic_exports_records(loaded):
    """Integrated gradients stacks its points along the batch (and certify its samples):
    the static export runs them one per call and gives the dynamic export's records."""
    x = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    spec = AttributionSpec(method="integrated_gradients", steps=3)
    solver = SolverOptions(spectral="iterative", batch_size=2)
    static, dynamic = (certify(loaded[kind].float(), x, eps=0.01, attribution=spec,
                               solver=solver) for kind in ("static2", "dynamic2"))
    for ours, theirs in zip(static, dynamic, strict=True):
        for key in ("predicted", "attr_norm", "xi_max", "T_e", "c"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4), key


def test_bound_says_static_batch(loaded, photos, capfd):
    code, out, err = run_main(["bound", loaded["static2_path"], photos, "--method", "saliency",
                               "--eps", "0.01", "--format", "json", "--quiet"], capfd)
    assert code == 0, err
    assert json.loads(out)["config"]["static_batch"] == 2
    assert "exported with a static batch of 2" in err and len(err.strip().splitlines()) == 1


def test_inspect_shows_the_static_batch(convnext, capfd):
    code, out, err = run_main(["inspect", convnext["static"], "--format", "json"], capfd)
    assert code == 0, err
    info = json.loads(out)
    assert info["static_batch"] == 1 and info["input_shape"] == [3, SIDE, SIDE]
    code, out, err = run_main(["inspect", convnext["dynamic"], "--size", "32", "32"], capfd)
    assert code == 0 and "static_batch" not in out


class _FixedBatch(nn.Module):
    """Flattens with a hard-coded batch of 1: traced, it mixes the rows of a larger batch."""

    def __init__(self) -> None:
        super().__init__()
        self.body = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
        self.head = nn.Linear(512, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).reshape(1, -1)[:, :512].reshape(1, 512))


def _trace(net: nn.Module, path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, torch.randn(1, 3, SIDE, SIDE)).save(str(path))
    return load_model(path)


def test_torchscript_traced_with_batch_one(tmp_path):
    """A timm model traced with batch 1 takes batches (its sizes are traced): not wrapped.
    A trace whose batch is a constant fails or mixes rows on two: run one row per call."""
    torch.manual_seed(0)
    x = torch.rand(3, 3, SIDE, SIDE)
    plain = timm.create_model("resnet18", pretrained=False, num_classes=4).eval()
    traced = _trace(plain, tmp_path / "plain.pt")
    assert batched(traced, x[:1]) is traced
    fixed = _FixedBatch().eval()
    model = batched(_trace(fixed, tmp_path / "fixed.pt"), x[:1])
    assert static_batch_of(model) == 1
    with torch.no_grad():
        want = torch.cat([fixed(x[i:i + 1]) for i in range(3)])
        torch.testing.assert_close(model(x), want)
