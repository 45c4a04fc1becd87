"""Sound mode's numbers and refusals are pinned (issue 24: operators as classes).

``T_e_sound``'s two bounds (``interval``, ``mean_value``) and ``margin_lower`` on small models
that between them hold every kind of operator sound mode reads (the float32 tanh MLP sample,
a Softplus CNN whose thresholds are crossed, a residual block with eval BatchNorm, a
squeeze-excitation gate, a concatenation, a stop-gradient), for saliency, input x gradient
and integrated gradients, l2 and l-inf, equal the values pinned in
``tests/golden/sound_values.json`` to :data:`RTOL`; and every refusal message equals the
pinned one, character for character. A refactoring of sound mode must not move either.

Regenerate with ``python -m tests.test_sound_pinned`` only for a change that is meant to
move a bound, and say which and why in the commit.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attrcert.attributions import get_method
from attrcert.errors import InputError
from attrcert.perturbation import Perturbation
from attrcert.sound import SoundBounder, read_graph

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
PINS = Path(__file__).with_name("golden") / "sound_values.json"
RTOL = 1e-12
DT = torch.float64


class Residual(nn.Module):
    """conv-BN-Softplus, a residual block (conv-BN-Softplus-conv-BN + input, Softplus),
    global average pooling, a linear head."""

    def __init__(self, c: int = 3) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.softplus(self.bn0(self.stem(x)))
        h = F.softplus(h + self.bn2(self.conv2(F.softplus(self.bn1(self.conv1(h))))))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class Gate(nn.Module):
    """Conv-SiLU and a squeeze-excitation gate (an elementwise product of two branches)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc1, self.fc2 = nn.Linear(3, 2), nn.Linear(2, 3)
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv(x))
        s = torch.sigmoid(self.fc2(F.silu(self.fc1(h.mean((2, 3))))))
        return self.fc(F.avg_pool2d(h * s[:, :, None, None], 2).flatten(1))


class Concat(nn.Module):
    """Two branches (tanh, GELU) concatenated along the channels, a constant shift."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([torch.tanh(self.a(x)), F.gelu(self.b(x))], dim=1)
        return self.fc(torch.tanh(0.5 - h).flatten(1))


class Stop(nn.Module):
    """``l2(t * t.detach()) + l3(x)``: a stop-gradient (interval bound only)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(9, 6), nn.Linear(6, 3), nn.Linear(9, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        t = torch.tanh(2.0 * self.l1(x))
        return self.l2(t * t.detach()) + self.l3(x)


def _seeded(build: Callable[[], nn.Module], seed: int, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    net = build()
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


def _softplus_cnn() -> nn.Module:
    """A Softplus CNN whose first threshold (``beta 2, threshold 0.2``: the identity above
    ``z = 0.1``) lies inside the range of its pre-activations: some units are above it on
    the whole ball, some straddle it, so the twin and its gap enter."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Softplus(beta=2.0, threshold=0.2),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2 * 2 * 2, 4), nn.Softplus(),
                        nn.Linear(4, 3))
    with torch.no_grad():
        net[0].bias.add_(0.4)
    return net


def _image(seed: int, shape: tuple[int, ...] = (1, 1, 6, 6)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = torch.export.load(str(ROOT / "sample_models" / "digits_tanh_mlp.pt2")).module()
    return net, torch.load(ROOT / "sample_models" / "digits8.pt", weights_only=True)[:1]


MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "tanh_mlp_sample": _mlp,
    "softplus_cnn": lambda: (_seeded(_softplus_cnn, 0, 1.5), _image(1)),
    "residual": lambda: (_seeded(Residual, 0, 1.5), _image(2, (1, 1, 4, 4))),
    "gate": lambda: (_seeded(Gate, 1, 2.0), _image(3, (1, 1, 4, 4))),
    "concat": lambda: (_seeded(Concat, 2, 1.5), _image(4, (1, 1, 4, 4))),
    "stop_gradient": lambda: (_seeded(Stop, 3, 1.0), _image(5, (1, 1, 3, 3))),
}

#: name -> (model, method, norm, eps)
CASES: dict[str, tuple[str, str, float, float]] = {
    "mlp_saliency_l2": ("tanh_mlp_sample", "saliency", 2.0, 0.05),
    "mlp_ig_linf": ("tanh_mlp_sample", "integrated_gradients", math.inf, 0.002),
    "cnn_saliency_l2": ("softplus_cnn", "saliency", 2.0, 0.05),
    "cnn_ixg_linf": ("softplus_cnn", "input_x_gradient", math.inf, 0.01),
    "cnn_ig_l2": ("softplus_cnn", "integrated_gradients", 2.0, 0.05),
    "residual_saliency_linf": ("residual", "saliency", math.inf, 0.02),
    "residual_ig_l2": ("residual", "integrated_gradients", 2.0, 0.05),
    "gate_saliency_l2": ("gate", "saliency", 2.0, 0.1),
    "gate_ixg_linf": ("gate", "input_x_gradient", math.inf, 0.03),
    "concat_saliency_l2": ("concat", "saliency", 2.0, 0.1),
    "concat_ig_linf": ("concat", "integrated_gradients", math.inf, 0.02),
    "stop_saliency_l2": ("stop_gradient", "saliency", 2.0, 0.1),
    "stop_ixg_linf": ("stop_gradient", "input_x_gradient", math.inf, 0.05),
}


def compute(name: str) -> dict[str, float | None]:
    model, method, norm, eps = CASES[name]
    net, x = MODELS[model]()
    bounder = SoundBounder(net, x, get_method(method, steps=4), Perturbation(norm, eps))
    with torch.no_grad():
        y = int(net(x).argmax())
    res = bounder.bound(x, y)
    return {"T_e_sound": res.value, "interval": res.interval, "mean_value": res.mean_value,
            "margin_lower": res.margin}


class Hostile(nn.Module):
    """One operation that sound mode refuses, after a linear layer."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.l1 = nn.Linear(4, 4)
        self.ln = nn.LayerNorm(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l1(x.flatten(1))
        k = self.kind
        if k == "relu":
            h = F.relu(h)
        elif k == "hardswish":
            h = F.hardswish(h)
        elif k == "layer_norm":
            h = self.ln(h)
        elif k == "layer_norm_and_relu":
            h = F.relu(self.ln(h))
        elif k == "softmax":
            h = torch.softmax(h, 1)
        elif k == "bmm":
            h = (h.unsqueeze(2) @ h.unsqueeze(1)).flatten(1)[:, :4]
        elif k == "floor":
            h = torch.div(h, 0.5, rounding_mode="floor")
        elif k == "flat":
            h = h.view(-1).unsqueeze(0)
        elif k == "half":
            h = h.half().float()
        elif k == "gelu_tanh":
            h = F.gelu(h, approximate="tanh")
        elif k == "div_by_x":
            h = 1.0 / h
        elif k == "exp":
            h = torch.exp(h)
        elif k == "view_read_late":
            v = h[:, :3]
            F.silu(h, inplace=True)
            return v * 1.0
        elif k == "max_pool":
            h = F.max_pool1d(h.unsqueeze(1), 2).flatten(1)
        return torch.tanh(h)[:, :3]


REFUSALS = ("relu", "hardswish", "layer_norm", "layer_norm_and_relu", "softmax", "bmm",
            "floor", "flat", "half", "gelu_tanh", "div_by_x", "exp", "view_read_late",
            "max_pool")


def refusal(kind: str) -> str:
    torch.manual_seed(0)
    with pytest.raises(InputError) as info:
        read_graph(Hostile(kind).eval(), torch.rand(1, 1, 2, 2))
    return str(info.value)


@pytest.fixture(scope="module")
def pins() -> dict:
    return json.loads(PINS.read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_sound_values_equal_the_pinned_ones(name: str, pins: dict) -> None:
    got, want = compute(name), pins["values"][name]
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        if value is None:
            assert got[key] is None, (name, key)
        else:
            assert got[key] is not None and math.isclose(got[key], value, rel_tol=RTOL), \
                (name, key, got[key], value)


@pytest.mark.parametrize("kind", REFUSALS)
def test_refusal_messages_equal_the_pinned_ones(kind: str, pins: dict) -> None:
    assert refusal(kind) == pins["refusals"][kind]


def test_the_pins_cover_every_kind_of_operator(pins: dict) -> None:
    """The cases hold both bounds, both norms, every attribution, a crossed Softplus
    threshold, and a label certificate that is proved and one that is not."""
    values = pins["values"]
    assert {CASES[n][1] for n in CASES} == {"saliency", "input_x_gradient",
                                            "integrated_gradients"}
    assert any(v["mean_value"] is None for v in values.values())
    assert any(v["mean_value"] is not None and v["mean_value"] < v["interval"]
               for v in values.values())
    bounder = SoundBounder(*MODELS["softplus_cnn"](), get_method("saliency"),
                           Perturbation(2.0, 0.2))
    assert bounder.has_threshold


def write() -> None:
    """Rewrite :data:`PINS` from the attrcert on the path."""
    out = {"values": {n: compute(n) for n in sorted(CASES)},
           "refusals": {k: refusal(k) for k in REFUSALS}}
    PINS.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINS}", file=sys.stderr)


if __name__ == "__main__":
    write()
