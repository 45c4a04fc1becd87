"""Bad input, interrupted runs, determinism (the hardening issue): one clear line and exit 2
for every bad input, nothing lost or written twice when a run is interrupted."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from attrcert.errors import AttrcertError
from attrcert.loading import load_images

from .conftest import SAMPLES, run_main
from .processes import default_sigint, run_attrcert

MODEL = str(SAMPLES / "digits_softplus.pt2")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, str]:
    """A zoo of broken inputs, made once."""
    d = tmp_path_factory.mktemp("bad")
    files: dict[str, str] = {}
    good = torch.load(SAMPLES / "digits.pt", weights_only=True)[:2].clone()

    def save(name: str, obj) -> None:
        torch.save(obj, d / name)
        files[name] = str(d / name)

    (d / "empty.pt2").write_bytes(b"")
    files["empty.pt2"] = str(d / "empty.pt2")
    blob = (SAMPLES / "digits_softplus.pt2").read_bytes()
    (d / "truncated.pt2").write_bytes(blob[: len(blob) // 2])
    files["truncated.pt2"] = str(d / "truncated.pt2")
    (d / "random.pt2").write_bytes(os.urandom(4096))
    files["random.pt2"] = str(d / "random.pt2")
    save("good.pt", good)
    save("rank2.pt", good[0, 0])
    save("rank5.pt", good[None])
    save("three_channels.pt", good.repeat(1, 3, 1, 1))
    save("wrong_size.pt", torch.rand(2, 1, 20, 20))
    bad = good.clone()
    bad[0, 0, 0, 0] = float("nan")
    save("nan.pt", bad)
    inf = good.clone()
    inf[1, 0, 3, 3] = float("inf")
    save("inf.pt", inf)
    save("empty_batch.pt", good[:0])
    save("dict.pt", {"a": good})
    np.save(d / "objects.npy", np.array([{"a": 1}], dtype=object))
    files["objects.npy"] = str(d / "objects.npy")
    (d / "empty_dir").mkdir()
    files["empty_dir"] = str(d / "empty_dir")
    (d / "no_images").mkdir()
    (d / "no_images" / "notes.txt").write_text("hello")
    files["no_images"] = str(d / "no_images")
    (d / "corrupt").mkdir()
    (d / "corrupt" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    files["corrupt"] = str(d / "corrupt")
    (d / "imgs").mkdir()
    for i in range(2):
        Image.fromarray((good[i, 0].numpy() * 255).astype("uint8")).save(d / "imgs" / f"{i}.png")
    files["imgs"] = str(d / "imgs")
    (d / "labels_unknown.csv").write_text("name,label\n0.png,1\nzzz.png,2\n1.png,3\n")
    (d / "labels_range.csv").write_text("name,label\n0.png,1\n1.png,42\n")
    (d / "labels_text.csv").write_text("name,label\n0.png,one\n1.png,2\n")
    (d / "labels_cols.csv").write_text("file,class\n0.png,1\n1.png,2\n")
    for name in ("labels_unknown.csv", "labels_range.csv", "labels_text.csv", "labels_cols.csv"):
        files[name] = str(d / name)
    sd = d / "state_dict.pt"
    from safetensors.torch import load_file

    torch.save(load_file(str(SAMPLES / "digits_softplus.safetensors")), sd)
    files["state_dict.pt"] = str(sd)

    class Vector(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1).sum(1)

    exported = torch.export.export(Vector(), (good,),
                                   dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(exported, d / "vector_out.pt2")
    files["vector_out.pt2"] = str(d / "vector_out.pt2")
    files["dir"] = str(d)
    return files


BAD = [  # (argv with placeholders, a word the error line must contain)
    (["bound", "{dir}/missing.pt2", "{good.pt}"], "does not exist"),
    (["bound", "{empty.pt2}", "{good.pt}"], "empty"),
    (["bound", "{truncated.pt2}", "{good.pt}"], "model"),
    (["bound", "{random.pt2}", "{good.pt}"], "model"),
    (["bound", "{imgs}/0.png", "{good.pt}"], "image"),
    (["bound", "{state_dict.pt}", "{good.pt}"], "--arch"),
    (["bound", "{state_dict.pt}", "{good.pt}", "--arch", "nosuchmodule:f"], "nosuchmodule"),
    (["bound", "{vector_out.pt2}", "{good.pt}"], "(N, k)"),
    (["bound", MODEL, "{dir}/missing_images"], "does not exist"),
    (["bound", MODEL, "{empty_dir}"], "no PNG"),
    (["bound", MODEL, "{no_images}"], "no PNG"),
    (["bound", MODEL, "{corrupt}"], "a.png"),
    (["bound", MODEL, "{rank2.pt}"], "shape"),
    (["bound", MODEL, "{rank5.pt}"], "shape"),
    (["bound", MODEL, "{three_channels.pt}"], "model fails"),
    (["bound", MODEL, "{wrong_size.pt}"], "model fails"),
    (["bound", MODEL, "{nan.pt}"], "NaN"),
    (["bound", MODEL, "{inf.pt}"], "NaN or inf"),
    (["bound", MODEL, "{empty_batch.pt}"], "no images"),
    (["bound", MODEL, "{dict.pt}"], "tensor"),
    (["bound", MODEL, "{objects.npy}"], "objects.npy"),
    (["bound", MODEL, "{good.pt}", "--eps", "0"], "eps"),
    (["bound", MODEL, "{good.pt}", "--eps", "nan"], "eps"),
    (["bound", MODEL, "{good.pt}", "--eps", "-0.1"], "eps"),
    (["bound", MODEL, "{good.pt}", "--norm", "0.5"], "norm"),
    (["bound", MODEL, "{good.pt}", "--norm", "two"], "norm"),
    (["bound", MODEL, "{good.pt}", "--steps", "0"], "steps"),
    (["bound", MODEL, "{good.pt}", "--method", "lrp"], "method"),
    (["bound", MODEL, "{good.pt}", "--device", "tpu"], "device"),
    (["bound", MODEL, "{good.pt}", "--dtype", "float16"], "dtype"),
    (["bound", MODEL, "{good.pt}", "--chunk-size", "0"], "chunk-size"),
    (["bound", MODEL, "{good.pt}", "--batch-size", "-1"], "batch-size"),
    (["bound", MODEL, "{good.pt}", "--mean", "0.5"], "--std"),
    (["bound", MODEL, "{good.pt}", "--mean", "0.5", "--std", "0"], "std"),
    (["bound", MODEL, "{good.pt}", "--output", "{dir}/no/such/dir/out.json"], "does not exist"),
    (["bound", MODEL, "{good.pt}", "--output", "{dir}/out.txt"], ".jsonl"),
    (["bound", MODEL, "{good.pt}", "--output", "{dir}"], "folder"),
    (["bound", MODEL, "{good.pt}", "--save-attributions", "{dir}/a.npz"], "safetensors"),
    (["bound", MODEL, "{imgs}", "--labels", "{labels_unknown.csv}"], "zzz.png"),
    (["bound", MODEL, "{imgs}", "--labels", "{labels_range.csv}"], "42"),
    (["bound", MODEL, "{imgs}", "--labels", "{labels_text.csv}"], "integer"),
    (["bound", MODEL, "{imgs}", "--labels", "{labels_cols.csv}"], "name,label"),
    (["bound", MODEL, "{imgs}", "--labels", "{dir}/none.csv"], "none.csv"),
    (["bound", MODEL, "{good.pt}", "--baseline", "{dir}/none.pt"], "none.pt"),
    (["bound", MODEL, "{good.pt}", "--method", "saliency", "--baseline", "{good.pt}"],
     "baseline"),
    (["max-eps", MODEL, "{good.pt}"], "--omega"),
    (["max-eps", MODEL, "{good.pt}", "--omega", "0"], "omega"),
    (["max-eps", MODEL, "{good.pt}", "--omega", "1.5", "--metric", "cosine"], "cosine"),
    (["max-eps", MODEL, "{good.pt}", "--omega", "91", "--metric", "angle"], "angle"),
    (["max-eps", MODEL, "{good.pt}", "--omega", "0.1", "--metric", "kendall"], "metric"),
    (["max-eps", MODEL, "{good.pt}", "--omega", "0.1", "--norm", "inf", "--modified"], "l2"),
    (["bound", MODEL, "{good.pt}", "--require-verified"], "--verify"),
    (["bound"], "Missing argument"),
    (["frobnicate"], "No such command"),
]


@pytest.mark.parametrize(("argv", "word"), BAD, ids=[" ".join(a[:1] + a[3:] or a)[:60]
                                                      for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(argv, word, bad_files, capsys):
    args = []
    for a in argv:
        for key, value in bad_files.items():
            a = a.replace("{" + key + "}", value)
        args.append(a)
    code, out, err = run_main([*args, "--quiet"] if len(args) > 1 and args[0] != "frobnicate"
                              else args, capsys)
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert word.lower() in lines[0].lower(), lines[0]


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=5),
    dtype=st.sampled_from([np.float32, np.float64, np.uint8, np.int64, np.bool_]),
    special=st.sampled_from([None, np.nan, np.inf, -np.inf, 300.0, -1.0]),
)
def test_any_tensor_file_loads_or_fails_cleanly(tmp_path_factory, shape, dtype, special):
    """Every array either loads as (N, C, H, W) finite floats or raises AttrcertError."""
    arr = np.random.default_rng(0).random(shape)
    if special is not None and arr.size:
        arr.flat[0] = special
    with np.errstate(invalid="ignore", over="ignore"):
        arr = arr.astype(dtype)
    path = tmp_path_factory.mktemp("h") / "x.npy"
    np.save(path, arr)
    try:
        images = load_images(path)
    except AttrcertError:
        return
    t = images.tensor
    assert t.ndim == 4 and t.shape[0] >= 1 and t.is_floating_point()
    assert torch.isfinite(t).all()
    assert len(images.sources) == t.shape[0]


# --- interrupted runs --------------------------------------------------------------------

cli = functools.partial(run_attrcert, timeout=600)


def indices(path: Path) -> list[int]:
    return [json.loads(line)["index"] for line in path.read_text().splitlines()]


def test_resume_skips_finished_samples_and_never_writes_twice(tmp_path):
    out = tmp_path / "r.jsonl"
    args = ["bound", MODEL, str(SAMPLES / "digits.pt"), "--method", "saliency", "--quiet",
            "--output", str(out)]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert indices(out) == list(range(16))
    lines = out.read_text().splitlines()
    # a crash after 3 samples, with the 4th cut short mid-line
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])
    again = cli(*args, "--format", "json")
    assert again.returncode == 0, again.stderr
    assert "resuming: 3 of 16 samples" in again.stderr
    assert indices(out) == list(range(16))
    doc = json.loads(again.stdout)
    assert [s["index"] for s in doc["samples"]] == list(range(16))
    before = json.loads(lines[5])  # the same record but for its time (and so its seal)
    assert before == json.loads(out.read_text().splitlines()[5]) | {
        "seconds": before["seconds"], "record_sha256": before["record_sha256"]}
    # another configuration must not be mixed in
    other = cli(*args[:-2], "--eps", "0.2", "--output", str(out))
    assert other.returncode == 2 and "another configuration" in other.stderr


def _wait_for_lines(path: Path, proc: subprocess.Popen, n: int = 1) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.2)
    raise AssertionError("the run produced no record in time")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_resumes_without_loss(tmp_path, sig):
    out = tmp_path / "r.jsonl"
    args = [sys.executable, "-m", "attrcert", "bound", MODEL, str(SAMPLES / "digits.pt"),
            "--steps", "20", "--quiet", "--output", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    _wait_for_lines(out, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    saved = indices(out) if out.read_text().strip() else []
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert "run the same command again to resume" in stderr
        assert stdout == ""
        assert saved == list(range(len(saved))) and len(saved) >= 1
    else:
        assert proc.returncode == -signal.SIGKILL
    done = cli(*args[3:])
    assert done.returncode == 0, done.stderr
    assert indices(out) == list(range(16))


def test_a_run_started_with_ctrl_c_ignored_keeps_it_ignored(tmp_path):
    """``nohup`` or ``cmd &`` in a script starts a run with SIGINT ignored: it must not
    install a handler of its own, so a Ctrl-C meant for the shell does not stop it."""
    out = tmp_path / "r.jsonl"
    args = [sys.executable, "-m", "attrcert", "bound", MODEL, str(SAMPLES / "digits.pt"),
            "--steps", "20", "--quiet", "--output", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    _wait_for_lines(out, proc)
    for _ in range(2):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert indices(out) == list(range(16))


def test_same_command_twice_gives_identical_json(tmp_path):
    args = ["bound", MODEL, str(SAMPLES / "digits.pt"), "--steps", "4", "--format", "json",
            "--quiet", "--verify", "--attack-steps", "3"]
    a, b = (json.loads(cli(*args).stdout) for _ in range(2))

    def strip(doc):
        for s in doc["samples"]:
            s.pop("seconds")
        doc["summary"].pop("seconds")
        return doc

    assert strip(a) == strip(b)
