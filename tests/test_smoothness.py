"""Non-smooth operations are found in eager, functional and exported models, and reported."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attrcert import NonSmoothModelWarning, certify, find_nonsmooth

from .models import make_cnn


def test_smooth_cnn_has_no_findings(cnn, images):
    assert find_nonsmooth(cnn, images) == []


def test_relu_and_max_pool_are_found(images):
    found = find_nonsmooth(make_cnn(smooth=False), images)
    assert any(item.startswith("ReLU") for item in found)
    assert any(item.startswith("max-pooling") for item in found)


class FunctionalRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(36, 3).double()

    def forward(self, x):
        return self.lin(F.relu(x.flatten(1)) + x.flatten(1).abs())


def test_functional_ops_inside_forward_are_found(images):
    found = find_nonsmooth(FunctionalRelu(), images)
    assert "ReLU (aten.relu)" in found and "abs (aten.abs)" in found


def test_exported_model_is_inspected(images):
    model = make_cnn(smooth=False)
    exported = torch.export.export(model, (images[:1],)).module()
    found = find_nonsmooth(exported, images)
    assert any(item.startswith("ReLU") for item in found)
    assert any(item.startswith("max-pooling") for item in found)


def test_torchscript_model_is_inspected(images):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(make_cnn(smooth=False), images[:1])
    assert any(item.startswith("ReLU") for item in find_nonsmooth(scripted, images))


def test_certify_warns_and_records(images):
    with pytest.warns(NonSmoothModelWarning, match="not twice differentiable"):
        records = certify(make_cnn(smooth=False), images[:2], eps=0.1, steps=2)
    assert records[0]["smooth"] is False
    assert records[0]["nonsmooth_ops"]
    assert "estimates, not certificates" in records[0]["warnings"][0]


def test_certify_on_smooth_model_does_not_warn(cnn, images):
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonSmoothModelWarning)
        records = certify(cnn, images[:1], eps=0.1, steps=2)
    assert records[0]["smooth"] is True and records[0]["warnings"] == []
    assert records[0]["attack_checked"] is False


def test_each_kind_of_operation_is_listed_once_with_its_aten_ops(images):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(make_cnn(smooth=False), images[:1])
    found = find_nonsmooth(scripted, images)  # the graph holds max_pool2d, the run its kernel
    assert [item for item in found if item.startswith("max-pooling")] == [
        "max-pooling (aten.max_pool2d, aten.max_pool2d_with_indices)"]
