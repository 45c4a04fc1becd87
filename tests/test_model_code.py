"""No model file touches the disk, prints, loops forever or claims huge memory (issue 21).

A corpus built by the tests (tests/hostile_code.py): TorchScript code that writes a file
(in ``forward`` and in ``__setstate__``), prints, loops without bound or keeps state;
``.pt2`` programs that print, loop or draw random numbers; zip indexes that lie. Each ends
with one line and exit 2 for ``bound`` and ``inspect``, and the file-writing models' target
files are left untouched; ``--trust-code`` is the only way past (and then the code runs,
which shows the tests would see it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attrcert.errors import InputError, LoadError
from attrcert.loading import load_model
from attrcert.loading.export_program import node_refusal, target_is_safe
from attrcert.loading.model_checks import check_logits
from attrcert.loading.operators import ATEN, PRIMS, SAMPLING, TORCHSCRIPT_ATEN, TORCHSCRIPT_PRIM
from attrcert.loading.zipcheck import zip_problem

from . import hostile_code as hc
from .conftest import SAMPLES, run_main

#: A hang is a failure, not a stall: each test must finish within 120 s (conftest.py).
pytestmark = pytest.mark.usefixtures("hang_deadline")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "two.pt"
    torch.save(torch.rand(2, 1, 8, 8), path)
    return str(path)


def one_line_error(code: int, out: str, err: str, *words: str) -> str:
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    return lines[0]


def argv(command: str, model: Path, images: str) -> list[str]:
    return ([command, str(model), images, "--steps", "2", "--quiet", "--format", "json"]
            if command == "bound" else [command, str(model), "--size", "8", "8"])


# --------------------------------------------------------------------------- TorchScript


@pytest.mark.parametrize("name", sorted(hc.TORCHSCRIPT))
@pytest.mark.parametrize("command", ["bound", "inspect"])
def test_torchscript_code_is_checked_before_loading(name, command, tmp_path, images, capfd):
    target = tmp_path / "target"
    target.write_bytes(hc.ORIGINAL)
    build, words = hc.TORCHSCRIPT[name]
    model = build(target, tmp_path / "m.pt")
    target.write_bytes(hc.ORIGINAL)  # scripting wrote nothing, but be sure
    line = one_line_error(*run_main(argv(command, model, images), capfd), *words)
    assert "--trust-code" in line and "--trust-pickle" in line and "m.pt" in line
    assert target.read_bytes() == hc.ORIGINAL, "the model wrote into the target file"


@pytest.mark.parametrize("name", ["from_file_forward", "from_file_setstate"])
def test_trust_code_runs_the_writer(name, tmp_path, images, capfd):
    """The only way past: the code then runs (so the test above would see a write)."""
    target = tmp_path / "target"
    target.write_bytes(hc.ORIGINAL)
    model = hc.TORCHSCRIPT[name][0](target, tmp_path / "m.pt")
    target.write_bytes(hc.ORIGINAL)
    code, _, err = run_main(["inspect", str(model), "--size", "8", "8", "--trust-code"],
                            capfd)
    assert code == 0, err
    assert err.count("warning:") == 1 and "runs code" in err
    assert target.read_bytes() != hc.ORIGINAL


def test_ordinary_scripted_code_loads_and_computes_the_same(tmp_path):
    """Loops over lists (one as TorchScript's ``while`` form), constant loops, helper
    methods and scripted ``torch.nn.functional`` pass; the logits are the module's."""
    torch.manual_seed(0)
    net = hc.ListLoops().eval()
    model = load_model(hc.scripted(net, tmp_path / "ok.pt"))
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(model(x), net(x))
    code = "".join(model.code)
    assert "while" in code and "for" in code  # both loop forms were there to check


def test_shipped_torchscript_sample_inspects_without_images(capfd):
    code, out, err = run_main(["inspect", str(SAMPLES / "digits_softplus.pt"), "--format",
                               "json"], capfd)
    assert code == 0, err
    info = json.loads(out)
    assert info["input_shape"] == [1, 28, 28] and info["classes"] == 10


def test_scripted_model_without_a_shape_is_one_line(tmp_path, capfd):
    model = hc.scripted(hc.ListLoops(), tmp_path / "s.pt")
    one_line_error(*run_main(["inspect", str(model)], capfd), "input shape", "--size")
    code, _, err = run_main(["inspect", str(model), "--size", "8", "8"], capfd)
    assert code == 0, err


# --------------------------------------------------------------------------- .pt2


@pytest.mark.parametrize("name", sorted(hc.EXPORT))
@pytest.mark.parametrize("command", ["bound", "inspect"])
def test_export_graph_outside_the_allowlist_is_refused(name, command, tmp_path, images, capfd):
    build, words = hc.EXPORT[name]
    model = hc.exported(build(), tmp_path / "m.pt2")
    line = one_line_error(*run_main(argv(command, model, images), capfd), *words)
    assert "models/model.json" in line and "--trust-pickle" in line


@pytest.mark.parametrize("target", [
    "torch.ops.aten.from_file.default", "torch.ops.aten._print.default",
    "torch.ops.aten.manual_seed.default", "torch.ops.aten.set_.source_Storage",
    "torch.ops.aten.rand.default", "torch.ops.aten.bernoulli_.float",
    "torch.ops.higher_order.while_loop", "torch.ops.higher_order.map_impl",
    "torch.ops.higher_order.scan", "torch.ops.higher_order.with_effects",
    "torch.ops.higher_order.auto_functionalized", "torch.ops._c10d_functional.all_reduce.default",
    "torch.ops.c10d.allreduce_.default", "torch.ops.mylib.evil.default",
    "torch.ops.quantized.linear.default", "torch.ops.profiler._record_function_enter.default",
    "torch.ops.prims.inductor_random.default", "_operator.pow", "math.factorial"])
def test_impure_targets_are_refused(target):
    assert not target_is_safe(target)
    assert node_refusal({"target": target, "inputs": []}) is not None


@pytest.mark.parametrize("target", [
    "torch.ops.aten.conv2d.default", "torch.ops.aten.silu_.default",
    "torch.ops.aten.relu_.default",
    "torch.ops.aten.add_.Tensor", "torch.ops.aten._native_batch_norm_legit_no_training.default",
    "torch.ops.aten.scaled_dot_product_attention.default",
    "torch.ops.prims.convert_element_type.default",
    "torch.ops.higher_order.cond", "torch.ops.aten.sym_size.int", "_operator.getitem"])
def test_pure_targets_are_accepted(target):
    assert target_is_safe(target)
    assert node_refusal({"target": target, "inputs": []}) is None


def test_sampling_operators_only_when_they_cannot_draw():
    def node(target, **args):
        return {"target": target, "inputs": [{"name": k, "arg": v} for k, v in args.items()]}
    drop = "torch.ops.aten.dropout.default"
    assert node_refusal(node(drop, p={"as_float": 0.1}, train={"as_bool": False})) is None
    assert node_refusal(node(drop, p={"as_float": 0.1}, train={"as_bool": True})) is not None
    assert node_refusal(node(drop, p={"as_float": 0.1})) is not None
    sdpa = "torch.ops.aten.scaled_dot_product_attention.default"
    assert node_refusal(node(sdpa)) is None
    assert node_refusal(node(sdpa, dropout_p={"as_float": 0.0})) is None
    assert node_refusal(node(sdpa, dropout_p={"as_float": 0.2})) is not None


def test_allowlist_names_real_operators():
    """Every listed name is an operator of this torch (no typo lets a name through)."""
    import torch._prims

    def schemas(name):
        return torch._C._jit_get_schemas_for_operator(name)
    assert [n for n in ATEN | set(SAMPLING) | TORCHSCRIPT_ATEN if not schemas(f"aten::{n}")] == []
    assert [n for n in TORCHSCRIPT_PRIM if not schemas(f"prim::{n}")] == []
    assert [n for n in PRIMS if not hasattr(torch.ops.prims, n)] == []
    assert not {"from_file", "_print", "manual_seed", "warn", "set_"} & ATEN


# --------------------------------------------------------------------------- zip indexes


@pytest.mark.parametrize("build,words", [
    (hc.one_entry_many_names, ("overlap",)),
    (hc.duplicate_names, ("twice",)),
    (lambda: hc.declared_size(4_000_000_000), ("4000000000", "zip bomb")),
])
def test_lying_zip_index_is_refused_before_decompressing(build, words, tmp_path, images, capfd):
    model = tmp_path / "m.pt"
    model.write_bytes(build())
    assert zip_problem(model) is not None
    one_line_error(*run_main(["bound", str(model), images, "--arch", "x.py:f", "--quiet"],
                             capfd), "refused", *words)


def test_real_archives_pass_the_zip_checks():
    for name in ("digits_softplus.pt", "digits_softplus.pt2", "digits.pt",
                 "digits_relu_maxpool.pt2", "digits_tanh_mlp.pt2"):
        assert zip_problem(SAMPLES / name) is None, name


# --------------------------------------------------------------------------- what a model returns


class Returns(torch.nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.lin = torch.nn.Linear(64, 4)

    def forward(self, x):
        y = self.lin(x.flatten(1))
        return {"int64": lambda: (y * 100).long(), "rows": lambda: y[:1],
                "sum": lambda: y.sum(0, keepdim=True)}[self.kind]()


@pytest.mark.parametrize("kind,words", [("int64", ("int64 logits",)),
                                        ("rows", ("1 row of logits for 2 images",)),
                                        ("sum", ("1 row of logits for 2 images",))])
def test_model_outputs_are_one_clear_line(kind, words, tmp_path, images, capfd):
    model = tmp_path / "m.pt"
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(Returns(kind).eval(), torch.rand(2, 1, 8, 8)), str(model))
    one_line_error(*run_main(argv("bound", model, images), capfd), str(model), *words)


class Unsteady(torch.nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.lin = torch.nn.Linear(64, 4)
        self.norm = torch.nn.BatchNorm1d(4)

    def forward(self, x):
        y = self.lin(x.flatten(1))
        return y + torch.rand_like(y) if self.kind == "random" else self.norm(y)


@pytest.mark.parametrize("kind", ["random", "batch_norm_training"])
def test_model_that_is_not_a_fixed_function_is_refused(kind, tmp_path, images, capfd):
    """Sampling operators pass TorchScript's checker (scripted drop_path keeps them in
    training branches), but a model that draws, or mixes a batch's images, is refused when
    its logits for one image change: with --trust-code too."""
    model = tmp_path / "m.pt"
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(Unsteady(kind).train(), torch.rand(2, 1, 8, 8),
                                       check_trace=False), str(model))
    for extra in ([], ["--trust-code"]):
        one_line_error(*run_main(argv("bound", model, images) + extra, capfd),
                       "other logits for the same image")


def test_check_logits_names_the_row_and_the_problem():
    ok = torch.zeros(2, 3)
    assert check_logits(ok, 2, "m", ["a", "b"]) is ok
    bad = torch.zeros(2, 3)
    bad[1, 0] = float("nan")
    with pytest.raises(InputError, match="for b:"):
        check_logits(bad, 2, "m", ["a", "b"])
    for out, match in [((ok,), "tuple"), (torch.zeros(2, 3, 1), "shape"),
                       (torch.zeros(2, 0), "no classes"), (torch.zeros(2, 3, device="meta"),
                                                           "meta"),
                       (torch.zeros(2, 3, dtype=torch.complex64), "complex64")]:
        with pytest.raises(InputError, match=match):
            check_logits(out, 2, "m", ["a", "b"])


def test_meta_and_quantized_weights_are_one_line(tmp_path, images, capfd):
    arch = tmp_path / "arch.py"
    arch.write_text("from torch import nn\n\ndef mlp():\n"
                    "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4))\n")
    state = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4)).state_dict()
    for name, convert, words in [
            ("meta", lambda t: t.to("meta"), ("meta tensors", "1.weight")),
            ("quant", lambda t: torch.quantize_per_tensor(t, 0.1, 0, torch.qint8),
             ("quantized tensors", "dequantize"))]:
        path = tmp_path / f"{name}.pt"
        torch.save({k: convert(v) for k, v in state.items()}, path)
        one_line_error(*run_main(["bound", str(path), images, "--arch", f"{arch}:mlp",
                                  "--quiet"], capfd), *words)
    module = torch.jit.script(hc.ListLoops().to("meta"))
    torch.jit.save(module, str(tmp_path / "meta_ts.pt"))
    one_line_error(*run_main(["inspect", str(tmp_path / "meta_ts.pt"), "--size", "8", "8"],
                             capfd), "meta tensors", "lin.weight")


@pytest.mark.parametrize("device,words", [("mps", ("mps", "not available")),
                                          ("meta", ("meta", "without values")),
                                          ("cuda:7", ("cuda:7",)), ("xla", ("xla",))])
def test_devices_this_machine_lacks_are_one_line(device, words, images, capfd):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    code, out, err = run_main(["bound", str(SAMPLES / "digits_softplus.pt2"), images,
                               "--device", device, "--quiet"], capfd)
    one_line_error(code, out, err, device, *words)


def test_load_errors_are_load_errors(tmp_path):
    model = hc.scripted(hc.Printer(), tmp_path / "p.pt")
    with pytest.raises(LoadError, match="print"):
        load_model(model)


# --------------------------------------------------------------------------- torchrun, no peer


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("rank", ["0", "1"])
def test_torchrun_environment_without_a_peer_fails_fast(rank, images, tmp_path):
    """``WORLD_SIZE``/``RANK`` left in the environment (torch would wait 7 days): every rank
    says in one line what to do, within seconds of the rendezvous timeout."""
    import os
    import time

    from .processes import run_attrcert

    env = {**os.environ, "WORLD_SIZE": "2", "RANK": rank, "LOCAL_RANK": rank,
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "ATTRCERT_RENDEZVOUS_TIMEOUT": "2"}
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    start = time.monotonic()
    done = run_attrcert("bound", str(SAMPLES / "digits_softplus.pt2"), images, "--quiet",
                        timeout=100, env=env)
    assert time.monotonic() - start < 90  # python's start-up (slow on a shared machine) + 2 s
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "start attrcert with torchrun" in lines[0] and "unset WORLD_SIZE and RANK" in lines[0]


def test_rendezvous_timeout_is_checked(monkeypatch):
    from attrcert.distributed.torchrun import RENDEZVOUS_TIMEOUT, rendezvous_timeout
    from attrcert.errors import OptionError

    monkeypatch.delenv("ATTRCERT_RENDEZVOUS_TIMEOUT", raising=False)
    assert rendezvous_timeout() == RENDEZVOUS_TIMEOUT
    monkeypatch.setenv("ATTRCERT_RENDEZVOUS_TIMEOUT", "2.5")
    assert rendezvous_timeout().total_seconds() == 2.5
    for bad in ("x", "0", "-1", "nan", "1e9"):
        monkeypatch.setenv("ATTRCERT_RENDEZVOUS_TIMEOUT", bad)
        with pytest.raises(OptionError, match="ATTRCERT_RENDEZVOUS_TIMEOUT"):
            rendezvous_timeout()
