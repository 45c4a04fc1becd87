"""The command line on the sample model: table, pure JSON on stdout, exit status 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from typer.testing import CliRunner

from attrcert import __version__
from attrcert.cli import app

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
MODEL = str(SAMPLES / "digits_softplus.pt2")


def _two_images(tmp_path: Path) -> str:
    path = tmp_path / "two.pt"
    torch.save(torch.load(SAMPLES / "digits.pt", weights_only=True)[:2].clone(), path)
    return str(path)


def test_json_stdout_is_one_strict_document(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "attrcert", "bound", MODEL, _two_images(tmp_path), "--eps",
         "0.05", "--steps", "4", "--format", "json"],
        capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert set(doc) == {"config", "samples", "summary"}
    assert [s["index"] for s in doc["samples"]] == [0, 1]
    assert doc["samples"][0]["source"] == "two.pt[0]"
    assert doc["summary"]["samples"] == 2


def test_table_output(tmp_path):
    result = CliRunner().invoke(app, ["bound", MODEL, _two_images(tmp_path), "--steps", "4"])
    assert result.exit_code == 0, result.output
    assert "T'_e" in result.output and "two.pt[1]" in result.output
    assert "locally linear" in result.output


def test_max_eps_json(tmp_path):
    result = CliRunner().invoke(app, ["max-eps", MODEL, _two_images(tmp_path), "--omega", "0.1",
                                      "--metric", "cosine", "--steps", "4", "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert all(s["eps_max"] > 0 and s["metric"] == "cosine" for s in doc["samples"])


def test_bad_input_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "attrcert", "bound", str(tmp_path / "missing.pt2"),
         _two_images(tmp_path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_option_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["bound", MODEL, _two_images(tmp_path), "--eps", "-1"])
    assert result.exit_code == 2
    assert "eps" in result.output


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
