"""``attrcert smooth`` on the command line: JSON, table, files, gates, resuming, the
report, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from attrcert.cli import app, main
from attrcert.loading import load_model
from attrcert.smoothing import SmoothingOptions, smooth
from attrcert.smoothness import NonSmoothModelWarning

from .conftest import SAMPLES
from .processes import run_attrcert as cli

RELU = str(SAMPLES / "digits_relu_maxpool.pt2")
FAST = ["--method", "saliency", "--radius", "4", "--eps", "0.02", "--samples", "30",
        "--quiet"]


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("images") / "two.pt"
    torch.save(torch.load(SAMPLES / "digits.pt", weights_only=True)[:2].clone(), path)
    return str(path)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_json_is_one_document_with_the_certificate_fields(two):
    proc = cli("smooth", RELU, two, *FAST, "--format", "json", "--omega", "0.2")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["config"]["command"] == "smooth" and doc["config"]["radius"] == 4.0
    assert "smoothed attribution" in doc["config"]["assumption"]
    rec = doc["samples"][0]
    for key in ("cos_sim_lower", "confidence", "radius", "samples", "M", "eps", "h_norm",
                "h_norm_lower", "estimate_error", "deviation_bound", "volume_ratio",
                "angle_deg", "vacuous", "cos_to_estimate_lower", "eps_max", "radius_min",
                "assumption", "d", "seconds", "source", "config_hash"):
        assert key in rec, key
    assert rec["confidence"] == pytest.approx(0.999) and rec["d"] == 784
    assert "not of g" in rec["assumption"]
    assert "cos_sim_lower" in doc["summary"]
    assert proc.stderr == ""  # ReLU: no warning about non-smooth operations here


def test_table_says_what_the_numbers_are_and_matches_the_api(two):
    result = invoke("smooth", RELU, two, *FAST)
    assert result.exit_code == 0, result.output
    for text in ("cos_lower", "||h||_low", "not of g", "probabilistic certificate",
                 "two.pt[1]"):
        assert text in result.output
    with warnings.catch_warnings():  # smoothing holds for any model: no first-order warning
        warnings.simplefilter("error", NonSmoothModelWarning)
        api = smooth(load_model(RELU), torch.load(two),
                     options=SmoothingOptions(radius=4, eps=0.02, samples=30),
                     method="saliency")
    doc = json.loads(invoke("smooth", RELU, two, *FAST, "--format", "json").stdout)
    for ours, ref in zip(doc["samples"], api, strict=True):
        assert ours["cos_sim_lower"] == pytest.approx(ref["cos_sim_lower"], rel=1e-9)


def test_pixels_save_attributions_report_and_gates(two, tmp_path):
    saved, report = tmp_path / "a.safetensors", tmp_path / "rep"
    result = invoke("smooth", RELU, two, *FAST, "--sigma", "0.25", "--samples", "60",
                    "--save-attributions", str(saved), "--report", str(report),
                    "--require-cos-above", "0.999", "--format", "json")
    assert result.exit_code == 1  # the gate: no certificate reaches 0.999
    assert "gate failed: cos_sim_lower < 0.999" in result.output
    tensors = load_file(saved)
    assert tensors["smoothed"].shape == (2, 1, 28, 28)
    assert tensors["certified_bins"].shape == (2, 28, 28)
    assert tensors["certified_bins"].min() >= -1 and tensors["certified_bins"].max() <= 3
    for name in ("report.html", "report.json", "cosine_vs_eps.png", "certified_pixels.png",
                 "smoothed_000.png"):
        assert (report / name).is_file(), name
    page = (report / "report.html").read_text()
    assert "not of g" in page and "data:image/png;base64" in page
    ok = invoke("smooth", RELU, two, *FAST, "--sigma", "0.25", "--samples", "60",
                "--require-cos-above", "-1", "--require-certified-fraction", "0")
    assert ok.exit_code == 0, ok.output


def test_resume_from_jsonl_gives_the_same_records(two, tmp_path):
    out = tmp_path / "run.jsonl"
    first = invoke("smooth", RELU, two, *FAST, "--output", str(out))
    assert first.exit_code == 0, first.output
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n")  # as if interrupted after one sample
    again = cli("smooth", RELU, two, *FAST[:-1], "--output", str(out))
    assert again.returncode == 0 and "resuming: 1 of 2" in again.stderr
    redone = [json.loads(line) for line in out.read_text().splitlines()]
    before = [json.loads(line) for line in lines]
    assert [r["cos_sim_lower"] for r in redone] == [r["cos_sim_lower"] for r in before]


@pytest.mark.parametrize("args,message", [
    ([], "Missing option '--radius'"),
    (["--radius", "0"], "radius = 0.0 must be a finite number > 0"),
    (["--radius", "1", "--alpha", "1.5"], "must be a finite number in (0, 1)"),
    (["--radius", "1", "--require-certified-fraction", "0.5"], "needs --sigma"),
    (["--radius", "1", "--sigma", "0.2", "--top-k", "50,abc"], "--top-k"),
    (["--radius", "1", "--sigma", "0.2", "--correction", "none"], "holm"),
    (["--radius", "1", "--sigma", "0.2", "--samples", "10", "--selection-samples", "10"],
     "must be below --samples"),
    (["--radius", "1", "--omega", "2", "--metric", "cosine"], "must lie in (0, 1]"),
    (["--radius", "1", "--spectral", "full"], "No such option"),
])
def test_bad_options_are_one_line_and_exit_2(two, args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["smooth", RELU, two, "--quiet", *args])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert out == ""


def test_save_attributions_refuses_shards(two, tmp_path):
    proc = cli("smooth", RELU, two, *FAST, "--shard", "0/2", "--output",
               str(tmp_path / "s.jsonl"), "--save-attributions", str(tmp_path / "a.safetensors"))
    assert proc.returncode == 2 and "--save-attributions does not work" in proc.stderr
