"""Untrusted files: no code runs from a model file, and no failure is silent.

A corpus of hostile files built from the sample model (tests/hostile.py): every tampered
archive exits 2 with one line naming the entry and --trust-pickle, never creates its marker
file, prints no torch traceback, and finishes under a timeout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from attrcert.errors import LoadError
from attrcert.loading import UntrustedPickleWarning, load_model
from attrcert.loading.export_program import expression_is_plain, guard_is_plain, target_is_safe

from . import hostile
from .conftest import SAMPLES, run_main
from .processes import run_attrcert

DIGITS = str(SAMPLES / "digits8.pt")
MODEL = str(SAMPLES / "digits_softplus.pt2")


#: A hang is a failure, not a stall: each test must finish within 120 s (conftest.py).
pytestmark = pytest.mark.usefixtures("hang_deadline")


@pytest.fixture(scope="module")
def one_image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "one.pt"
    torch.save(torch.load(SAMPLES / "digits.pt", weights_only=True)[:1].clone(), path)
    return str(path)


def assert_one_line_error(code: int, out: str, err: str, *words: str) -> None:
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])


# --------------------------------------------------------------------------- tampered archives


@pytest.mark.parametrize("name", sorted(hostile.REFUSED))
@pytest.mark.parametrize("command", ["bound", "inspect"])
def test_tampered_archive_is_refused_and_runs_nothing(name, command, tmp_path, one_image,
                                                      capfd):
    marker = tmp_path / "MARKER"
    build, words = hostile.REFUSED[name]
    model = hostile.rewrite(tmp_path / "model.pt2", build(marker))
    argv = ([command, str(model), one_image, "--steps", "2", "--quiet"] if command == "bound"
            else [command, str(model)])
    code, out, err = run_main(argv, capfd)
    assert_one_line_error(code, out, err, *words)
    assert not marker.exists(), "code from the archive ran"


@pytest.mark.parametrize("name", sorted(hostile.CORRUPT))
def test_corrupt_archive_is_one_line_without_torch_logs(name, tmp_path, capfd):
    build, words = hostile.CORRUPT[name]
    model = hostile.rewrite(tmp_path / "model.pt2", build())
    code, out, err = run_main(["inspect", str(model)], capfd)
    assert_one_line_error(code, out, err, "corrupt torch.export archive", *words)


def test_pickled_sample_inputs_are_never_unpickled(tmp_path, one_image, capfd):
    """The sample inputs are not needed to run the model: they are skipped, not unpickled."""
    marker = tmp_path / "MARKER"
    model = hostile.rewrite(tmp_path / "model.pt2", hostile.pickled_sample_inputs(marker))
    code, out, err = run_main(["bound", str(model), one_image, "--steps", "2", "--quiet",
                               "--format", "json"], capfd)
    assert code == 0, err
    assert not marker.exists()
    assert json.loads(out)["samples"][0]["T_e"] > 0


def test_trust_pickle_is_the_only_way_and_warns(tmp_path, one_image, capfd):
    model = hostile.rewrite(tmp_path / "model.pt2", hostile.benign_pickled_weight())
    code, out, err = run_main(["inspect", str(model)], capfd)
    assert_one_line_error(code, out, err, "use_pickle", "--trust-pickle")
    code, out, err = run_main(["bound", str(model), one_image, "--steps", "2", "--quiet",
                               "--format", "json", "--trust-pickle"], capfd)
    assert code == 0, err
    assert err.count("warning:") == 1 and "runs code" in err
    clean = load_model(SAMPLES / "digits_softplus.pt2")
    with pytest.warns(UntrustedPickleWarning, match="runs code"):
        trusted = load_model(model, trust_pickle=True)
    x = torch.load(one_image, weights_only=True)
    torch.testing.assert_close(trusted(x), clean(x), rtol=0, atol=0)


def test_tampered_archive_in_a_real_process(tmp_path, one_image):
    """The same refusal as a user sees it: a child process, exit 2, one line, no marker."""
    marker = tmp_path / "MARKER"
    model = hostile.rewrite(tmp_path / "model.pt2", hostile.pickled_weight(marker))
    done = run_attrcert("bound", str(model), one_image, "--quiet", timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--trust-pickle" in done.stderr and not marker.exists()


def test_checks_accept_what_torch_writes():
    assert expression_is_plain("Symbol('s31', positive=True, integer=True)")
    assert expression_is_plain("Mul(Integer(2), Symbol('s0', integer=True))")
    assert expression_is_plain("FloorDiv(s0, 2) + Mod(s1, 3)")
    assert guard_is_plain("L['x'].size()[0] <= 1024")
    assert target_is_safe("torch.ops.aten.conv2d.default")
    assert target_is_safe("torch.ops.aten.sym_size.int")
    assert target_is_safe("_operator.getitem")
    assert target_is_safe("torch.ops.higher_order.cond")


@pytest.mark.parametrize("text", [
    "__import__('os').system('id')", "Symbol('s0').__class__", "eval('1')", "open('x')",
    "s0[0]", "lambda: 0", "Symbol('__x')", "s0\nimport os", "exec", "x" * 20_000])
def test_expressions_that_are_not_arithmetic_are_refused(text):
    assert not expression_is_plain(text)
    assert not guard_is_plain(text)


@pytest.mark.parametrize("target", [
    "torch.os.system", "torch.load", "torch.ops.aten.from_file.default", "builtins.eval",
    "torch.ops.higher_order.triton_kernel_wrapper_mutation", "torch.ops.mylib.evil.default",
    "_operator.attrgetter", "math.__loader__", "os.system", "#custom"])
def test_targets_outside_the_allowlist_are_refused(target):
    assert not target_is_safe(target)


def test_refused_archive_through_the_api(tmp_path):
    marker = tmp_path / "MARKER"
    model = hostile.rewrite(tmp_path / "m.pt2", hostile.sympy_expression(marker))
    with pytest.raises(LoadError, match="--trust-pickle") as info:
        load_model(model)
    assert "\n" not in str(info.value) and not marker.exists()


def test_torchscript_pickles_cannot_name_python_objects(tmp_path, capfd):
    """TorchScript's own unpickler builds no Python objects: a constants.pkl that names
    os.system fails to load (one line) and runs nothing."""
    import pickle
    import zipfile

    marker = tmp_path / "MARKER"
    src = SAMPLES / "digits_softplus.pt"
    dst = tmp_path / "script.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("constants.pkl"):
                data = pickle.dumps(hostile.Payload(marker), protocol=2)
            zout.writestr(info.filename, data)
    code, out, err = run_main(["inspect", str(dst)], capfd)
    assert_one_line_error(code, out, err, "TorchScript")
    assert not marker.exists()


# --------------------------------------------------------------------------- silent failures


@pytest.fixture(scope="module")
def nonfinite_models(tmp_path_factory) -> dict[str, str]:
    """The tanh MLP's architecture exported with NaN / infinite output biases."""
    d = tmp_path_factory.mktemp("nan")
    out = {}
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
        with torch.no_grad():
            net[1].bias[3] = value
        x = torch.zeros(2, 1, 8, 8)
        batch = torch.export.Dim("batch", min=1, max=1024)
        ep = torch.export.export(net, (x,), dynamic_shapes=({0: batch},))
        torch.export.save(ep, d / f"{name}.pt2")
        out[name] = str(d / f"{name}.pt2")
    return out


@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("command", ["bound", "max-eps", "attack"])
def test_nonfinite_logits_exit_2_naming_model_and_sample(kind, command, nonfinite_models,
                                                         capfd):
    extra = ["--omega", "0.1"] if command == "max-eps" else []
    code, out, err = run_main([command, nonfinite_models[kind], DIGITS, "--method", "saliency",
                               "--quiet", *extra], capfd)
    assert_one_line_error(code, out, err, nonfinite_models[kind], "digits8.pt[0]",
                          "not finite")
    assert "RuntimeWarning" not in err


def _full(tmp_path: Path, name: str) -> Path:
    link = tmp_path / name
    link.symlink_to("/dev/full")
    return link


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("flag,name", [("--save-attributions", "a.safetensors"),
                                       ("--output", "r.json"), ("--output", "r.jsonl"),
                                       ("--output", "r.csv")])
def test_full_disk_is_an_error_not_exit_0(flag, name, tmp_path, one_image, capfd):
    target = _full(tmp_path, name)
    code, _out, err = run_main(["bound", MODEL, one_image, "--steps", "2", "--quiet", flag,
                               str(target)], capfd)
    assert_one_line_error(code, "", err, f"cannot write {target}", "No space left on device")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_stdout_is_an_error(one_image):
    import subprocess

    for extra in (["--format", "json"], []):  # the JSON document and the table
        with open("/dev/full", "w") as full:
            done = subprocess.run([sys.executable, "-m", "attrcert", "bound", MODEL, one_image,
                                   "--steps", "2", "--quiet", *extra], stdout=full,
                                  stderr=subprocess.PIPE, text=True, timeout=120, check=False)
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert "standard output" in lines[0] and "No space" in lines[0], lines


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_disk_for_shards_merge_and_report(tmp_path, one_image, capfd):
    shard = tmp_path / "s.jsonl"
    _full(tmp_path, "s.config.json.tmp")  # the sidecar is written there, then renamed
    code, out, err = run_main(["bound", MODEL, one_image, "--steps", "2", "--quiet",
                               "--shard", "0/1", "--output", str(shard)], capfd)
    assert_one_line_error(code, out, err, "s.config.json", "No space left on device")
    good = tmp_path / "good.jsonl"
    code, _, err = run_main(["bound", MODEL, one_image, "--steps", "2", "--quiet", "--shard",
                             "0/1", "--output", str(good)], capfd)
    assert code == 0, err
    merged = _full(tmp_path, "merged.json")
    code, out, err = run_main(["merge", str(merged), str(good)], capfd)
    assert_one_line_error(code, out, err, "merged.json", "No space left on device")
    for name in ("report.json", "sample_000.png", "report.html"):
        report = tmp_path / f"report_{name}"
        report.mkdir()
        _full(report, name)
        code, out, err = run_main(["report", MODEL, one_image, "--steps", "2", "--quiet",
                                   "--out", str(report), "--sweep", "0.1", "--attack-steps",
                                   "2", "--jacobian-max-d", "0"], capfd)
        assert_one_line_error(code, out, err, name, "No space left on device")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipes_are_refused_at_once(tmp_path, one_image, capfd):
    fifo = tmp_path / "r.jsonl"
    os.mkfifo(fifo)
    code, out, err = run_main(["bound", MODEL, one_image, "--quiet", "--output", str(fifo)],
                              capfd)
    assert_one_line_error(code, out, err, "named pipe")
    labels = tmp_path / "labels.csv"
    os.mkfifo(labels)
    code, out, err = run_main(["bound", MODEL, one_image, "--quiet", "--labels", str(labels)],
                              capfd)
    assert_one_line_error(code, out, err, "not a regular file")


@pytest.mark.parametrize("args,words", [
    (["--steps", "1" + "0" * 30], ["--steps"]),
    (["--attack-steps", "1" + "0" * 30, "--verify"], ["--attack-steps"]),
    (["--seed", "-1" + "0" * 30, "--verify"], ["--seed"]),
    (["--batch-size", "1" + "0" * 30], ["--batch-size"]),
    (["--threads", "1" + "0" * 30], ["--threads"]),
    (["--tol", "nan"], ["--tol", "finite"]),
    (["--eps", "nan"], ["--eps"]),
    (["--eps", "inf"], ["--eps"]),
    (["--fail-above-te", "nan"], ["--fail-above-te", "finite"]),
    (["--size", "100000", "100000"], ["--size"]),
])
def test_out_of_range_numbers_are_one_line(args, words, one_image, capfd):
    code, out, err = run_main(["bound", MODEL, one_image, "--quiet", *args], capfd)
    assert_one_line_error(code, out, err, *words)


def test_resumed_output_holding_junk_is_one_line(tmp_path, one_image, capfd):
    junk = tmp_path / "r.jsonl"
    junk.write_bytes(bytes(range(256)) * 4)
    code, out, err = run_main(["bound", MODEL, one_image, "--steps", "2", "--quiet",
                               "--output", str(junk)], capfd)
    assert_one_line_error(code, out, err, str(junk), "not an attrcert JSONL file")


def test_big_endian_npy_is_converted(tmp_path, one_image, capfd):
    x = torch.load(one_image, weights_only=True).numpy()
    little, big = tmp_path / "little.npy", tmp_path / "big.npy"
    np.save(little, x.astype("<f4"))
    np.save(big, x.astype(">f4"))
    records = []
    for path in (little, big):
        code, out, err = run_main(["bound", MODEL, str(path), "--method", "saliency",
                                   "--quiet", "--format", "json"], capfd)
        assert code == 0, err
        records.append(json.loads(out)["samples"][0])
    assert records[0]["xi_max"] == records[1]["xi_max"]


@pytest.mark.parametrize("body,words", [
    ("def make():\n    sys.exit(0)\n", ["make()", "SystemExit"]),
    ("def make():\n    raise KeyError('w')\n", ["make()", "KeyError"]),
    ("sys.exit(3)\ndef make():\n    pass\n", ["importing", "SystemExit"]),
])
def test_arch_factory_that_exits_or_raises_is_bad_input(body, words, tmp_path, capfd):
    arch = tmp_path / "arch.py"
    arch.write_text("import sys\n" + body)
    code, out, err = run_main(["inspect", str(SAMPLES / "digits_softplus.safetensors"),
                               "--arch", f"{arch}:make", "--size", "28", "28"], capfd)
    assert_one_line_error(code, out, err, *words)


def test_weights_of_another_dtype_are_converted_with_a_warning(tmp_path, one_image, capfd):
    from safetensors.torch import load_file, save_file

    state = load_file(SAMPLES / "digits_softplus.safetensors")
    doubled = tmp_path / "w64.safetensors"
    save_file({k: v.double() for k, v in state.items()}, doubled)
    arch = "sample_models/digits_arch.py:softplus_cnn"
    code, _out, err = run_main(["bound", str(doubled), one_image, "--arch",
                               str(SAMPLES.parent / arch), "--method", "saliency", "--quiet",
                               "--format", "json"], capfd)
    assert code == 0, err
    assert err.count("warning:") == 1 and "float64" in err and "float32" in err, err


def test_arch_help_says_it_runs_code(capfd):
    code, out, _ = run_main(["bound", "--help"], capfd)
    assert code == 0
    assert "imports and runs" in " ".join(out.split())


@pytest.fixture(scope="module")
def payloads(tmp_path_factory) -> dict[str, str]:
    """Files that would run ``touch MARKER`` if unpickled, one per input that reads files."""
    d = tmp_path_factory.mktemp("payloads")
    marker = d / "MARKER"
    torch.save({"x": hostile.Payload(marker)}, d / "payload.pt")
    np.save(d / "objects.npy", np.array([hostile.Payload(marker)], dtype=object),
            allow_pickle=True)
    (d / "junk.csv").write_bytes(bytes(range(256)))
    (d / "s.jsonl").write_bytes(bytes(range(256)))
    (d / "s.config.json").write_bytes(bytes(range(256)))
    return {"dir": str(d), "marker": str(marker)}


@pytest.mark.parametrize("args,words", [
    (["bound", MODEL, "{dir}/payload.pt"], ["payload.pt", "run code"]),
    (["bound", MODEL, "{dir}/objects.npy"], ["objects.npy", "pickle"]),
    (["bound", MODEL, "{one}", "--baseline", "{dir}/payload.pt"], ["payload.pt", "run code"]),
    (["bound", MODEL, "{one}", "--labels", "{dir}/junk.csv"], ["junk.csv"]),
    (["merge", "{dir}/out.json", "{dir}/s.jsonl"], ["s.config.json"]),
])
def test_every_file_input_refuses_code_and_junk(args, words, payloads, one_image, capfd):
    argv = [a.format(dir=payloads["dir"], one=one_image) for a in args]
    if argv[0] == "bound":
        argv += ["--steps", "2", "--quiet"]
    code, out, err = run_main(argv, capfd)
    assert_one_line_error(code, out, err, *words)
    assert not Path(payloads["marker"]).exists()
