"""Conformance: the hand-written architectures (zoo/handwritten.py), through the CLI, as
users run it.

Every zoo model, as ``.pt2`` (torch.export, dynamic batch) and as TorchScript (traced), goes
through ``attrcert bound`` (l2, saliency, with an attack: ``--verify``); the ``.pt2`` run
takes the matrix-free path and the TorchScript run forms the full Jacobian, so the two
``xi_max`` must agree (same weights, same float64 arithmetic up to rounding). Each model
also runs one more command, in one of the formats (a fixed rotation over l-inf bounds with
integrated gradients, ``max-eps``, ``attack`` and ``inspect``). The CLI runs are started
together (a few at a time) by one session fixture, since each pays the start-up of a Python
process with torch; the tests then check their results.
"""

from __future__ import annotations

import json
import math
import subprocess
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from attrcert import NonSmoothModelWarning, certify, find_nonsmooth
from attrcert.attributions import NotDifferentiableError, get_method
from attrcert.loading import load_model
from attrcert.spectral import JacobianProducts
from zoo import SHAPE, ViT, export_pt2, export_torchscript, mobilenet, seeded
from zoo import TINY as ZOO
from zoo import inputs as zoo_inputs

from .processes import run_attrcert

EPS = 1e-3


def inputs(n: int) -> torch.Tensor:
    """``n`` seeded random images of the tiny zoo's shape."""
    return zoo_inputs(n, SHAPE[-1])

#: README ("When a bound is violated"): on the smooth sample CNN an attack exceeded T'_e by
#: at most 0.01% at eps = 0.01; here eps is ten times smaller and the runs are in float64.
ATTACK_TOLERANCE = 1e-4
#: The extra command of each model and the format it runs in.
EXTRA = {
    "vit": ("linf", "ts"), "swin": ("attack", "pt2"), "mixer": ("max-eps", "ts"),
    "convnext": ("inspect", "pt2"), "efficientnet": ("max-eps", "pt2"),
    "mobilenet": ("inspect", "ts"), "resnet_softplus": ("linf", "pt2"),
    "resnet_relu": ("attack", "ts"), "maxpool": ("inspect", "ts"),
}
NAMES = [entry.name for entry in ZOO]
ENTRIES = {entry.name: entry for entry in ZOO}
FORMATS = ("pt2", "ts")
COMMON = ["--dtype", "float64", "--quiet", "--format", "json"]


def _model_commands(name: str, paths: dict[str, Path]) -> dict[tuple[str, ...], list[str]]:
    """The CLI runs of one zoo model: ``bound`` in both formats, and its extra command."""
    image = str(paths["x1"])
    runs: dict[tuple[str, ...], list[str]] = {}
    for fmt in FORMATS:
        spectral = "iterative" if fmt == "pt2" else "full"
        runs[("bound", name, fmt)] = [
            "bound", str(paths[f"{name}.{fmt}"]), image, "--eps", str(EPS), "--norm", "2",
            "--method", "saliency", "--spectral", spectral, "--verify", "--attack-steps", "10",
            *COMMON]
    command, fmt = EXTRA[name]
    model = str(paths[f"{name}.{fmt}"])
    ig = ["--method", "integrated_gradients", "--steps", "4"]
    runs[(command, name, fmt)] = {
        "linf": ["bound", model, image, "--eps", str(EPS), "--norm", "inf", *ig, *COMMON],
        "max-eps": ["max-eps", model, image, "--omega", "0.05", "--metric", "cosine", *ig,
                    *COMMON],
        "attack": ["attack", model, image, "--eps", str(EPS), "--norm", "inf",
                   "--method", "saliency", "--attack-steps", "10", *COMMON],
        "inspect": ["inspect", model, image, "--format", "json"],
    }[command]
    return runs


class Runs:
    """``runs[key]``: the finished CLI run ``key`` (waits for it)."""

    def __init__(self, futures: dict[tuple[str, ...], Future]) -> None:
        self.futures = futures

    def __getitem__(self, key: tuple[str, ...]) -> subprocess.CompletedProcess:
        return self.futures[key].result()


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Iterator[tuple[dict[str, Path], Runs]]:
    """Every zoo model in both formats (``NAME.pt2``, ``NAME.pt``), the archives of the
    error tests, images (``x.pt``: two, ``x1.pt``: the first), and every CLI run of this
    file: a model's runs start (three at a time) as soon as it is exported."""
    folder = tmp_path_factory.mktemp("zoo")
    x = inputs(2)
    paths = {"x": folder / "x.pt", "x1": folder / "x1.pt"}
    torch.save(x, paths["x"])
    torch.save(x[:1].clone(), paths["x1"])
    futures: dict[tuple[str, ...], Future] = {}
    with ThreadPoolExecutor(max_workers=3) as pool:
        def submit(commands: dict[tuple[str, ...], list[str]]) -> None:
            futures.update({key: pool.submit(run_attrcert, *args)
                            for key, args in commands.items()})

        paths["vit_fastpath.ts"] = export_torchscript(seeded(ViT), x, folder / "vit_fast.pt",
                                                      fastpath=True)
        hard = seeded(lambda: mobilenet(gate=torch.nn.Hardsigmoid))
        paths["mobilenet_v3.ts"] = export_torchscript(hard, x, folder / "mobilenet_v3.pt")
        submit({("error", "vit_fastpath"): ["bound", str(paths["vit_fastpath.ts"]),
                                            str(paths["x1"]), "--method", "saliency",
                                            "--quiet"]})
        submit({("hard", "mobilenet_v3"): ["bound", str(paths["mobilenet_v3.ts"]),
                                           str(paths["x1"]), "--method", "saliency",
                                           "--quiet", "--format", "json"]})
        for entry in ZOO:
            model = seeded(entry.build)
            paths[f"{entry.name}.pt2"] = export_pt2(model, x, folder / f"{entry.name}.pt2")
            paths[f"{entry.name}.ts"] = export_torchscript(model, x, folder / f"{entry.name}.pt")
            submit(_model_commands(entry.name, paths))
        yield paths, Runs(futures)


@pytest.fixture(scope="session")
def archives(zoo) -> dict[str, Path]:
    return zoo[0]


@pytest.fixture(scope="session")
def runs(zoo) -> Runs:
    return zoo[1]


def _document(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check_smoothness(config_or_info: dict, name: str) -> None:
    entry = ENTRIES[name]
    found = {op.split(" (")[0] for op in config_or_info["nonsmooth_ops"]}
    assert found == set(entry.nonsmooth), config_or_info["nonsmooth_ops"]
    assert config_or_info["smooth"] is entry.smooth
    for op in config_or_info["nonsmooth_ops"]:
        assert "(aten." in op  # the message names the op


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", NAMES)
def test_bound_l2_saliency_with_attack(runs, name, fmt):
    doc = _document(runs[("bound", name, fmt)])
    _check_smoothness(doc["config"], name)
    assert len(doc["samples"]) == 1
    for rec in doc["samples"]:
        for key in ("xi_max", "T_e", "T_e_prime", "c", "T_c", "T_c_deg", "attr_norm", "T_e_hat"):
            assert _finite(rec[key]), (key, rec[key])
        assert rec["T_e"] == pytest.approx(rec["xi_max"] * EPS, rel=1e-9)
        assert rec["T_e_prime"] >= rec["T_e"] and not rec["vacuous"]
        assert rec["spectral"] == ("iterative" if fmt == "pt2" else "full")
        assert rec["attack_checked"] is True
        if ENTRIES[name].smooth:  # T'_e is a tight estimate at small eps on smooth models
            assert rec["T_e_hat"] <= rec["T_e_prime"] * (1 + ATTACK_TOLERANCE), rec
            assert rec["warnings"] == []
        else:
            assert "estimates, not certificates" in rec["warnings"][0]


@pytest.mark.parametrize("name", NAMES)
def test_matrix_free_xi_max_equals_the_full_jacobians(runs, name):
    iterative = _document(runs[("bound", name, "pt2")])["samples"]
    full = _document(runs[("bound", name, "ts")])["samples"]
    for a, b in zip(iterative, full, strict=True):
        assert a["xi_max"] == pytest.approx(b["xi_max"], rel=1e-4, abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_one_more_command_per_model(runs, name):
    command, fmt = EXTRA[name]
    doc = _document(runs[(command, name, fmt)])
    if command == "inspect":
        _check_smoothness(doc, name)
        assert doc["input_shape"] == [3, 8, 8] and doc["classes"] == 5
        assert doc["format"] == ("export" if fmt == "pt2" else "torchscript")
        return
    _check_smoothness(doc["config"], name)
    d = 3 * 8 * 8
    for rec in doc["samples"]:
        assert _finite(rec["xi_max"])
        if command == "linf":  # Theorem 2 from the full Jacobian (auto, d <= 4096)
            assert rec["T_e_method"] == "theorem2" and _finite(rec["T_e"])
            assert rec["T_e_min"] == pytest.approx(
                min(rec["T_e"], math.sqrt(d) * rec["xi_max"] * EPS), rel=1e-9)
        elif command == "max-eps":  # docs/math.md §3: eps_max = ||g|| sqrt(w (2 - w)) / xi_max
            omega = 0.05
            assert rec["eps_max"] == pytest.approx(
                rec["attr_norm"] * math.sqrt(omega * (2 - omega)) / rec["xi_max"], rel=1e-9)
        else:  # attack, l-inf ball: against Theorem 2's T_e
            assert _finite(rec["T_e_hat"]) and _finite(rec["T_e"])
            if ENTRIES[name].smooth:
                assert rec["T_e_hat"] <= rec["T_e"] and rec["verified"] is True


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The one error line (after any warning lines) of a run that exited 2."""
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if not line.startswith(("warning: ", "note: "))]
    assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
    return errors[0]


def test_a_traced_fast_path_is_one_line_naming_the_op_and_the_remedy(runs):
    line = _one_line_error(runs[("error", "vit_fastpath")])
    assert "aten._transformer_encoder_layer_fwd" in line and "torch.export" in line
    assert "set_fastpath_enabled(False)" in line


def test_hardsigmoid_is_rewritten_for_autograd_and_still_flagged(runs):
    # aten.hardsigmoid_backward has no derivative: the CLI rewrites Hardsigmoid (same
    # values and slopes) instead of exiting 2, and still reports it as not smooth
    proc = runs[("hard", "mobilenet_v3")]
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)["samples"][0]
    assert rec["smooth"] is False and _finite(rec["T_e"])
    assert any(op.startswith("Hardsigmoid") for op in rec["nonsmooth_ops"])


# --- the API, in this process --------------------------------------------------------------

def test_api_certifies_the_vit_under_integrated_gradients(archives):
    model = load_model(archives["vit.pt2"])
    x = torch.load(archives["x"], weights_only=True)
    kwargs = {"eps": EPS, "method": "integrated_gradients", "steps": 4, "dtype": "float64"}
    iterative = certify(model, x, spectral="iterative", verify=True, attack_steps=10, **kwargs)
    full = certify(model, x, spectral="full", **kwargs)
    for a, b in zip(iterative, full, strict=True):
        assert a["smooth"] is True and _finite(a["T_e_prime"]) and _finite(a["completeness_gap"])
        # the Krylov value bounds the top singular value from above, within tol = 1e-4
        assert b["xi_max"] * (1 - 1e-9) <= a["xi_max"] <= b["xi_max"] * (1 + 1e-4)
        assert a["T_e_hat"] <= a["T_e_prime"] * (1 + ATTACK_TOLERANCE)


@pytest.mark.parametrize("fmt", FORMATS)
def test_smoothness_of_every_archive(archives, fmt):
    x = torch.load(archives["x"], weights_only=True)
    for entry in ZOO:
        found = find_nonsmooth(load_model(archives[f"{entry.name}.{fmt}"]), x)
        assert {op.split(" (")[0] for op in found} == set(entry.nonsmooth), (entry.name, found)


def test_traced_fast_path_is_reported_and_refused(archives):
    model = load_model(archives["vit_fastpath.ts"])
    x = torch.load(archives["x"], weights_only=True)
    assert find_nonsmooth(model, x) == [
        "nn.TransformerEncoderLayer fast path, no derivative "
        "(aten._transformer_encoder_layer_fwd)"]
    with (pytest.raises(NotDifferentiableError, match="_transformer_encoder_layer_fwd"),
          pytest.warns(NonSmoothModelWarning, match="fast path, no derivative")):
        certify(model, x[:1], eps=EPS, method="saliency")


def test_attention_jacobian_products_match_finite_differences():
    """``J v`` through softmax attention (math kernel, double backward) against central
    differences of ``g``, in float64, on a ViT and on the windowed attention."""
    for build in (ViT, ENTRIES["swin"].build):
        model = seeded(build).double()
        x = inputs(1).double()
        target = model(x).argmax(1)
        saliency = get_method("saliency")
        v = torch.randn(1, x[0].numel(), dtype=torch.float64,
                        generator=torch.Generator().manual_seed(3))
        jv = JacobianProducts(saliency, model, x, target).matvec(v)
        h = 1e-5
        step = h * v.view_as(x)
        fd = (saliency(model, x + step, target) - saliency(model, x - step, target)) / (2 * h)
        torch.testing.assert_close(jv, fd.reshape(1, -1), rtol=1e-6, atol=1e-9)


def test_math_attention_gives_the_default_kernels_gradient():
    """The kernel switch changes no value: the first-order saliency of the eager ViT equals
    autograd's gradient with torch's default (fused) attention kernel."""
    model = seeded(ViT)
    x = inputs(2)
    target = model(x).argmax(1)
    leaf = x.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(model(leaf).gather(1, target.view(-1, 1)).sum(), leaf)
    ours = get_method("saliency")(model, x, target)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)


def test_a_scripted_vit_needs_no_remedy():
    """``torch.jit.script`` keeps the fast path's conditions, which fail when the input
    needs a gradient: the scripted ViT certifies as the exported one does."""
    model, x = seeded(ViT), inputs(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
    ours = certify(scripted, x, eps=EPS, method="saliency", spectral="full")
    ref = certify(model, x, eps=EPS, method="saliency", spectral="full")
    assert ours[0]["smooth"] is True
    assert ours[0]["xi_max"] == pytest.approx(ref[0]["xi_max"], rel=1e-5)


#: ``--sound`` on the zoo: the graphs it proves bounds for, and the reason it names for the
#: others (saliency, l2, eps 1e-3, float64). The residual nets are proved in
#: tests/test_sound_graphs.py (the zoo's ResNet takes 10-20 s here, too long for this file).
SOUND = {"efficientnet": None, "convnext": "LayerNorm",
         "mixer": "LayerNorm", "swin": "LayerNorm", "mobilenet": "Hardswish",
         "resnet_relu": "ReLU", "maxpool": "max-pooling"}


@pytest.mark.parametrize("name", sorted(SOUND))
def test_sound_mode_proves_the_smooth_graphs_and_names_what_it_refuses(archives, name):
    from attrcert.errors import InputError

    model = load_model(archives[f"{name}.pt2"])
    x = inputs(1).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonSmoothModelWarning)
        if SOUND[name] is None:
            (rec,) = certify(model, x, eps=EPS, method="saliency", dtype="float64", sound=True,
                             verify=True, attack_steps=10)
            assert rec["T_e_sound"] >= rec["T_e_hat"] and not rec["violation_sound"]
            assert rec["T_e_sound"] <= 1.5 * rec["T_e"]  # tends to T_e as eps -> 0
        else:
            with pytest.raises(InputError, match=SOUND[name]) as info:
                certify(model, x, eps=EPS, method="saliency", dtype="float64", sound=True)
            assert "\n" not in str(info.value)
