"""A Softplus threshold within reach of the ball is reported (issue 21): ``T_e`` assumes a
twice differentiable model, and where a unit crosses ``beta z = threshold`` the attribution
jumps, so ``T_e`` can be beaten by any factor at a small eps.

The attack here crosses the threshold on purpose: for the units nearest it, a step along
``grad z_j`` just past it (or eps along it), and ``||g(x') - g(x)||`` there. Every sample it
beats ``T_e`` on is flagged; with torch's default threshold (20) nothing is.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attrcert.attributions import get_method
from attrcert.certify import certify
from attrcert.kinks import softplus_calls

torch.set_num_threads(1)


def _trained(threshold: float) -> tuple[nn.Sequential, torch.Tensor]:
    """An MLP 64-512-10 with Softplus(beta=1, threshold), fitted to the 16 sample digits."""
    torch.manual_seed(0)
    x = torch.load("sample_models/digits8.pt", weights_only=True)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 512),
                        nn.Softplus(beta=1.0, threshold=threshold), nn.Linear(512, 10))
    y = torch.tensor([7, 6, 3, 7, 7, 3, 2, 8, 9, 3, 2, 6, 6, 4, 5, 1])
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval(), x


def crossing_attack(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float
                    ) -> torch.Tensor:
    """The largest saliency deviation found by stepping each sample across the threshold of
    one of its 32 hidden units nearest to it, within the l2 ball."""
    sal = get_method("saliency")
    g0 = sal(net, x, y)
    lin, act = net[1], net[2]
    z = lin(x.flatten(1)).detach()
    best = torch.zeros(x.shape[0], dtype=torch.float64)
    for n in range(x.shape[0]):
        gap = act.threshold / act.beta - z[n]
        for j in gap.abs().argsort()[:32].tolist():
            w = lin.weight[j].detach()
            for step in (gap[j] * 1.05 / (w @ w) * w, eps * torch.sign(gap[j]) * w / w.norm()):
                if step.norm() > eps:
                    continue
                moved = x[n:n + 1] + step.view_as(x[n:n + 1])
                dev = (sal(net, moved, y[n:n + 1]) - g0[n:n + 1]).norm()
                best[n] = max(float(best[n]), float(dev))
    return best


@pytest.mark.parametrize("eps", [1e-3, 1e-2])
def test_a_reachable_threshold_is_flagged_wherever_it_beats_t_e(eps: float) -> None:
    net, x = _trained(1.0)
    recs = certify(net, x, eps=eps, method="saliency")
    y = torch.tensor([r["target"] for r in recs])
    ratio = crossing_attack(net, x, y, eps) / torch.tensor([r["T_e"] for r in recs])
    flagged = torch.tensor([r["softplus_kink"] for r in recs])
    assert int((ratio > 1.05).sum()) >= 1  # the kink is real: T_e beaten (46x at 1e-3)
    assert not bool(((ratio > 1.05) & ~flagged).any())  # and never unreported
    for r in recs:
        if r["softplus_kink"]:
            assert r["smooth"] is False
            assert any("threshold=1" in op for op in r["nonsmooth_ops"])
            assert any("reaches its threshold" in w for w in r["warnings"])
        else:
            assert r["smooth"] is True


def test_the_default_threshold_is_never_flagged() -> None:
    net, x = _trained(20.0)
    for eps in (1e-3, 1e-2, 0.3):
        recs = certify(net, x, eps=eps, method="saliency")
        assert not any(r["softplus_kink"] for r in recs)
        assert all(r["smooth"] for r in recs)


def test_torchscript_softplus_is_checked_through_its_fx_rebuild() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load("sample_models/digits_softplus.pt")
    x = torch.load("sample_models/digits.pt", weights_only=True)[:2].requires_grad_(True)
    calls = softplus_calls(scripted, x)
    assert calls is not None and len(calls) >= 1
    assert all(c.threshold == 20.0 and c.z.requires_grad for c in calls)
    recs = certify(scripted, x.detach(), eps=0.1, method="saliency")
    assert not any(r["softplus_kink"] for r in recs)
    assert not any("could not check" in w for r in recs for w in r["warnings"])
