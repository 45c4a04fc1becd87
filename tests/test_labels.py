"""Proposition 1 is first-order and says so; a label attack checks it; sound mode proves a
label certificate (issue 21).

- the label attack (:func:`attrcert.attack.margin.margin_attack`) meets the exact radius of
  a linear model (where Eq. 8 is exact) from both sides, and every change of label it
  reports is real (the model's own argmax at a point of the ball);
- on the trained tanh MLP sample it finds the first-order ``label_radius`` broken, and
  ``--require-verified`` fails on it;
- ``margin_lower`` (sound mode) is never beaten: brute force over dense grids of 2-D balls
  on random small graphs (thresholded Softplus, products, stop-gradients, float32 and
  float64), and the label attack on the sample MLP, where it certifies all 16 labels.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from attrcert.attack.margin import margin_attack, margins
from attrcert.attributions import get_method
from attrcert.certify import certify
from attrcert.cli import app
from attrcert.perturbation import Perturbation
from attrcert.sound import SoundBounder

torch.set_num_threads(1)
MLP, DIGITS8 = "sample_models/digits_tanh_mlp.pt2", "sample_models/digits8.pt"


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = torch.export.load(MLP).module()
    return net, torch.load(DIGITS8, weights_only=True)


def _linear(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(9, 4)).double().eval(), \
        torch.rand(6, 1, 3, 3, dtype=torch.float64)


@pytest.mark.parametrize("norm", [2.0, math.inf, 3.0])
def test_label_attack_meets_the_exact_radius_of_a_linear_model(norm: float) -> None:
    """For logits linear in x, Proposition 1's radius is the exact distance to the nearest
    label change: the attack finds none just inside it and one just outside."""
    net, x = _linear()
    recs = certify(net, x, eps=0.5, norm=norm, method="saliency")
    radius = torch.tensor([r["label_radius"] for r in recs], dtype=torch.float64)
    y = torch.tensor([r["target"] for r in recs])
    assert all(r["label_method"] == "first_order" for r in recs)
    inside = margin_attack(net, x, y, norm, radius * (1 - 1e-6), steps=60)
    assert not bool(inside.flipped.any())
    outside = margin_attack(net, x, y, norm, radius * 1.02, steps=60)
    assert bool(outside.flipped.all())
    assert bool((outside.distance <= radius * 1.02 * (1 + 1e-9)).all())
    assert bool((outside.distance >= radius * (1 - 1e-6)).all())


def test_label_changes_the_attack_reports_are_real() -> None:
    net, x = _mlp()
    y = net(x).argmax(1)
    eps = 3.0
    found = margin_attack(net, x, y, 2.0, torch.full((16,), eps), steps=20)
    assert bool(found.flipped.any())
    with torch.no_grad():
        moved = net(x + found.delta).argmax(1)
    norms = found.delta.reshape(16, -1).norm(dim=1)
    assert bool((norms <= eps * (1 + 1e-6)).all())
    assert torch.equal(found.flipped, moved != y)
    assert bool((found.distance[found.flipped] <= norms[found.flipped] * (1 + 1e-6)).all())
    assert torch.allclose(found.margin, margins(net(x + found.delta).double(), y).detach(),
                          atol=1e-6)


def test_first_order_label_radius_is_broken_on_the_trained_mlp_and_said_so() -> None:
    """The issue: the label flipped inside the reported radius on trained nets. The label
    attack finds it (the fields, the warning, ``verified`` false)."""
    net, x = _mlp()
    recs = certify(net, x, eps=3.0, method="saliency", verify=True, attack_steps=3)
    broken = [r for r in recs if r["label_radius_violated"]]
    assert len(broken) >= 4
    for r in broken:
        assert r["label_flip_distance"] < r["label_radius"]
        assert r["verified"] is False
        assert any("Proposition 1 is first-order" in w for w in r["warnings"])
    for r in recs:
        assert r["margin_hat"] is not None
        if r["label_preserved_violated"]:
            assert r["label_preserved"] and r["label_flip_distance"] <= 3.0


def test_require_verified_fails_on_a_label_change(tmp_path) -> None:
    result = CliRunner().invoke(app, [
        "bound", MLP, DIGITS8, "--method", "saliency", "--eps", "3", "--verify",
        "--attack-steps", "2", "--require-verified", "--quiet"])
    assert result.exit_code == 1
    assert "label changed" in result.output
    assert "inside label_radius" in result.output and "first-order" in result.output


# --- the proved label certificate -------------------------------------------------------

class Tiny(nn.Module):
    """A random 2-input graph: two branches (Softplus with a low threshold, and a product
    of a gate with a stop-gradient), added, then logits."""

    def __init__(self, seed: int, act: str, stop: bool) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.l1, self.l2, self.l3 = nn.Linear(2, 6), nn.Linear(2, 6), nn.Linear(6, 3)
        self.act = {"softplus": nn.Softplus(beta=2.0, threshold=1.0), "tanh": nn.Tanh(),
                    "silu": nn.SiLU(), "gelu": nn.GELU()}[act]
        self.stop = stop
        for p in self.parameters():
            p.data *= 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        a = self.act(self.l1(x))
        g = torch.sigmoid(self.l2(x))
        b = a * (g.detach() if self.stop else g)
        return self.l3(a + b)


def _grid(eps: float, linf: bool, n: int = 41) -> torch.Tensor:
    t = torch.linspace(-eps, eps, n, dtype=torch.float64)
    pts = torch.cartesian_prod(t, t)
    if not linf:
        pts = pts[pts.norm(dim=1) <= eps]
        ang = torch.linspace(0, 2 * math.pi, 400, dtype=torch.float64)
        pts = torch.cat([pts, eps * torch.stack([ang.cos(), ang.sin()], 1)])
    return pts


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("act", ["softplus", "tanh", "silu", "gelu"])
def test_margin_lower_is_never_beaten_by_brute_force(act: str, dtype: torch.dtype) -> None:
    """Dense grids of 2-D balls (l2: the disc and its circle; l-inf: the square), torch's
    margins in the model's precision against ``margin_lower``; odd seeds stop gradients,
    Softplus seeds put a unit just below its threshold (the ball straddles the kink). At
    eps 0.02 the proof is within 2x of the grid's drop (so a mis-scaled form would be
    caught); the float32 proof covers float32's rounding where the float64 one alone is
    beaten (:func:`test_the_rounding_term_is_needed_and_present`)."""
    checked = certified = 0
    for seed in range(4):
        net = Tiny(seed, act, stop=seed % 2 == 1).to(dtype).eval()
        x = torch.randn(1, 1, 1, 2, generator=torch.Generator().manual_seed(seed)).to(dtype)
        if act == "softplus":  # unit 0 just below beta z = threshold (both float32 and
            w, z = net.l1.weight[0].detach(), net.l1(x.flatten(1))[0, 0].detach()
            x = x + ((0.499 - z) / (w @ w) * w).view_as(x)  # float64 on one side of it)
        y = int(net(x).argmax())
        at_x = float(margins(net(x).double(), torch.tensor([y])).detach())
        for norm, eps in ((2, 0.02), ("inf", 0.02), (2, 0.3), ("inf", 0.2), (2, 1.0)):
            bounder = SoundBounder(net, x, get_method("saliency"), Perturbation(norm, eps))
            low = bounder.bound(x, y).margin
            assert low is not None
            pts = _grid(eps, norm == "inf").to(dtype).view(-1, 1, 1, 2)
            with torch.no_grad():
                found = float(margins(net(x + pts).double(), torch.full((pts.shape[0],), y))
                              .min())
            assert found >= low, (seed, norm, eps, found, low)
            if eps == 0.02 and act != "softplus" and dtype == torch.float64:
                assert at_x - low <= 2.0 * (at_x - found), (seed, norm, at_x, found, low)
            checked += 1
            certified += low > 0
    assert checked == 20 and certified >= 4  # not vacuous


def test_the_rounding_term_is_needed_and_present() -> None:
    """At eps 1e-6 float32's rounding of the logits moves the margin more than the ball
    does: the float64 proof of the same weights is beaten by the float32 model's margins on
    a grid, the float32 proof (rounding term included) is not."""
    for act in ("softplus", "tanh", "gelu"):
        net = Tiny(0, act, stop=False).float().eval()
        x = torch.randn(1, 1, 1, 2, generator=torch.Generator().manual_seed(0))
        y, eps = int(net(x).argmax()), 1e-6
        pert = Perturbation("inf", eps)
        low32 = SoundBounder(net, x, get_method("saliency"), pert).bound(x, y).margin
        net64 = Tiny(0, act, stop=False).double().eval()
        low64 = SoundBounder(net64, x.double(), get_method("saliency"), pert).bound(
            x.double(), y).margin
        t = torch.linspace(-eps, eps, 201)
        pts = torch.cartesian_prod(t, t).view(-1, 1, 1, 2)
        with torch.no_grad():
            found = float(margins(net(x + pts).double(), torch.full((pts.shape[0],), y)).min())
        assert low32 is not None and low64 is not None
        assert low32 <= found < low64


def test_label_certificate_on_the_tanh_mlp_is_tight_and_never_beaten() -> None:
    net, x = _mlp()
    y = net(x).argmax(1)
    at_x = margins(net(x).double(), y).detach()
    for eps, proved in ((0.05, 16), (0.5, 0)):
        bounder = SoundBounder(net, x[:1], get_method("saliency"), Perturbation(2, eps))
        low = torch.tensor([bounder.bound(x[i:i + 1], int(y[i])).margin for i in range(16)],
                           dtype=torch.float64)
        found = margin_attack(net, x, y, 2.0, torch.full((16,), eps), steps=30, restarts=2)
        assert bool((found.margin >= low).all())
        assert int((low > 0).sum()) == proved
        if proved:  # tight: the proved drop of the margin within 2x of the attack's (1.3-1.5x)
            assert bool((at_x - low <= 2.0 * (at_x - found.margin)).all())


@pytest.mark.parametrize("method", ["input_x_gradient", "integrated_gradients"])
def test_every_method_certifies_the_same_ball(method: str) -> None:
    """The margin is about the model on the ball centred at x, whichever attribution."""
    net, x = _mlp()
    y = int(net(x[:1]).argmax())
    pert = Perturbation(2, 0.05)
    ref = SoundBounder(net, x[:1], get_method("saliency"), pert).bound(x[:1], y).margin
    other = SoundBounder(net, x[:1], get_method(method, steps=4), pert).bound(x[:1], y).margin
    assert ref is not None and other is not None
    assert other <= ref + 1e-9 and other >= ref - 1e-4 * abs(ref)


def test_cli_sound_verify_records_the_certificate() -> None:
    result = CliRunner().invoke(app, [
        "bound", MLP, DIGITS8, "--method", "saliency", "--eps", "0.05", "--sound", "--verify",
        "--attack-steps", "5", "--format", "json", "--quiet"])
    assert result.exit_code == 0, result.output
    for rec in json.loads(result.stdout)["samples"]:
        assert rec["label_certified"] is True
        assert rec["margin_hat"] >= rec["margin_lower"] > 0
        assert rec["violation_sound"] is False
        assert rec["label_flip_distance"] is None
