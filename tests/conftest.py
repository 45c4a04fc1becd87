"""Shared fixtures."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from attrcert.cli import main

from .models import Quadratic, make_cnn, make_quadratic

torch.set_num_threads(1)  # robust when CI shares the cores (BENCHMARKS.md)

ROOT = Path(__file__).resolve().parents[1]
#: The bundled sample models and images.
SAMPLES = ROOT / "sample_models"


def run_main(argv: Sequence[object], capture: pytest.CaptureFixture[str]
             ) -> tuple[int, str, str]:
    """``attrcert argv`` in this process: its exit status, stdout and stderr. ``capture`` is
    pytest's ``capfd`` (the file descriptors: torch's own logging, which holds the real
    stderr, is seen too) or ``capsys``; what was printed before the run is dropped."""
    capture.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capture.readouterr()
    return int(exc.value.code or 0), out, err


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow (the timm zoo's every family)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture
def hang_deadline():
    """The test must finish within 120 s: a hang is a failure, not a stall (SIGALRM)."""
    def expired(signum, frame):
        raise TimeoutError("the case did not finish within 120 s (a hang)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
