"""Sound mode on timm's own graphs: EfficientNet's in-place ``aten.silu_`` is read as SiLU
and proved; a ViT's class token (``aten.cat`` with a constant) is read, and the ViT is
refused for what sound mode really lacks (LayerNorm, attention), named before anything
else; in-place forms and constants in concatenations keep their meaning."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attrcert import certify
from attrcert.errors import InputError
from attrcert.sound.graph import read_graph
from attrcert.sound.nodes import forward

torch.set_num_threads(1)
F64 = torch.float64


def dynamic(model: nn.Module, x: torch.Tensor) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        two = x[:1].expand(2, *x.shape[1:])
        return torch.export.export(model, (two,),
                                   dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()


class InPlace(nn.Module):
    """In-place SiLU and ``+=`` whose overwritten tensors are read afterwards, and a class
    token concatenated to patch tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 2, 2)
        self.token = nn.Parameter(torch.randn(1, 1, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        F.silu(h, inplace=True)  # result unused: h is overwritten
        g = torch.tanh(h)
        h += g  # aten.add_
        t = h.flatten(2).transpose(1, 2)
        t = torch.cat([self.token.expand(x.shape[0], -1, -1), t], dim=1)
        return self.head(torch.sigmoid(t).mean(1))


def test_in_place_forms_and_constant_tokens_are_read_faithfully():
    torch.manual_seed(0)
    model = InPlace().double().eval()
    x = torch.rand(2, 1, 6, 6, dtype=F64)
    with torch.no_grad():
        want = model(x)
    for m in (model, dynamic(model, x)):
        graph = read_graph(m, x[:1])
        assert torch.allclose(forward(graph, x), want, rtol=0, atol=1e-14)
    recs = certify(model, x, eps=1e-3, method="saliency", dtype="float64", sound=True,
                   verify=True, attack_steps=20)
    for rec in recs:
        assert 0 < rec["T_e_hat"] <= rec["T_e_sound"] and not rec["violation_sound"]


def test_in_place_on_a_view_is_refused():
    class View(nn.Module):
        def forward(self, x):
            y = torch.tanh(x)
            y.flatten(1).add_(1.0)
            return y.sum((2, 3))

    with pytest.raises(InputError, match=r"in.place"):
        read_graph(View(), torch.rand(1, 2, 3, 3))


timm = pytest.importorskip("timm")


def test_timm_efficientnet_in_place_silu_is_proved():
    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    net = net.double().eval()
    assert any(getattr(m, "inplace", False) for m in net.modules())  # SiLU(inplace=True)
    x = torch.rand(1, 3, 8, 8, dtype=F64)
    graph = read_graph(dynamic(net, x), x)
    with torch.no_grad():
        assert torch.allclose(forward(graph, x), net(x), rtol=0, atol=1e-12)
    rec = certify(net, x, eps=1e-4, method="saliency", dtype="float64", sound=True,
                  verify=True, attack_steps=10)[0]
    assert rec["T_e_sound"] is not None and rec["T_e_hat"] <= rec["T_e_sound"]
    assert rec["violation_sound"] is False


def test_timm_vit_is_refused_for_layer_norm_and_attention():
    torch.manual_seed(0)
    net = timm.create_model("test_vit", pretrained=False, num_classes=3, img_size=16,
                            patch_size=8).eval()
    x = torch.rand(1, 3, 16, 16)
    for m in (net, dynamic(net, x)):
        with pytest.raises(InputError) as info:
            read_graph(m, x)
        assert "LayerNorm (aten.layer_norm)" in str(info.value)
        assert "attention" in str(info.value)
