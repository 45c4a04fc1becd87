"""Progress a user can rely on (attrcert.progress, attrcert.cli.reporter): every phase of a
sample reported, on stderr only, with its count and ETA; a run that will clearly take long
says so as soon as its first sample shows it, and again with the estimate after it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from attrcert import certify, max_eps
from attrcert.cli import reporter as reporter_module
from attrcert.cli.options import CommandOptions
from attrcert.cli.output import SafeConsole
from attrcert.cli.reporter import LONG_RUN_SECONDS, Reporter, duration, early_note, long_run_note
from attrcert.progress import ATTACK, ATTRIBUTION, JACOBIAN, LABEL, SPECTRUM, as_progress
from attrcert.settings import AttackOptions
from attrcert.spectral.krylov import Forecast

from .models import make_cnn

X = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))


class Phases:
    """A ``progress(phase, done, total)`` that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.calls.append((phase, done, total))

    def seen(self) -> list[str]:
        return list(dict.fromkeys(phase for phase, _, _ in self.calls))


@pytest.mark.parametrize(("spectral", "middle"), [("full", JACOBIAN), ("iterative", SPECTRUM)])
def test_certify_reports_every_phase_in_order(spectral, middle):
    phases = Phases()
    certify(make_cnn(), X, eps=0.05, method="saliency", spectral=spectral, batch_size=1,
            attack=AttackOptions(steps=2, restarts=1), progress=phases)
    assert phases.seen() == [ATTRIBUTION, middle, LABEL, ATTACK]
    ends = [(p, d, t) for p, d, t in phases.calls if t and d == t]
    assert sum(1 for p, _, _ in ends if p == ATTRIBUTION) == 2  # one batch of 1 each
    if middle == SPECTRUM:  # the products of a sample, counted, the total a forecast
        spectrum = [(d, t) for p, d, t in phases.calls if p == SPECTRUM]
        assert spectrum[0] == (1, 0)  # nothing to forecast from yet
        assert any(t for _, t in spectrum) and all(t == 0 or t >= d for d, t in spectrum)
    else:
        assert (JACOBIAN, 36, 36) in phases.calls


def test_max_eps_reports_its_phases():
    phases = Phases()
    max_eps(make_cnn(), X, omega=1.0, method="saliency", spectral="iterative", progress=phases)
    assert phases.seen()[:2] == [ATTRIBUTION, SPECTRUM]


def test_a_callback_of_two_arguments_hears_of_jacobian_rows_only():
    rows: list[tuple[int, int]] = []
    progress = as_progress(lambda done, total: rows.append((done, total)))
    assert progress is not None
    progress(ATTRIBUTION, 0, 2)
    progress(JACOBIAN, 4, 36)
    progress(SPECTRUM, 3, 0)
    assert rows == [(4, 36)]
    certify(make_cnn(), X[:1], eps=0.05, method="saliency", spectral="full",
            progress=lambda done, total: rows.append((done, total)))
    assert rows[-1] == (36, 36)


def test_the_long_run_lines():
    assert duration(4.2) == "4.2 s" and duration(40) == "40 s" and duration(2400) == "40 min"
    assert duration(9000) == "2.5 h"
    assert early_note(100, 1, 5.0) is None  # at least 500 s: not clearly long
    assert early_note(1000, 1, 0.9) == ("note: this run will take at least 15 min for 1000 "
                                        "samples (the first sample has taken 0.9 s so far)")
    assert "the first 16 samples have" in early_note(1000, 16, 20.0)
    assert early_note(1, 1, 700.0) == ("note: this run will take at least 12 min for 1 sample "
                                       "(the first sample has taken 12 min so far)")
    assert long_run_note(1000, 1, 0.5) is None
    assert long_run_note(1000, 2, 3.0) == "note: about 25 min for 1000 samples at 1.5 s each"
    assert long_run_note(3, 3, 9000.0) is None  # nothing left


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def quiet_reporter(monkeypatch, samples: int, *, terminal: bool = False,
                   quiet: bool = False) -> tuple[Reporter, io.StringIO, Clock]:
    """A reporter of ``samples`` samples whose stderr is a buffer and whose clock is set by
    hand."""
    buffer = io.StringIO()
    console = SafeConsole(file=buffer, force_terminal=terminal, width=120, soft_wrap=True,
                          highlight=False, markup=False)
    monkeypatch.setattr(reporter_module, "err", console)
    clock = Clock()
    opts = CommandOptions(model=Path("m.pt"), images=Path("x"), quiet=quiet)
    return Reporter(opts, "certifying", list(range(samples)), clock=clock), buffer, clock


def test_a_long_run_says_so_from_its_first_products(monkeypatch):
    reporter, buffer, clock = quiet_reporter(monkeypatch, 1000)
    with reporter:
        reporter.phase(ATTRIBUTION, 0, 1)
        clock.now = 0.3
        reporter.phase(SPECTRUM, 1, 0)
        assert buffer.getvalue() == ""  # 300 s at least: not clearly long yet
        clock.now = 0.8
        reporter.phase(SPECTRUM, 2, 0)
        assert buffer.getvalue().splitlines() == [
            "note: this run will take at least 13 min for 1000 samples (the first sample "
            "has taken 0.8 s so far)"]
        clock.now = 0.9
        reporter.phase(SPECTRUM, 3, 0)  # said once
        clock.now = 1.2
        reporter.batch_done([{"index": 0}], None)
    lines = buffer.getvalue().splitlines()
    assert lines[1] == "note: about 20 min for 1000 samples at 1.2 s each" and len(lines) == 2


def test_a_batch_counts_its_samples_and_quiet_says_nothing(monkeypatch):
    reporter, buffer, clock = quiet_reporter(monkeypatch, 1000)
    with reporter:
        reporter.phase(ATTRIBUTION, 0, 16)
        clock.now = 2.0  # 2 s for 16 samples: at least 125 s in all
        reporter.phase(SPECTRUM, 5, 0)
    assert buffer.getvalue() == ""
    reporter, buffer, clock = quiet_reporter(monkeypatch, 1000, quiet=True)
    with reporter:
        reporter.phase(ATTRIBUTION, 0, 1)
        clock.now = LONG_RUN_SECONDS
        reporter.phase(SPECTRUM, 5, 0)
        reporter.batch_done([{"index": 0}], None)
    assert buffer.getvalue() == ""


def test_the_terminal_shows_the_phase_in_flight_with_its_count_and_eta(monkeypatch):
    reporter, buffer, _ = quiet_reporter(monkeypatch, 3, terminal=True)
    with reporter:
        assert reporter.progress is not None
        reporter.phase(LABEL, 1, 2)
        reporter.progress.refresh()
        shown = buffer.getvalue()
        assert "certifying" in shown and "label test" in shown and "1/2" in shown
        assert "ETA" in shown
        reporter.phase(SPECTRUM, 7, 0)
        reporter.progress.refresh()
        assert "spectrum products" in buffer.getvalue()
        assert "estimated" not in buffer.getvalue()
        reporter.phase(SPECTRUM, 8, 20)
        reporter.progress.refresh()
        assert "spectrum products (total estimated)" in buffer.getvalue()
        assert "8/20" in buffer.getvalue()


def test_the_forecast_extrapolates_the_residuals_fall():
    """Residuals falling tenfold every 4 products from 1: tol 1e-6 is met at product 24;
    no forecast before three steps or when the residual does not fall."""
    forecast = Forecast(1e-6, max_products=300)
    totals = [forecast.add(k, 10 ** (-k / 4)) for k in range(2, 14, 2)]
    assert totals[:2] == [0, 0] and totals[2:] == [24, 24, 24, 24]
    assert forecast.add(24, 1e-7) == 24  # met: the total is what was spent
    flat = Forecast(1e-6, max_products=300)
    assert [flat.add(k, 0.5) for k in (2, 4, 6, 8)] == [0, 0, 0, 0]
    slow = Forecast(1e-12, max_products=50)
    assert [slow.add(k, 0.9 ** k) for k in (1, 2, 3)][-1] == 50  # capped at the step limit


def test_the_tables_columns_are_computed_by_the_table_not_stored():
    """``T_e^/bound`` and the verdict are columns of the table, never fields of a record."""
    from attrcert.cli.output import ATTACK_COLUMNS, attack_ratio, verdict

    records = certify(make_cnn(), X, eps=0.05, method="saliency", spectral="full",
                      attack=AttackOptions(steps=2, restarts=1))
    for rec in records:
        assert "attack_ratio" not in rec and "verdict" not in rec
        assert attack_ratio(rec) == pytest.approx(rec["T_e_hat"] / rec["T_e_prime"])
        assert verdict(rec) == ("held" if rec["verified"] else "label")
    assert verdict({"attack_checked": False}) is None
    assert verdict({"attack_checked": True, "verified": False, "violation": True}) == "VIOLATED"
    assert (attack_ratio, "T_e^/bound") in ATTACK_COLUMNS
