"""``--beta-smooth`` through the command line, and the records that say their numbers mean
nothing (``degenerate``): a ReLU net's saliency has ``T_e = 0``; beta-smoothed, its bounds
are non-zero and finite, proved by ``--sound``, and an attack on the smoothed explanation
beats neither ``T_e_sound`` nor (at small eps, float64) ``T'_e``."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from attrcert import certify
from attrcert.cli import app
from attrcert.loading import load_model
from attrcert.loading.smoothing import beta_smooth

torch.set_num_threads(1)


class TinyRelu(nn.Module):
    """Conv, ReLU, max-pooling (3 x 3, stride 2, padding 1), LeakyReLU, linear: 1 x 6 x 6."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.fc = nn.Linear(27, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(torch.relu(self.conv(x))).flatten(1)
        return self.head(nn.functional.leaky_relu(self.fc(y), 0.1))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("beta")
    torch.manual_seed(0)
    net = TinyRelu().eval()
    x = torch.rand(3, 1, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(ep, folder / "relu.pt2")
    torch.save(x, folder / "x.pt")
    zero = nn.Sequential(nn.Flatten(), nn.Linear(36, 4)).eval()  # a zero head
    nn.init.zeros_(zero[1].weight)
    nn.init.zeros_(zero[1].bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(zero, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(ep, folder / "zero.pt2")
    return {"relu": str(folder / "relu.pt2"), "zero": str(folder / "zero.pt2"),
            "x": str(folder / "x.pt")}


def run(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--format", "json", "--quiet"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_relu_saliency_is_degenerate_without_and_certified_with_beta_smooth(files):
    common = (files["relu"], files["x"], "--method", "saliency", "--dtype", "float64",
              "--eps", "1e-3")
    plain = run("bound", *common)
    for rec in plain["samples"]:
        assert rec["xi_max"] == 0.0 and rec["T_e"] == 0.0
        assert rec["degenerate"] and "--beta-smooth" in rec["degenerate"][0]
        assert "beta_smooth" not in rec
    doc = run("bound", *common, "--beta-smooth", "4", "--verify", "--sound",
              "--attack-steps", "30", "--restarts", "2")
    assert doc["config"]["beta_smooth"] == 4.0
    assert any(op.startswith("ReLU") for op in doc["config"]["beta_smoothed_ops"])
    assert doc["config"]["smooth"] is True and doc["config"]["nonsmooth_ops"] == []
    model = load_model(files["relu"])
    x = torch.load(files["x"], weights_only=True)
    with torch.no_grad():
        original = model(x).argmax(1).tolist()
        smoothed = beta_smooth(model, 4.0, x)(x).argmax(1).tolist()
    keys = list(doc["samples"][0])
    at = keys.index("predicted")
    assert keys[at: at + 4] == ["predicted", "predicted_smoothed", "smoothed_agrees",
                                "beta_smooth"]
    for i, rec in enumerate(doc["samples"]):
        assert rec["predicted"] == original[i] and rec["target"] == original[i]
        assert rec["predicted_smoothed"] == smoothed[i]
        assert rec["smoothed_agrees"] == (original[i] == smoothed[i])
        assert rec["beta_smooth"] == 4.0 and rec["degenerate"] == []
        assert 0 < rec["T_e"] < 1 and 0 < rec["T_e_sound"] < 1
        # the attack on the smoothed explanation beats neither the proved bound nor,
        # at this small eps, the estimate T'_e
        assert rec["T_e_hat"] <= rec["T_e_sound"]
        assert rec["T_e_hat"] <= rec["T_e_prime"] * (1 + 1e-3)
        assert rec["violation_sound"] is False


def test_beta_smooth_with_labels_explains_the_labelled_class(files, tmp_path):
    x = torch.load(files["x"], weights_only=True)
    labels = tmp_path / "labels.csv"
    labels.write_text("name,label\n" + "".join(f"x.pt[{i}],2\n" for i in range(3)))
    doc = run("bound", files["relu"], files["x"], "--method", "saliency", "--beta-smooth",
              "2", "--labels", str(labels), "--eps", "0.01")
    assert [r["target"] for r in doc["samples"]] == [2, 2, 2]
    with torch.no_grad():
        original = load_model(files["relu"])(x).argmax(1).tolist()
    assert [r["predicted"] for r in doc["samples"]] == original


def test_beta_smooth_table_and_max_eps(files):
    result = CliRunner().invoke(app, ["max-eps", files["relu"], files["x"], "--omega", "0.1",
                                      "--steps", "4", "--beta-smooth", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "integrated gradients, m = 4, beta-smoothed (beta = 3)" in result.stdout
    assert "pred smoothed" in result.stdout
    assert "explaining the beta-smoothed copy" in result.stderr
    bad = CliRunner().invoke(app, ["bound", files["relu"], files["x"], "--beta-smooth", "0"])
    assert bad.exit_code == 2 and "must be a finite number > 0" in bad.output


def test_zero_head_is_degenerate_before_the_spectrum(files, monkeypatch):
    import attrcert.analysis as analysis

    def never(*args, **kwargs):
        raise AssertionError("the spectrum ran for a sample whose Jacobian is zero")

    monkeypatch.setattr(analysis, "spectrum_iterative", never)
    monkeypatch.setattr(analysis, "attribution_jacobian", never)
    x = torch.load(files["x"], weights_only=True)
    records = certify(load_model(files["zero"]), x, eps=0.1, steps=4)
    for rec in records:
        assert rec["xi_max"] == 0.0 and rec["attr_norm"] == 0.0
        assert any("every logit is equal" in r for r in rec["degenerate"])
        assert any("Jacobian is zero" in r for r in rec["degenerate"])
    table = CliRunner().invoke(app, ["bound", files["zero"], files["x"], "--steps", "4",
                                     "--quiet"])
    assert table.exit_code == 0, table.output
    assert table.stdout.count("degenerate: x.pt[") == 3
    assert "integrated gradients, m = 4: attribution bounds" in table.stdout


def test_completeness_gap_above_the_attribution_is_degenerate():
    class Steep(nn.Module):  # f = sum tanh(10 x): flat at x = 1, f(1) - f(0) large
        def forward(self, x):
            return torch.stack([torch.tanh(10 * x).flatten(1).sum(1),
                                torch.zeros(x.shape[0], dtype=x.dtype)], 1)

    x = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    rec = certify(Steep(), x, eps=0.01, steps=1, spectral="full")[0]
    assert rec["completeness_gap"] > rec["attr_norm"]
    assert any("completeness gap" in r and "--steps" in r for r in rec["degenerate"])
    fine = certify(Steep(), x * 0.05, eps=0.01, steps=64, spectral="full")[0]
    assert fine["degenerate"] == []


def test_smooth_models_skip_the_probe(monkeypatch):
    import attrcert.degenerate as degenerate

    calls = []
    original = degenerate.jacobian_vector_product

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(degenerate, "jacobian_vector_product", counted)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    for method in ("saliency", "integrated_gradients", "input_x_gradient"):
        recs = certify(net, x, eps=0.01, method=method, steps=4)
        assert all(r["degenerate"] == [] and r["xi_max"] > 0 for r in recs)
    assert calls == []


