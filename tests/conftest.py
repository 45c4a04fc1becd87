"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .models import Quadratic, make_cnn, make_quadratic

torch.set_num_threads(1)  # robust when CI shares the cores (BENCHMARKS.md)


@pytest.fixture
def quadratic() -> Quadratic:
    return make_quadratic()


@pytest.fixture
def cnn() -> nn.Module:
    return make_cnn()


@pytest.fixture
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(4, 1, 6, 6, generator=gen, dtype=torch.float64)
