"""Hostile inputs other than model archives (issue 21, part 4), each built here, none
committed: Ctrl-C inside a long operator, resuming from a damaged or shared JSONL file,
outputs that are inputs, models that print, LAPACK on a zero Jacobian, markup and terminal
escapes in names, CSV formulas, and image and tensor files that claim what they are not.

Every case ends with one line on stderr and exit 2, or a correct result, within a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from attrcert.document import csv_value, jsonl_line
from attrcert.resume import RunLock, finished_records

from .conftest import SAMPLES, run_main
from .processes import default_sigint, run_attrcert

MODEL = str(SAMPLES / "digits_softplus.pt2")
FAST = ["--method", "saliency", "--quiet"]


#: A hang is a failure, not a stall: each test must finish within 120 s (conftest.py).
pytestmark = pytest.mark.usefixtures("hang_deadline")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """Three sample digits as a tensor file."""
    path = tmp_path_factory.mktemp("digits") / "three.pt"
    torch.save(torch.load(SAMPLES / "digits.pt", weights_only=True)[:3].clone(), path)
    return path


def one_line_error(code: int, out: str, err: str, *words: str) -> str:
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    return lines[0]


def write_arch(folder: Path, body: str, name: str = "arch.py") -> tuple[Path, Path]:
    """A ``--arch`` file holding ``body`` (which defines ``make()``) and the weights of
    the model it makes, saved as a state dict."""
    arch = folder / name
    arch.write_text("import os\nimport sys\nimport warnings\n\nimport torch\n\n"
                    + textwrap.dedent(body))
    namespace: dict = {"__name__": "hostile_arch"}
    exec(compile(arch.read_text(), str(arch), "exec"), namespace)  # our own file
    weights = folder / (arch.stem + ".weights.pt")
    torch.save(namespace["make"]().state_dict(), weights)
    return arch, weights


# --------------------------------------------------------------------------- 1. Ctrl-C

SPIN = """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

        @torch.jit.script
        def spin(x: torch.Tensor, n: int) -> torch.Tensor:
            a = torch.eye(32)
            for _ in range(n):  # one C++ loop: Python's signal handlers wait for it
                a = torch.tanh(a @ a)
            return x + 0.0 * a.sum()


    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.requires_grad and float(x.detach().reshape(-1)[0]) > 0.5:  # image 1 only
                open(os.environ["SPIN_MARK"], "a").close()
                x = spin(x, int(os.environ["SPIN_STEPS"]))
            return self.lin(torch.tanh(x.flatten(1)))


    def make():
        torch.manual_seed(0)
        return Net()
"""


def _spin_run(tmp_path: Path, steps: int) -> tuple[subprocess.Popen, Path, Path, list[str]]:
    arch, weights = write_arch(tmp_path, SPIN)
    images = tmp_path / "x.pt"
    x = torch.zeros(3, 1, 2, 2)
    x[1], x[2] = 1.0, 0.25
    torch.save(x, images)
    out, mark = tmp_path / "r.jsonl", tmp_path / "spinning"
    args = ["bound", str(weights), str(images), "--arch", f"{arch}:make", *FAST,
            "--output", str(out)]
    env = {**os.environ, "SPIN_MARK": str(mark), "SPIN_STEPS": str(steps)}
    proc = subprocess.Popen([sys.executable, "-m", "attrcert", *args], env=env, text=True,
                            preexec_fn=default_sigint,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not mark.exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    return proc, out, mark, args


def _sealed_indices(path: Path) -> list[int]:
    return [json.loads(line)["index"] for line in path.read_text().splitlines()]


def test_two_ctrl_c_abort_a_long_operator_at_once(tmp_path, monkeypatch, capfd):
    proc, out, _, args = _spin_run(tmp_path, steps=10**12)  # hours of C++ without a return
    monkeypatch.setenv("SPIN_MARK", str(tmp_path / "mark2"))
    code, stdout, err = run_main(args, capfd)  # a second run on the same file meanwhile
    one_line_error(code, stdout, err, str(out), "another attrcert run", f"process {proc.pid}")
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None, "the first Ctrl-C must let the sample finish"
    proc.send_signal(signal.SIGINT)
    start = time.time()
    stdout, stderr = proc.communicate(timeout=30)
    assert time.time() - start < 10
    assert proc.returncode == 130 and stdout == ""
    assert "stopping after the current sample (Ctrl-C again to abort now)" in stderr
    assert f"interrupted: 1 finished samples are in {out}" in stderr and "Traceback" not in stderr
    assert finished_records(out, json.loads(out.read_text())["config_hash"]).keys() == {0}


def test_one_ctrl_c_finishes_the_sample_in_a_long_operator(tmp_path):
    proc, out, mark, args = _spin_run(tmp_path, steps=5_000)
    proc.send_signal(signal.SIGINT)  # while the operator runs
    stdout, stderr = proc.communicate(timeout=100)
    assert proc.returncode == 130 and stdout == "", stderr
    assert "run the same command again to resume" in stderr
    assert _sealed_indices(out) == [0, 1]
    mark.unlink()
    done = run_attrcert(*args, timeout=100)
    assert done.returncode == 0, done.stderr
    assert "resuming: 2 of 3 samples" in done.stderr and _sealed_indices(out) == [0, 1, 2]


# --------------------------------------------------------------------------- 2. resume

def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


@pytest.fixture
def finished(tmp_path, digits, capfd) -> tuple[Path, list[str]]:
    """A finished run's JSONL file over the three digits, and its command line."""
    out = tmp_path / "r.jsonl"
    argv = ["bound", MODEL, str(digits), *FAST, "--output", str(out)]
    code, _, err = run_main(argv, capfd)
    assert code == 0, err
    return out, argv


def test_a_crash_while_repairing_keeps_every_record(finished, monkeypatch):
    """Dropping a cut last line rewrites the file beside it and renames it over: never in
    place (a crash then truncated the file to 0 bytes)."""
    out, _ = finished
    good = _lines(out)
    damaged = "".join(good[:2]) + good[2][:30]  # a cut last line to drop
    out.write_text(damaged)
    digest = json.loads(good[0])["config_hash"]

    def crash(*args):
        raise KeyboardInterrupt  # killed between writing the new file and renaming it

    monkeypatch.setattr("attrcert.writing.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        finished_records(out, digest)
    monkeypatch.undo()
    assert out.read_text() == damaged  # untouched, not truncated
    assert [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")] == []
    old = out.with_name("old.jsonl")
    os.link(out, old)  # the file as it was: an in-place rewrite would change it too
    assert sorted(finished_records(out, digest)) == [0, 1]
    assert out.read_text() == "".join(good[:2]) and old.read_text() == damaged


def test_a_second_run_on_the_same_file_is_refused(finished, capfd):
    out, argv = finished
    with RunLock(out):  # a run in progress (another process would hold it the same way)
        code, stdout, err = run_main(argv, capfd)
        one_line_error(code, stdout, err, str(out), "another attrcert run",
                       f"process {os.getpid()}")
    assert len(_lines(out)) == 3
    code, _, err = run_main(argv, capfd)  # the lock went with the run
    assert code == 0 and "resuming: 3 of 3" in err, err
    assert not out.with_name("r.jsonl.lock").exists()


@pytest.mark.parametrize("change,words", [
    ("model", ["another configuration"]),
    ("labels", ["another configuration"]),
    ("baseline", ["another configuration"]),
    ("image", ["image digit_01.png changed since it was certified"]),
])
def test_inputs_replaced_between_crash_and_resume_are_refused(change, words, tmp_path, capfd):
    import shutil

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("digit_00.png", "digit_01.png"):
        shutil.copy(SAMPLES / "digits" / name, folder / name)
    model, labels, baseline = tmp_path / "m.pt2", tmp_path / "l.csv", tmp_path / "b.pt"
    shutil.copy(MODEL, model)
    labels.write_text("name,label\ndigit_00.png,7\ndigit_01.png,6\n")
    torch.save(torch.zeros(1, 28, 28), baseline)
    out = tmp_path / "r.jsonl"
    argv = ["bound", model, folder, "--steps", "2", "--quiet", "--labels", labels,
            "--baseline", baseline, "--output", out]
    code, _, err = run_main(argv, capfd)
    assert code == 0, err
    out.write_text(_lines(out)[1])  # a crash that kept sample 1 only
    if change == "model":
        shutil.copy(SAMPLES / "digits_relu_maxpool.pt2", model)
    elif change == "labels":
        labels.write_text("name,label\ndigit_00.png,7\ndigit_01.png,5\n")
    elif change == "baseline":
        torch.save(torch.full((1, 28, 28), 0.5), baseline)
    else:
        shutil.copy(SAMPLES / "digits" / "digit_05.png", folder / "digit_01.png")
    before = out.read_bytes()
    code, stdout, err = run_main(argv, capfd)
    one_line_error(code, stdout, err, str(out), *words)
    assert out.read_bytes() == before


def test_a_moved_model_still_resumes(finished, tmp_path, capfd):
    import shutil

    out, argv = finished
    out.write_text(_lines(out)[0])
    moved = tmp_path / "elsewhere.pt2"
    shutil.copy(MODEL, moved)
    code, _, err = run_main([moved if a == MODEL else a for a in argv], capfd)
    assert code == 0 and "resuming: 1 of 3" in err, err


def _edited(lines: list[str], how: str) -> str:
    first = json.loads(lines[0])
    if how == "duplicate":
        return lines[0] + lines[0] + lines[1]
    if how == "edited":
        return json.dumps({**first, "T_e": 0.0}) + "\n" + lines[1]
    if how == "unsealed":
        first.pop("record_sha256")
        return json.dumps(first) + "\n"
    if how == "index_text":
        return jsonl_line({**first, "index": "abc"}) + "\n"
    if how == "index_bool":
        return jsonl_line({**first, "index": True}) + "\n"
    if how == "deep":
        return "[" * 100_000 + "]" * 100_000 + "\n"
    if how == "deep_last_cut":  # no attrcert line nests: not taken for a cut record
        return lines[0] + "[" * 100_000
    if how == "junk_with_newline":
        return lines[0] + "{not json\n"
    raise AssertionError(how)


@pytest.mark.parametrize("how,words", [
    ("duplicate", ["line 2 repeats sample 0"]),
    ("edited", ["line 1 was changed after attrcert wrote it"]),
    ("unsealed", ["line 1 was changed after attrcert wrote it"]),
    ("index_text", ["line 1 is not an attrcert record", '"abc"']),
    ("index_bool", ["line 1 is not an attrcert record"]),
    ("deep", ["line 1 is not an attrcert record", "nested too deep"]),
    ("deep_last_cut", ["line 2 is not an attrcert record", "nested too deep"]),
    ("junk_with_newline", ["line 2 is not JSON"]),
])
def test_damaged_records_are_refused_in_one_line(how, words, finished, capfd):
    out, argv = finished
    out.write_text(_edited(_lines(out), how))
    before = out.read_bytes()
    code, stdout, err = run_main(argv, capfd)
    one_line_error(code, stdout, err, str(out), *words)
    assert "RecursionError" not in err and out.read_bytes() == before


def test_merge_refuses_edited_and_repeated_shard_records(tmp_path, digits, capfd):
    shard = tmp_path / "s.jsonl"
    code, _, err = run_main(["bound", MODEL, digits, *FAST, "--shard", "0/1", "--output",
                             shard], capfd)
    assert code == 0, err
    good = _lines(shard)
    for text, words in ((json.dumps({**json.loads(good[0]), "T_e": 0.0}) + "\n" +
                         "".join(good[1:]), "was changed"),
                        ("".join(good) + good[2], "holds sample 2")):
        shard.write_text(text)
        code, out, err = run_main(["merge", tmp_path / "all.json", shard], capfd)
        one_line_error(code, out, err, words)


# --------------------------------------------------------------------------- 3. outputs

def _link(target: Path, name: Path, hard: bool) -> Path:
    if hard:
        os.link(target, name)
    else:
        name.symlink_to(target)
    return name


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("case", ["output_is_labels", "attributions_are_images",
                                  "attributions_are_weights", "output_is_model",
                                  "output_is_image_in_folder", "outputs_are_one_file"])
def test_outputs_that_are_inputs_are_refused(case, hard, tmp_path, digits, capfd):
    import shutil

    model, images = tmp_path / "m.pt2", tmp_path / "x.pt"
    shutil.copy(MODEL, model)
    shutil.copy(digits, images)
    labels = tmp_path / "l.csv"
    labels.write_text("name,label\n" + "".join(f"x.pt[{i}],{i}\n" for i in range(3)))
    argv = ["bound", model, images, *FAST]
    if case == "output_is_labels":
        victim = labels
        argv += ["--labels", labels, "--output", _link(labels, tmp_path / "o.csv", hard)]
    elif case == "attributions_are_images":
        victim = images
        argv += ["--save-attributions", _link(images, tmp_path / "a.safetensors", hard)]
    elif case == "output_is_model":
        victim = model
        argv += ["--output", _link(model, tmp_path / "o.json", hard)]
    elif case == "output_is_image_in_folder":
        victim = tmp_path / "imgs" / "digit_00.png"
        victim.parent.mkdir()
        shutil.copy(SAMPLES / "digits" / "digit_00.png", victim)
        argv[2] = victim.parent
        argv += ["--output", _link(victim, tmp_path / "o.csv", hard)]
    elif case == "outputs_are_one_file":
        victim = tmp_path / "o.jsonl"
        victim.write_text("")
        argv += ["--output", victim, "--save-attributions",
                 _link(victim, tmp_path / "a.safetensors", hard)]
    else:
        victim = tmp_path / "w.safetensors"
        shutil.copy(SAMPLES / "digits_softplus.safetensors", victim)
        argv = ["bound", victim, images, "--arch",
                f"{SAMPLES / 'digits_arch.py'}:softplus_cnn", *FAST, "--save-attributions",
                _link(victim, tmp_path / "a.safetensors", hard)]
    before = victim.read_bytes()
    code, out, err = run_main(argv, capfd)
    one_line_error(code, out, err, "same file", "give")
    assert victim.read_bytes() == before


def test_merge_into_a_shard_file_its_sidecar_or_its_input_is_refused(tmp_path, digits, capfd):
    labels = tmp_path / "labels.csv"
    labels.write_text("name,label\n" + "".join(f"three.pt[{i}],{i}\n" for i in range(3)))
    shard = tmp_path / "s.jsonl"
    code, _, err = run_main(["bound", MODEL, digits, *FAST, "--labels", labels, "--shard",
                             "0/1", "--output", shard], capfd)
    assert code == 0, err
    side = tmp_path / "s.config.json"
    alias = tmp_path / "alias.json"
    alias.symlink_to(side)
    for out in (side, alias, tmp_path / "s.jsonl", labels):
        before = out.read_bytes()
        code, stdout, err = run_main(["merge", out, shard], capfd)
        one_line_error(code, stdout, err, "same file")
        assert out.read_bytes() == before


def test_a_report_into_its_images_folder_cannot_overwrite_them(tmp_path, capfd):
    import shutil

    pytest.importorskip("matplotlib")
    folder = tmp_path / "imgs"
    folder.mkdir()
    victim = folder / "sample_000.png"  # the name of the report's first figure
    shutil.copy(SAMPLES / "digits" / "digit_00.png", victim)
    before = victim.read_bytes()
    code, out, err = run_main(["report", MODEL, folder, *FAST, "--out", folder], capfd)
    one_line_error(code, out, err, "--out's sample_000.png", "same file")
    assert victim.read_bytes() == before and not (folder / "report.html").exists()


# --------------------------------------------------------------------------- 4. stdout

PRINTING = """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

        @torch.jit.script
        def loud(x: torch.Tensor) -> torch.Tensor:
            print("torchscript print")
            return x


    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(784, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            print("python print")
            os.write(1, b"raw fd 1\\n")
            return self.lin(torch.tanh(loud(x).flatten(1)))


    def make():
        torch.manual_seed(0)
        return Net()
"""


def test_a_model_that_prints_leaves_stdout_to_the_json(tmp_path, digits, capfd):
    arch, weights = write_arch(tmp_path, PRINTING)
    done = run_attrcert("bound", str(weights), str(digits), "--arch", f"{arch}:make", *FAST,
                        "--format", "json", "--output", str(tmp_path / "r.jsonl"), timeout=100)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["samples"]) == 3  # nothing but the document
    code, out, err = run_main(["inspect", weights, "--arch", f"{arch}:make", "--size", "28",
                               "28", "--format", "json"], capfd)
    assert code == 0, err
    assert json.loads(out)["classes"] == 10
    for printed in ("python print", "raw fd 1", "torchscript print"):
        assert printed in done.stderr and printed not in done.stdout
        assert printed in err and printed not in out


CONVNET = """
    from captum.testing.helpers.basic_models import BasicModel_ConvNet


    def make():
        torch.manual_seed(int(os.environ.get("CONVNET_SEED", "16")))
        return BasicModel_ConvNet().eval()
"""


def test_captum_convnet_with_softmax_prints_no_lapack_error(tmp_path, capfd):
    """Captum's BasicModel_ConvNet ends in a softmax over logits that move together: its
    saliency is rounding noise, its Jacobian products are not one linear map, and
    scipy's PROPACK fed LAPACK NaN (``** On entry to DLASCL parameter number 4 had an
    illegal value`` on stdout, before the JSON) and returned xi_max = 0."""
    models = pytest.importorskip("captum.testing.helpers.basic_models")
    arch, weights = write_arch(tmp_path, CONVNET)
    torch.manual_seed(16)
    models.BasicModel_ConvNet()
    x = torch.rand(1, 1, 10, 10)  # the draw after the model's, as the repro had it
    torch.save(x, tmp_path / "x.pt")
    for spectral in ("iterative", "full"):
        code, out, err = run_main(["bound", weights, tmp_path / "x.pt", "--arch",
                                   f"{arch}:make", *FAST, "--spectral", spectral, "--format",
                                   "json"], capfd)
        assert code == 0, err
        assert "DLASCL" not in out + err
        record = json.loads(out)["samples"][0]
        assert record["xi_max"] is not None and record["xi_max"] >= 0


def test_lapack_never_sees_a_zero_or_nonfinite_jacobian(monkeypatch):
    from attrcert.errors import ModelOutputError
    from attrcert.spectral import spectrum_full

    calls = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda p: calls.append(p.shape) or eigh(p))
    jac = torch.zeros(3, 4, 4)
    jac[1] = torch.randn(4, 4)
    s = spectrum_full(jac)
    assert s.xi_max[0] == 0 and s.xi_max[2] == 0 and s.v_max[0, 0] == 1
    assert s.xi_max[1] == pytest.approx(float(torch.linalg.matrix_norm(jac[1].double(), 2)))
    assert calls == [(1, 4, 4)]  # only the nonzero sample reached LAPACK
    jac[2, 1, 1] = float("nan")
    with pytest.raises(ModelOutputError) as info:
        spectrum_full(jac)
    assert info.value.index == 2 and calls == [(1, 4, 4)]


def test_nonfinite_jacobian_products_are_one_line(tmp_path, capfd):
    """``|x|^1.5`` at 0: finite logits and gradient, an infinite second derivative."""
    body = """
        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lin = torch.nn.Linear(784, 10)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.lin(x.flatten(1).abs().pow(1.5) + x.flatten(1))


        def make():
            torch.manual_seed(0)
            return Net()
    """
    arch, weights = write_arch(tmp_path, body)
    x = tmp_path / "x.pt"
    torch.save(torch.zeros(1, 1, 28, 28), x)
    for spectral in ("iterative", "full"):
        code, out, err = run_main(["bound", weights, x, "--arch", f"{arch}:make",
                                   *FAST, "--spectral", spectral], capfd)
        assert err.startswith("warning: model is not twice differentiable (abs")
        one_line_error(code, out, err.split("\n", 1)[1], "attribution Jacobian entries",
                       "not finite", "x.pt[0]")


# --------------------------------------------------------------------------- 5. markup

@pytest.fixture(scope="module")
def named(tmp_path_factory) -> Path:
    """Class folders whose sources hold rich markup (``7[/]a.png``: folder ``7[``, file
    ``]a.png``) and terminal escapes (clear screen, window title, bell, carriage return)."""
    import shutil

    folder = tmp_path_factory.mktemp("named")
    for i, (cls, name) in enumerate((("7[", "]a.png"),
                                     ("x\x1b[2J", "\x1b]0;owned\x07b\rc.png"))):
        (folder / cls).mkdir()
        shutil.copy(SAMPLES / "digits" / f"digit_0{i}.png", folder / cls / name)
    return folder


def test_markup_and_escapes_in_names_print_as_text(named, tmp_path, capfd):
    import csv

    labels = tmp_path / "labels.csv"  # folder names that are no classes: labels given
    with labels.open("w", newline="") as fh:
        rows = csv.writer(fh)
        rows.writerow(["name", "label"])
        rows.writerows([["7[/]a.png", 7], ["x\x1b[2J/\x1b]0;owned\x07b\rc.png", 0]])
    code, out, err = run_main(["bound", MODEL, named, *FAST, "--fail-above-te", "0",
                               "--labels", labels], capfd)
    assert code == 1, err  # the gate fails, naming the samples: no traceback
    assert "Traceback" not in err and "MarkupError" not in err
    assert "7[/]a.png" in out and "7[/]a.png" in err
    assert "\x1b" not in out + err and "\r" not in out + err and "\x07" not in out + err
    escaped = "x\\x1b[2J/\\x1b]0;owned\\x07b\\x0dc.png"
    assert escaped in out and escaped in err


@pytest.mark.parametrize("argv,words", [
    (["bound", MODEL, "{one}", "--method", "[/x]"], ["[/x]"]),
    (["bound", MODEL, "{one}", "--norm", "[/]"], ["[/]"]),
    (["bound", "[/]missing\x1b[2J.pt2", "{one}"], ["[/]missing\\x1b[2J.pt2"]),
    (["bound", MODEL, "{one}", "--labels", "{labels}"], ["[/]bad.png"]),
])
def test_markup_in_option_values_and_messages_is_one_line(argv, words, digits, tmp_path,
                                                           capfd):
    labels = tmp_path / "l.csv"
    labels.write_text("name,label\n[/]bad.png,1\n")
    code, out, err = run_main([a.format(one=digits, labels=labels) for a in argv], capfd)
    line = one_line_error(code, out, err, *words)
    assert "\x1b" not in line


# --------------------------------------------------------------------------- 6. CSV

def test_csv_cells_that_would_be_formulas_are_neutralised(tmp_path, capfd):
    import csv
    import shutil

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate(("=cmd|' -C calc'!A0.png", "@SUM(A1).png", "plain.png")):
        shutil.copy(SAMPLES / "digits" / f"digit_0{i}.png", folder / name)
    out = tmp_path / "r.csv"
    code, _, err = run_main(["bound", MODEL, folder, *FAST, "--output", out], capfd)
    assert code == 0, err
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["source"] for r in rows] == ["'=cmd|' -C calc'!A0.png", "'@SUM(A1).png",
                                           "plain.png"]
    assert all(float(r["T_e"]) > 0 for r in rows)  # numbers stay numbers
    for text in ("=1+1", "+1", "-1+x", "@SUM(A1)", "\tx", "\rx"):
        assert csv_value(text) == "'" + text
    assert csv_value(-0.5) == "-0.5" and csv_value(-3) == "-3" and csv_value("a=b") == "a=b"
    assert csv_value(["=x", "y"]) == "'=x; y"


# --------------------------------------------------------------------------- 7. images

def _save(path: Path, tensor) -> Path:
    if path.suffix == ".npy":
        np.save(path, tensor)
    else:
        torch.save(tensor, path)
    return path


@pytest.mark.parametrize("name,make,words", [
    ("u32.pt", lambda: torch.zeros(1, 1, 28, 28, dtype=torch.uint32),
     ["uint32", "no pixel scale"]),
    ("u64.npy", lambda: np.zeros((1, 1, 28, 28), dtype=np.uint64), ["uint64", "no pixel scale"]),
    ("meta.pt", lambda: torch.zeros(1, 1, 28, 28, device="meta"), ["meta device"]),
    ("quantized.pt", lambda: torch.quantize_per_tensor(torch.rand(1, 1, 28, 28), 0.01, 0,
                                                       torch.quint8), ["quantized"]),
    ("expanded.pt", lambda: torch.zeros(1, 1, 1, 1).expand(3000, 3, 1000, 1000),
     ["expanded view", "GiB"]),
    ("bytes.pt", lambda: torch.rand(1, 1, 28, 28) * 255, ["outside [0, 1]", "--input-range 255"]),
    ("normalised.pt", lambda: torch.randn(1, 1, 28, 28), ["outside [0, 1]", "--mean/--std"]),
])
def test_tensor_files_that_claim_what_they_are_not(name, make, words, tmp_path, capfd):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated
        path = _save(tmp_path / name, make())
    assert path.stat().st_size < 100_000
    code, out, err = run_main(["bound", MODEL, path, *FAST], capfd)
    one_line_error(code, out, err, name, *words)


def test_uint16_and_the_input_range_option_scale_as_said(tmp_path, capfd):
    x = torch.load(SAMPLES / "digits.pt", weights_only=True)[:1]
    files = {"float": (_save(tmp_path / "f.pt", x), []),
             "uint16": (_save(tmp_path / "u16.npy", (x * 65535).round().numpy().astype(np.uint16)),
                        []),
             "255": (_save(tmp_path / "b.pt", x * 255), ["--input-range", "255"]),
             "any": (_save(tmp_path / "f2.pt", x), ["--input-range", "any"])}
    xi = {}
    for key, (path, extra) in files.items():
        code, out, err = run_main(["bound", MODEL, path, *FAST, "--format", "json", *extra],
                                  capfd)
        assert code == 0, err
        xi[key] = json.loads(out)["samples"][0]["xi_max"]
    assert xi["uint16"] == pytest.approx(xi["float"], rel=1e-3)
    assert xi["255"] == pytest.approx(xi["float"], rel=1e-5) and xi["any"] == xi["float"]


def _png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(path, format="PNG")
    return path


def test_class_folders_that_mean_one_label_or_no_number(tmp_path, capfd):
    from attrcert.loading import list_images

    for name in ("0", "00"):
        (tmp_path / "twice" / name).mkdir(parents=True)
        _png(tmp_path / "twice" / name / "a.png")
    code, out, err = run_main(["bound", MODEL, tmp_path / "twice", *FAST], capfd)
    one_line_error(code, out, err, "0/ and 00/ both mean label 0")
    for name in ("²", "3"):
        (tmp_path / "super" / name).mkdir(parents=True)
        _png(tmp_path / "super" / name / "a.png")
    listing = list_images(tmp_path / "super")  # not all ASCII integers: sorted order
    assert listing.classes == ["3", "²"] and listing.labels == [0, 1]
    code, out, err = run_main(["bound", MODEL, tmp_path / "super", *FAST], capfd)
    one_line_error(code, out, err, "3/, ²/")  # names, not the model's 10 classes: refused


def test_labels_must_be_ascii_integers(digits, tmp_path, capfd):
    labels = tmp_path / "l.csv"
    labels.write_text("name,label\nthree.pt[0],1_0\nthree.pt[1],٣\nthree.pt[2],1\n")
    code, out, err = run_main(["bound", MODEL, digits, *FAST, "--labels", labels], capfd)
    one_line_error(code, out, err, "three.pt[0]", "not an integer")


def test_only_png_and_jpeg_decoders_by_content(tmp_path, capfd, monkeypatch):
    from PIL import EpsImagePlugin, Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    _png(folder / "a.png")
    Image.fromarray(np.full((28, 28), 300.0, dtype=np.float32)).save(folder / "b.png",
                                                                      format="TIFF")
    code, out, err = run_main(["bound", MODEL, folder, *FAST], capfd)
    one_line_error(code, out, err, "b.png", "not a PNG or JPEG")
    (folder / "b.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n"
                                   b"showpage\n%%EOF\n")
    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a))
    code, out, err = run_main(["bound", MODEL, folder, *FAST], capfd)
    one_line_error(code, out, err, "b.png", "not a PNG or JPEG")
    assert ran == []
