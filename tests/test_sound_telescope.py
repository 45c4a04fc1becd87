"""The telescoped bound on a layer's Jacobian deviation (attrcert.sound.telescope, issue 16):
``||diag(w)^(1/2) (J_k(x') - J_k(x))|| <= a`` for every ``x'`` in the ball, checked against
autograd at random ball points and along the attack's worst directions, and the bound it
feeds is no looser than the entrywise one and still not beaten."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import jacrev

from attrcert.attributions import get_method
from attrcert.perturbation import Perturbation
from attrcert.sound import Balls, PassOptions, SoundBounder, enclose
from attrcert.sound.nodes import evaluate
from attrcert.sound.operators import Elementwise
from attrcert.sound.pointpass import telescope_at
from attrcert.sound.telescope import deviation

from .proofs import strongest
from .test_sound_graphs import make_net, sample_input

DT = torch.float64


def _cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Softplus(), nn.AvgPool2d(2), nn.Conv2d(3, 4, 2),
                        nn.Tanh(), nn.Flatten(), nn.Linear(4, 6), nn.SiLU(),
                        nn.Linear(6, 3)).to(DT).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)
    return net, torch.rand(1, 1, 6, 6, dtype=DT, generator=torch.Generator().manual_seed(2))


def test_telescoped_deviation_holds_at_sampled_points() -> None:
    for net, x, eps in ((*_cnn(), 0.3), (make_net("resnet"), sample_input(), 0.2)):
        b = SoundBounder(net, x, get_method("saliency"), Perturbation(2, eps))
        y = int(net(x).argmax())
        assert b.ups, "the test needs layers the telescope applies to"
        tel = telescope_at(b.graph, x, 2.0, y, b.ups, PassOptions(fixed=b.fixed))
        one = torch.ones(1, dtype=DT)
        enc = enclose(b.graph, Balls(x, eps * one, 2.0), y, PassOptions(fixed=b.fixed, keep=True))
        assert enc.ball is not None and enc.point is not None and enc.tangents is not None
        nodes = b.graph.nodes
        gen = torch.Generator().manual_seed(0)
        points = torch.randn(24, x.numel(), generator=gen, dtype=DT)
        points = eps * points / points.norm(dim=1, keepdim=True)
        for k, ups in b.ups.items():
            slopes = {}
            for a in ups:
                act = nodes[a]
                assert isinstance(act, Elementwise)
                slopes[a] = act.slope_deviation(enc.ball[act.inputs[0]],
                                                enc.point[act.inputs[0]], None)
            tangents = {a: enc.tangents[nodes[a].inputs[0]] for a in ups}
            n = int(torch.Size(nodes[k].shape).numel())
            w = torch.rand(1, n, generator=gen, dtype=DT) + 0.1
            a, bb = deviation(tel, k, w, slopes, tangents, {})[0].tolist()

            def jac(v: torch.Tensor, k: int = k, g: object = b.graph,
                    like: torch.Tensor = x) -> torch.Tensor:
                return jacrev(lambda u: evaluate(g, u.view_as(like))[k].reshape(-1))(v)  # type: ignore[arg-type]

            j0 = jac(x.reshape(-1))
            root = w[0].sqrt().unsqueeze(1)
            assert float(torch.linalg.matrix_norm(root * j0, 2)) <= bb * (1 + 1e-9)
            worst = 0.0
            for delta in points:
                dj = jac(x.reshape(-1) + delta) - j0
                worst = max(worst, float(torch.linalg.matrix_norm(root * dj, 2)))
            assert 0.0 < worst <= a, (k, worst, a)


def test_telescope_tightens_and_stays_sound() -> None:
    net, x = _cnn()
    y = int(net(x).argmax())
    att, pert = get_method("saliency"), Perturbation(2, 0.3)
    with_t = SoundBounder(net, x, att, pert).bound(x, y)
    without = SoundBounder(net, x, att, pert, telescope=False).bound(x, y)
    found = strongest(net, x, "saliency", 2, 0.3)
    assert with_t.mean_value is not None and without.mean_value is not None
    assert found <= with_t.mean_value <= without.mean_value * (1 + 1e-9), (with_t, without)
