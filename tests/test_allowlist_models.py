"""The operator allowlist and the TorchScript checker accept what real models export: a
representative handful of timm 1.0 models (small sizes, random weights, ``pretrained=False``)
exported with ``torch.export`` (static batch and dynamic batch) and TorchScript (traced and
scripted) load through attrcert and compute the model's own logits.

The full survey (16 timm/torchvision models, static, dynamic and decomposed, traced and
scripted) is in the report of issue 21; these cover every operator family it found: convs,
batch norm, in-place activations (``relu_``, ``hardswish_``), attention, layer norm, GELU,
``roll``/``index`` (windows), pooling, TorchScript's scripted ``torch.nn.functional`` with
its loops.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from attrcert.loading import load_model
from attrcert.loading.export_program import program_findings
from attrcert.loading.torchscript_code import torchscript_findings

timm = pytest.importorskip("timm")

#: name -> (timm model, keyword arguments, input side, dynamic batch)
EXPORTS = {
    "resnet18": ("resnet18", {}, 32, False),
    "mobilenetv3_small_050": ("mobilenetv3_small_050", {}, 32, True),
    "vit_tiny": ("vit_tiny_patch16_224", {"img_size": 32}, 32, False),
    "convnext_atto": ("convnext_atto", {}, 32, True),
    "swin": ("swin_tiny_patch4_window7_224", {"img_size": 32, "window_size": 2,
                                              "embed_dim": 24, "depths": (2, 1, 1, 1),
                                              "num_heads": (1, 1, 1, 1)}, 32, False),
}
SCRIPTS = {"resnet18": "script", "mobilenetv3_small_050": "trace", "vit_tiny": "script"}


def _model(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    arch, kwargs, side, _ = EXPORTS[name]
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=5, **kwargs).eval()
    return model, torch.rand(2, 3, side, side)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module, torch.Tensor]]:
    """Each model exported once (static batch 1, or dynamic batch), shared by the tests."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("timm")
    out = {}
    for name, (_, _, _, dynamic) in EXPORTS.items():
        model, x = _model(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamic:
                batch = torch.export.Dim("batch", min=1, max=64)
                program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
            else:
                program = torch.export.export(model, (x[:1],))
        path = folder / f"{name}.pt2"
        torch.export.save(program, str(path))
        out[name] = (path, model, x)
    return out


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_timm_exports_pass_the_checker_and_load(name, exports):
    path, model, x = exports[name]
    with zipfile.ZipFile(path) as zf:
        program = next(n for n in zf.namelist() if n.endswith("/models/model.json"))
        assert program_findings(json.loads(zf.read(program)), program) == []
    loaded = load_model(path)
    batch = x if EXPORTS[name][3] else x[:1]
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), model(batch), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_timm_torchscript_passes_the_checker_and_loads(name, tmp_path):
    model, x = _model(name)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        module = (torch.jit.script(model) if SCRIPTS[name] == "script"
                  else torch.jit.trace(model, (x[:1],), check_trace=False))
        torch.jit.save(module, str(tmp_path / "m.pt"))
    assert torchscript_findings(tmp_path / "m.pt") == []
    loaded = load_model(tmp_path / "m.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x[:1]), model(x[:1]), rtol=1e-4, atol=1e-5)
