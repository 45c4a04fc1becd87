"""Sound mode in the model's own precision (issue 16): the proved bound covers torch's
float32 attribution, not only its float64 copy, and the Softplus threshold gap shrinks
with eps.

The rounding term rests on an assumed accuracy of torch's elementwise kernels
(:attr:`attrcert.sound.activations.Activation.ulps`); the first test measures it on dense grids so
that a platform whose kernels are less accurate fails here rather than silently.
"""

from __future__ import annotations

import torch
from torch import nn

from attrcert.attack import attack
from attrcert.attributions import get_method
from attrcert.perturbation import Perturbation
from attrcert.sound import Balls, SoundBounder, enclose
from attrcert.sound.activations import activation

from .proofs import strongest

U32 = 2.0 ** -24
KERNELS = [("tanh", (), nn.Tanh()), ("sigmoid", (), nn.Sigmoid()),
           ("softplus", (1.0, 20.0), nn.Softplus()),
           ("softplus", (4.0, 2.0), nn.Softplus(beta=4.0, threshold=2.0)),
           ("silu", (), nn.SiLU()), ("gelu", (), nn.GELU())]


def test_torch_float32_kernels_meet_the_assumed_accuracy() -> None:
    """``|fl(sigma(t)) - sigma(t)| <= ulps u (|sigma| + |t|)`` and the backward's slope within
    ``ulps u (1 + kappa |t|)``, with a factor 2 to spare, on 2e5 float32 points."""
    grid = torch.cat([torch.linspace(-40, 40, 160_001), torch.logspace(-30, 1.6, 20_001),
                      -torch.logspace(-30, 1.6, 20_001)])
    z64 = grid.double()
    for name, params, module in KERNELS:
        act = activation(name, *params)
        outs = []
        for z in (grid.clone().requires_grad_(True), z64.clone().requires_grad_(True)):
            y = module(z)
            (s,) = torch.autograd.grad(y.sum(), z)
            outs.append((y.detach().double(), s.double()))
        (y32, s32), (y64, s64) = outs
        value = float(((y32 - y64).abs() / (U32 * (y64.abs() + z64.abs()) + 1e-300)).max())
        slope = float(((s32 - s64).abs() / (U32 * (1.0 + act.kappa * z64.abs()))).max())
        assert value <= act.ulps / 2 and slope <= act.ulps / 2, (name, params, value, slope)


def _nearly_linear(dtype: torch.dtype) -> nn.Sequential:
    """The audit's model: tanh MLP, d = 16, first layer x0.02, output layer x100."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    with torch.no_grad():
        net[1].weight.mul_(0.02)
        net[3].weight.mul_(100.0)
    return net.to(dtype).eval()


def _strongest(net: nn.Module, x: torch.Tensor, y: int, eps: float, points: int) -> float:
    """Best ``||g(x') - g(x)||`` of PGD (two seeds) and ``points`` sphere points, all
    evaluated by torch in the model's own precision."""
    assert int(net(x).argmax()) == y
    return strongest(net, x, "saliency", 2, eps, attack_steps=30, points=points, noise_seed=1)


def test_float32_model_is_not_beaten_and_the_float64_bound_alone_is() -> None:
    """The audit's case (float32, saliency, l2, eps 1e-3): the attack and 2,000 sphere points
    evaluate torch's float32 ``g``; the bound with the rounding term holds, the bound of the
    float64 copy alone (what sound mode proved before) is beaten: the term is needed."""
    eps = 1e-3
    net32 = _nearly_linear(torch.float32)
    x = torch.rand((1, 1, 4, 4), generator=torch.Generator().manual_seed(5))
    y = int(net32(x).argmax())
    found = _strongest(net32, x, y, eps, 2000)
    pert, att = Perturbation(2, eps), get_method("saliency")
    res = SoundBounder(net32, x, att, pert).bound(x, y)
    assert res.mean_value is not None and res.value >= found, (res, found)
    net64 = _nearly_linear(torch.float64)
    plain = SoundBounder(net64, x.double(), att, pert).bound(x.double(), y)
    assert plain.value < found, (plain, found)  # the float64 proof does not cover float32


def test_float32_sample_mlp_bound_holds_for_every_method() -> None:
    """The scikit-learn tanh MLP as shipped (float32): the three methods, l2 and l-inf."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.export.load("sample_models/digits_tanh_mlp.pt2").module()
    x = torch.load("sample_models/digits8.pt", weights_only=True)[:1]
    y = int(model(x).argmax())
    for method, norm, eps in (("saliency", 2, 0.01), ("input_x_gradient", "inf", 0.002),
                              ("integrated_gradients", 2, 0.01)):
        att, pert = get_method(method, steps=4), Perturbation(norm, eps)
        res = SoundBounder(model, x, att, pert).bound(x, y)
        found = attack(model, x, attribution=att, target=torch.tensor([y]), perturbation=pert,
                       steps=20, restarts=2, seed=0, label_constraint=False)
        assert res.value >= float(found.deviation[0]), (method, res, found.deviation)


def _threshold_net() -> tuple[nn.Sequential, torch.Tensor]:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.Softplus(beta=4, threshold=2),
                        nn.Linear(24, 4)).double().eval()
    with torch.no_grad():
        net[1].bias.add_(0.5)  # some units above the threshold (z > 0.5), some below
    return net, torch.rand(1, 1, 4, 4, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(2))


def test_softplus_threshold_gap_shrinks_with_eps() -> None:
    """``Softplus(beta=4, threshold=2)``: the units whose interval lies above the threshold
    are exactly linear there, so no gap is paid for them and the bound tends to ``T_e``
    (it stayed at 3.5x ``T_e`` for every eps before issue 16)."""
    net, x = _threshold_net()
    att = get_method("saliency")
    y = int(net(x).argmax())
    bounder = SoundBounder(net, x, att, Perturbation(2, 1e-3))
    one = torch.ones(1, dtype=torch.float64)
    above = enclose(bounder.graph, Balls(x, one * 1e-3, 2.0), y).above
    assert above and bool(next(iter(above.values())).any())  # the case the test is about
    jac = bounder.jacobian(x, y)
    t_e = 1e-3 * float(torch.linalg.matrix_norm(jac, 2))
    assert bounder.bound(x, y).value <= 1.01 * t_e


def test_softplus_threshold_inside_the_ball_stays_sound() -> None:
    net, x = _threshold_net()
    y = int(net(x).argmax())
    for eps in (0.1, 0.3):
        res = SoundBounder(net, x, get_method("saliency"), Perturbation(2, eps)).bound(x, y)
        found = _strongest(net, x, y, eps, 500)
        assert res.mean_value is not None and res.mean_value >= found and res.interval >= found
