"""timm's own ReLU and Hard* networks (random weights, 32 px) through ``bound``: flagged and
degenerate as they are, certified beta-smoothed (``--beta-smooth``); MobileNetV3's
Hardsigmoid no longer stops the attribution Jacobian (``aten.hardsigmoid_backward``)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from typer.testing import CliRunner

from attrcert.cli import app

timm = pytest.importorskip("timm")
torch.set_num_threads(1)


@pytest.fixture(scope="module", params=["resnet18", "mobilenetv3_small_050"])
def exported(request, tmp_path_factory) -> tuple[str, str, str]:
    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    net = timm.create_model(request.param, pretrained=False, num_classes=4).eval()
    x = torch.rand(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(ep, folder / "net.pt2")
    torch.save(x[:1].clone(), folder / "x.pt")
    return request.param, str(folder / "net.pt2"), str(folder / "x.pt")


def bound(*args: str) -> dict:
    result = CliRunner().invoke(app, ["bound", *args, "--method", "saliency", "--dtype",
                                      "float64", "--spectral", "iterative", "--format", "json",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_timm_relu_and_hard_nets_flagged_then_certified_smoothed(exported):
    name, model, images = exported
    plain = bound(model, images, "--eps", "1e-3")
    assert plain["config"]["smooth"] is False
    ops = " ".join(plain["config"]["nonsmooth_ops"])
    assert "ReLU" in ops and ("max-pooling" in ops if name == "resnet18" else
                              "Hardsigmoid" in ops and "Hardswish" in ops)
    rec = plain["samples"][0]
    if name == "resnet18":  # piecewise linear: saliency's Jacobian is zero
        assert rec["T_e"] == 0.0 and "--beta-smooth" in rec["degenerate"][0]
    else:  # the squeeze-excitation gates are products: J != 0
        assert rec["T_e"] > 0 and rec["degenerate"] == []
    smooth = bound(model, images, "--eps", "1e-4", "--beta-smooth", "10", "--verify",
                   "--attack-steps", "10")
    assert smooth["config"]["smooth"] is True
    rec = smooth["samples"][0]
    assert rec["degenerate"] == [] and rec["beta_smooth"] == 10.0
    assert rec["predicted"] == plain["samples"][0]["predicted"] == rec["target"]
    assert 0 < rec["T_e"] and math.isfinite(rec["T_e"])
    # the attack on the smoothed explanation does not beat T'_e at this small eps
    assert rec["T_e_hat"] <= rec["T_e_prime"] * (1 + 1e-3), rec
