"""The command line: every command, output format, gate and exit status (docs/cli.md)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from attrcert import __version__, certify
from attrcert.cli import app
from attrcert.loading import load_model

from .conftest import SAMPLES
from .processes import run_attrcert as cli

MODEL = str(SAMPLES / "digits_softplus.pt2")
RELU = str(SAMPLES / "digits_relu_maxpool.pt2")
FAST = ["--steps", "4", "--quiet"]


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("images") / "two.pt"
    torch.save(torch.load(SAMPLES / "digits.pt", weights_only=True)[:2].clone(), path)
    return str(path)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_json_stdout_is_one_strict_document_and_stderr_is_quiet(two):
    proc = cli("bound", MODEL, two, "--eps", "0.05", "--format", "json", *FAST)
    assert proc.returncode == 0, proc.stderr
    doc = strict_json(proc.stdout)
    assert set(doc) == {"config", "samples", "summary"}
    assert doc["config"]["eps"] == 0.05 and doc["config"]["smooth"] is True
    assert doc["config"]["attack_checked"] is False
    sample = doc["samples"][0]
    for key in ("index", "source", "target", "predicted", "attr_norm", "eps", "norm", "method",
                "seconds", "xi_max", "T_e", "T_e_prime", "c", "T_c", "T_c_deg", "T_c_prime",
                "vacuous", "label_preserved", "label_radius", "label_kept"):
        assert key in sample
    assert sample["source"] == "two.pt[0]" and doc["summary"]["samples"] == 2
    assert proc.stderr == ""


def test_table_output_and_summary_panel(two):
    result = invoke("bound", MODEL, two, *FAST)
    assert result.exit_code == 0, result.output
    for text in ("T'_e", "two.pt[1]", "summary", "mean", "locally linear", "Theorem 1"):
        assert text in result.output


def test_results_match_the_python_api(two):
    proc = cli("bound", MODEL, two, "--eps", "0.05", "--format", "json", "--method",
               "saliency", "--quiet")
    doc = strict_json(proc.stdout)
    api = certify(load_model(MODEL), torch.load(two), eps=0.05, method="saliency")
    for ours, ref in zip(doc["samples"], api, strict=True):
        assert ours["T_e"] == pytest.approx(ref["T_e"], rel=1e-6)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_output_files(two, tmp_path, suffix):
    out = tmp_path / f"res{suffix}"
    result = invoke("bound", MODEL, two, "--output", str(out), *FAST)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    if suffix == ".json":
        assert len(strict_json(text)["samples"]) == 2
    elif suffix == ".jsonl":
        lines = [strict_json(line) for line in text.splitlines()]
        assert [r["index"] for r in lines] == [0, 1] and lines[0]["source"] == "two.pt[0]"
    else:
        rows = list(csv.DictReader(text.splitlines()))
        assert len(rows) == 2 and float(rows[0]["T_e"]) > 0 and rows[1]["source"] == "two.pt[1]"


def test_save_attributions(two, tmp_path):
    out = tmp_path / "attr.safetensors"
    result = invoke("bound", MODEL, two, "--save-attributions", str(out), *FAST)
    assert result.exit_code == 0, result.output
    tensors = load_file(str(out))
    assert tensors["attributions"].shape == (2, 1, 28, 28)
    assert tensors["v_max"].shape == (2, 1, 28, 28)
    norms = tensors["v_max"].flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(2), rtol=1e-5, atol=1e-5)


def test_folder_with_labels(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("digit_00.png", "digit_01.png"):
        (folder / name).write_bytes((SAMPLES / "digits" / name).read_bytes())
    (folder / "labels.csv").write_text("name,label\ndigit_00.png,7\ndigit_01.png,5\n")
    result = invoke("bound", MODEL, str(folder), "--labels", str(folder / "labels.csv"),
                    "--format", "json", *FAST)
    assert result.exit_code == 0, result.output
    doc = strict_json(result.stdout)
    assert [s["target"] for s in doc["samples"]] == [7, 5]
    assert doc["samples"][1]["predicted"] == 6 and doc["samples"][1]["label_preserved"] is False


def test_gates_exit_1_naming_the_samples(two):
    proc = cli("bound", MODEL, two, "--fail-above-te", "1e-9", *FAST)
    assert proc.returncode == 1
    assert "gate failed: T_e > 1e-09 for 2 sample(s): two.pt[0]" in proc.stderr
    assert cli("bound", MODEL, two, "--fail-above-te", "100", *FAST).returncode == 0
    proc = cli("bound", MODEL, two, "--fail-above-tc-deg", "0.001", *FAST)
    assert proc.returncode == 1 and "T_c > 0.001 degrees" in proc.stderr
    proc = cli("bound", MODEL, two, "--eps", "50", "--require-label-preserved", *FAST)
    assert proc.returncode == 1 and "Proposition 1" in proc.stderr
    assert cli("bound", MODEL, two, "--require-label-preserved", *FAST).returncode == 0


def test_max_eps_and_its_gate(two):
    result = invoke("max-eps", MODEL, two, "--omega", "0.1", "--metric", "cosine",
                    "--format", "json", *FAST)
    assert result.exit_code == 0, result.output
    doc = strict_json(result.stdout)
    assert all(s["eps_max"] > 0 and s["metric"] == "cosine" and s["omega"] == 0.1
               for s in doc["samples"])
    proc = cli("max-eps", MODEL, two, "--omega", "0.1", "--require-eps-above", "1e6", *FAST)
    assert proc.returncode == 1 and "eps_max < 1000000.0" in proc.stderr
    table = invoke("max-eps", MODEL, two, "--omega", "5", "--metric", "angle", "--modified",
                   *FAST)
    assert table.exit_code == 0, table.output
    assert "eps_max" in table.output and "T_e_prime" in table.output


def test_non_smooth_model_warns_on_stderr_only(two):
    proc = cli("bound", RELU, two, "--method", "saliency", "--format", "json", "--quiet")
    assert proc.returncode == 0
    doc = strict_json(proc.stdout)
    assert doc["config"]["smooth"] is False and doc["config"]["nonsmooth_ops"]
    assert "warning: model is not twice differentiable" in proc.stderr


def test_inspect():
    result = invoke("inspect", RELU, "--format", "json")
    assert result.exit_code == 0, result.output
    info = strict_json(result.stdout)
    assert info["input_shape"] == [1, 28, 28] and info["classes"] == 10
    assert info["smooth"] is False and any("max-pooling" in op for op in info["nonsmooth_ops"])
    table = invoke("inspect", str(SAMPLES / "digits_softplus.pt"), str(SAMPLES / "digits"))
    assert table.exit_code == 0, table.output
    assert "torchscript" in table.output and "none" in table.output


def test_normalisation_is_folded_into_the_model(two):
    proc = cli("bound", MODEL, two, "--mean", "0.5", "--std", "0.25", "--method", "saliency",
               "--format", "json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    doc = strict_json(proc.stdout)
    assert doc["config"]["mean"] == [0.5] and doc["config"]["std"] == [0.25]
    inner = load_model(MODEL)

    def wrapped(x):
        return inner((x - 0.5) / 0.25)

    api = certify(wrapped, torch.load(two), eps=0.1, method="saliency")
    assert doc["samples"][0]["T_e"] == pytest.approx(api[0]["T_e"], rel=1e-5)


@pytest.mark.parametrize("args", [
    ["bound", "MISSING.pt2", "IMAGES"],
    ["bound", MODEL, "IMAGES", "--eps", "-1"],
    ["bound", MODEL, "IMAGES", "--eps", "nan"],
    ["bound", MODEL, "IMAGES", "--norm", "0.5"],
    ["bound", MODEL, "IMAGES", "--steps", "0"],
    ["bound", MODEL, "IMAGES", "--method", "gradcam"],
    ["bound", MODEL, "IMAGES", "--device", "tpu"],
    ["bound", MODEL, "IMAGES", "--output", "results.txt"],
    ["bound", MODEL, "IMAGES", "--output", "/nonexistent/dir/x.json"],
    ["bound", MODEL, "IMAGES", "--mean", "0.5"],
    ["bound", MODEL, "IMAGES", "--bogus-flag"],
    ["max-eps", MODEL, "IMAGES"],
    ["max-eps", MODEL, "IMAGES", "--omega", "2", "--metric", "cosine"],
    ["max-eps", MODEL, "IMAGES", "--omega", "0.1", "--norm", "inf", "--modified"],
    ["bound", str(SAMPLES / "digits_softplus.safetensors"), "IMAGES"],
])
def test_bad_usage_and_input_exit_2_with_one_line(two, args):
    proc = cli(*[two if a == "IMAGES" else a for a in args], "--quiet")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"attrcert {__version__}"


@pytest.mark.parametrize("fmt", ["export", "torchscript", "safetensors+arch", "state_dict+arch"])
def test_every_loader_format_through_the_cli(two, tmp_path, fmt):
    arch = ["--arch", f"{SAMPLES / 'digits_arch.py'}:softplus_cnn"]
    if fmt == "export":
        args = [MODEL]
    elif fmt == "torchscript":
        args = [str(SAMPLES / "digits_softplus.pt")]
    elif fmt == "safetensors+arch":
        args = [str(SAMPLES / "digits_softplus.safetensors"), *arch]
    else:
        from safetensors.torch import load_file as load_st

        path = tmp_path / "weights.pt"
        torch.save(load_st(str(SAMPLES / "digits_softplus.safetensors")), path)
        args = [str(path), *arch]
    result = invoke("bound", args[0], two, *args[1:], "--method", "saliency", "--format",
                    "json", "--quiet")
    assert result.exit_code == 0, result.output
    ref = certify(load_model(MODEL), torch.load(two), eps=0.1, method="saliency")
    got = strict_json(result.stdout)["samples"]
    assert got[0]["T_e"] == pytest.approx(ref[0]["T_e"], rel=1e-5)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_would_run_code_is_refused(two, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save({"state": _Evil(marker)}, evil)
    proc = cli("bound", str(evil), two, "--quiet")
    assert proc.returncode == 2
    assert "--trust-pickle" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    proc = cli("bound", MODEL, str(evil), "--quiet")  # the same file given as images
    assert proc.returncode == 2 and not marker.exists()


def test_trusted_pickle_loads_with_a_one_line_warning(two, tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save(load_model(SAMPLES / "digits_softplus.safetensors",
                          arch=f"{SAMPLES / 'digits_arch.py'}:softplus_cnn"), whole)
    refused = cli("inspect", str(whole), two)
    assert refused.returncode == 2 and "--trust-pickle" in refused.stderr
    proc = cli("inspect", str(whole), two, "--trust-pickle", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert strict_json(proc.stdout)["classes"] == 10
    assert proc.stderr.strip().splitlines() == [
        f"warning: unpickling {whole} with --trust-code: this runs code from the file"]
