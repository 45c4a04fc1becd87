"""End to end on the bundled sample models: both archive formats, both input formats."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from attrcert import NonSmoothModelWarning, certify, max_eps
from attrcert.errors import InputError, LoadError
from attrcert.loading import load_images, load_labels, load_model, sniff_model

from .conftest import SAMPLES


@pytest.fixture(scope="module")
def digits():
    images = load_images(SAMPLES / "digits")
    labels = load_labels(SAMPLES / "digits" / "labels.csv", images.sources)
    return images, labels


def test_folder_and_tensor_file_hold_the_same_images(digits):
    images, labels = digits
    tensor = load_images(SAMPLES / "digits.pt").tensor
    assert images.tensor.shape == (16, 1, 28, 28)
    torch.testing.assert_close(images.tensor, tensor, rtol=0, atol=0)
    assert images.sources[0] == "digit_00.png" and labels.shape == (16,)


def test_archive_formats_are_recognised_by_content(tmp_path):
    assert sniff_model(SAMPLES / "digits_softplus.pt2") == "export"
    assert sniff_model(SAMPLES / "digits_softplus.pt") == "torchscript"
    assert sniff_model(SAMPLES / "digits_softplus.safetensors") == "safetensors"
    renamed = tmp_path / "model.bin"
    renamed.write_bytes((SAMPLES / "digits_softplus.pt2").read_bytes())
    assert sniff_model(renamed) == "export"
    with pytest.raises(LoadError, match="weights only"):
        load_model(SAMPLES / "digits_softplus.safetensors")
    with pytest.raises(LoadError, match=r"not a torch\.export"):
        load_model(SAMPLES / "digits" / "digit_00.png")
    with pytest.raises(InputError, match="no PNG"):
        load_images(tmp_path)


def test_sample_model_is_accurate(digits):
    images, labels = digits
    model = load_model(SAMPLES / "digits_softplus.pt2")
    with torch.no_grad():
        accuracy = (model(images.tensor).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.9


def test_export_and_torchscript_give_the_same_certificates(digits):
    images, labels = digits
    x, y = images.tensor[:2], labels[:2]
    records = {}
    for name in ("digits_softplus.pt2", "digits_softplus.pt"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", NonSmoothModelWarning)
            records[name] = certify(load_model(SAMPLES / name), x, eps=0.1, steps=8, target=y)
    for a, b in zip(*records.values(), strict=True):
        for key in ("xi_max", "T_e", "T_e_prime", "T_c_deg", "label_radius"):
            assert a[key] == pytest.approx(b[key], rel=1e-4)
        assert a["smooth"] is True and a["label_preserved"] is True
        assert 0 < a["T_e"] <= a["T_e_prime"] < a["attr_norm"]
        assert a["c"] < 1.5  # smooth model, small eps: close to linear
    json.dumps(records, allow_nan=False)


def test_relu_maxpool_model_is_flagged(digits):
    images, _ = digits
    model = load_model(SAMPLES / "digits_relu_maxpool.pt2")
    with pytest.warns(NonSmoothModelWarning):
        rec = certify(model, images.tensor[:1], eps=0.1, method="saliency")[0]
    assert rec["smooth"] is False
    assert any(op.startswith("ReLU") for op in rec["nonsmooth_ops"])
    assert rec["xi_max"] == 0.0  # piecewise linear: the saliency bound is meaningless


def test_max_eps_on_sample(digits):
    images, _ = digits
    model = load_model(SAMPLES / "digits_softplus.pt2")
    (rec,) = max_eps(model, images.tensor[:1], omega=5.0, metric="angle", steps=8)
    again = certify(model, images.tensor[:1], eps=rec["eps_max"], steps=8)[0]
    assert again["T_c_deg"] == pytest.approx(5.0, rel=1e-6)


def test_float64_and_device_options(digits):
    images, _ = digits
    model = load_model(SAMPLES / "digits_softplus.pt2")
    x = images.tensor[:1]
    single = certify(model, x, eps=0.1, steps=4, method="input_x_gradient")[0]
    double = certify(model, x, eps=0.1, steps=4, method="input_x_gradient", dtype="float64",
                     device="auto")[0]
    assert double["xi_max"] == pytest.approx(single["xi_max"], rel=1e-4)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched
    from attrcert.errors import OptionError

    with pytest.raises(OptionError, match="device"):
        certify(model, x, eps=0.1, device="tpu")
    with pytest.raises(OptionError, match="dtype"):
        certify(model, x, eps=0.1, dtype="float16")
