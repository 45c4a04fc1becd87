"""Sound mode on graphs, not chains (issue 16): residual additions with eval BatchNorm and
global average pooling, squeeze-excitation gates (an elementwise product of two branches,
whose own second derivative is a bilinear Hessian term), concatenation.

Each net is read from the module, from torch.export (dynamic batch) and from TorchScript
(``torch.jit.trace``); the proof tests attack the bounds (PGD, two seeds, and random points
of the ball) and check that the attack is strong enough to reach the linearisation's worst
case, so that a bound shrunk below it would fail.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from attrcert.attributions import get_method
from attrcert.cli import app
from attrcert.errors import InputError
from attrcert.perturbation import Perturbation
from attrcert.sound import (
    Balls,
    HessianWeights,
    PassOptions,
    SoundBounder,
    enclose,
    forward,
    read_graph,
)
from attrcert.sound.hessian import HessianSum
from zoo import ResidualSoftplus

from .proofs import strongest

DT = torch.float64


class ResNet(nn.Module):
    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c),
                                  nn.Softplus())
        self.block = ResidualSoftplus(c)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


class SENet(nn.Module):
    """Conv-SiLU, a squeeze-excitation gate ``x * sigmoid(fc(silu(fc(mean(x)))))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc1, self.fc2 = nn.Linear(4, 2), nn.Linear(2, 4)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv(x))
        s = torch.sigmoid(self.fc2(F.silu(self.fc1(h.mean((2, 3))))))
        return self.fc(F.avg_pool2d(h * s[:, :, None, None], 2).flatten(1))


class CatNet(nn.Module):
    """Two branches concatenated along the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 2, 3, padding=1), nn.Conv2d(3, 2, 1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([torch.tanh(self.a(x)), F.gelu(self.b(x))], dim=1)
        return self.fc(torch.tanh(h).flatten(1))


def make_net(name: str, scale: float = 2.0) -> nn.Module:
    torch.manual_seed({"resnet": 0, "se": 1, "cat": 2}[name])
    net = {"resnet": ResNet, "se": SENet, "cat": CatNet}[name]()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(scale)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.to(DT).eval()


def sample_input(seed: int = 1, n: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(seed))


def _forms(net: nn.Module) -> dict[str, nn.Module]:
    x = sample_input(9, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(net, (x,), dynamic_shapes=(
            {0: torch.export.Dim("batch")},)).module()
        traced = torch.jit.trace(net, x)
    return {"module": net, "export": exported, "torchscript": traced}


NAMES = ["resnet", "se", "cat"]


@pytest.mark.parametrize("name", NAMES)
def test_graph_reproduces_the_model_in_every_format(name: str) -> None:
    net = make_net(name)
    x = sample_input(3, 3)
    kinds = None
    for form, model in _forms(net).items():
        graph = read_graph(model, x[:1])
        assert torch.allclose(forward(graph, x), net(x), atol=1e-12), form
        kinds = kinds or {n.kind for n in graph.nodes}
    assert kinds is not None and {"resnet": "add", "se": "mul", "cat": "cat"}[name] in kinds


@pytest.mark.parametrize("name", NAMES)
def test_enclosure_at_a_point_holds_the_hessian(name: str) -> None:
    """At radius 0 the gradient and the Hessian enclosures contain autograd's, to 1e-6: with
    residual additions, and with the product's bilinear term (without it the SE net's Hessian
    would be off by ``J_a^T diag(u) J_b + J_b^T diag(u) J_a``)."""
    net, x = make_net(name), sample_input()
    graph = read_graph(net, x)
    y = int(net(x).argmax())
    acc = HessianSum(x.numel(), x.device, track_a=False)
    one = torch.ones(1, dtype=DT)
    enc = enclose(graph, Balls(x, 0.0 * one, 2.0), y, PassOptions(hessian=HessianWeights(acc, one)))
    xx = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(xx)[0, y], xx)
    lo, hi = enc.grad0
    assert bool((lo[0] <= grad.reshape(-1)).all() and (grad.reshape(-1) <= hi[0]).all())
    hess = torch.autograd.functional.hessian(lambda v: net(v.view_as(x))[0, y], x.reshape(-1))
    st = acc.finish()
    spread = float(torch.linalg.matrix_norm(st.p, 2) + torch.linalg.matrix_norm(st.r, 2))
    assert float(torch.linalg.matrix_norm(hess - st.c, 2)) <= spread + st.slack + 1e-12
    assert spread + st.slack < 1e-6 * (1.0 + float(hess.abs().max()))


@pytest.mark.parametrize(("name", "method", "norm", "eps"), [
    ("resnet", "saliency", 2, 0.3), ("resnet", "integrated_gradients", 2, 0.1),
    ("resnet", "saliency", "inf", 0.02), ("se", "saliency", 2, 0.3),
    ("se", "input_x_gradient", "inf", 0.03), ("se", "integrated_gradients", 2, 0.3),
    ("cat", "saliency", 2, 0.5), ("cat", "input_x_gradient", 2, 0.1)])
def test_graph_bounds_hold_against_attacks(name: str, method: str, norm: float | str,
                                           eps: float) -> None:
    net, x = make_net(name), sample_input()
    bounder = SoundBounder(_forms(net)["export"], x, get_method(method, steps=4),
                           Perturbation(norm, eps))
    y = int(net(x).argmax())
    res = bounder.bound(x, y)
    found = strongest(net, x, method, norm, eps)
    assert res.mean_value is not None
    assert res.interval >= found and res.mean_value >= found, (res, found)
    # the attack is strong: it reaches the linearisation's worst case (eps sigma_max(J) for
    # l2, ||J eps sign(v_max)|| for l-inf), so a bound shrunk below that would fail here
    jac = bounder.jacobian(x, y)
    if norm == 2:
        linear = eps * float(torch.linalg.matrix_norm(jac, 2))
    else:
        v = torch.linalg.svd(jac).Vh[0]
        linear = float(torch.linalg.vector_norm(jac @ (eps * torch.sign(v))))
    assert found >= 0.95 * linear, (found, linear)


def test_layer_norm_and_attention_are_refused_by_name() -> None:
    ln = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.LayerNorm(6), nn.Tanh(),
                       nn.Linear(6, 2)).to(DT).eval()
    with pytest.raises(InputError, match="LayerNorm"):
        read_graph(ln, torch.rand(1, 3, 2, 2, dtype=DT))

    class Attention(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = x.flatten(2)
            w = torch.softmax(t.transpose(1, 2) @ t, dim=-1)
            return (t @ w).flatten(1)[:, :2]

    with pytest.raises(InputError, match=r"softmax|attention"):
        read_graph(Attention().eval(), torch.rand(1, 3, 2, 2, dtype=DT))


def test_cli_sound_verify_on_an_exported_resnet(tmp_path) -> None:
    net = make_net("resnet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(net.float(), (sample_input(9, 2).float(),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, str(tmp_path / "resnet.pt2"))
    torch.save(sample_input(4, 3).float(), tmp_path / "x.pt")
    result = CliRunner().invoke(app, [
        "bound", str(tmp_path / "resnet.pt2"), str(tmp_path / "x.pt"), "--method",
        "saliency", "--eps", "0.05", "--sound", "--verify", "--restarts", "2",
        "--format", "json", "--quiet"])
    assert result.exit_code == 0, result.output
    for rec in json.loads(result.stdout)["samples"]:
        assert rec["violation_sound"] is False
        assert rec["T_e_sound"] >= rec["T_e_hat"] > 0
