"""Conformance: timm's own models (its code, not copies; random weights, ``pretrained=False``)
through the CLI as users run it, at 32 x 32 with 10 classes.

Each model is written the three ways users have it: a ``torch.export`` archive with a
dynamic batch, one exported as torch's docs export (``torch.randn(1, 3, H, W)``: the batch
fixed at 1) and its weights as safetensors for ``--arch timm:NAME``. Then ``bound``
(l2, saliency, float64, with the attack: ``--verify``), ``attack`` (l2), ``inspect`` and, on the
non-smooth ones, ``--beta-smooth``:

- smooth models: finite bounds that an attack at eps = 1e-3 does not beat beyond ``T'_e``;
- ReLU / Hard* models: flagged, naming the operations; a piecewise-linear one's saliency is
  ``degenerate`` (``T_e`` = 0), and with ``--beta-smooth`` every one gets a non-zero finite
  bound that the attack on the smoothed explanation does not beat either;
- the static export and ``--arch`` give the dynamic export's ``xi_max`` (same weights).

The default run takes timm's ``test_*`` variants (and MobileNetV3-Small 0.5 for Hard*);
``--slow`` adds the other families of :data:`zoo.ZOO` (ResNet-18, ConvNeXt-Atto, ViT-Tiny,
Swin-T, Mixer-S/16, RegNetY-200MF, LeViT-128S, PoolFormer-S12 at 32 px).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass

import pytest
import torch
from typer.testing import CliRunner

from attrcert.cli import app
from zoo import ZOO, Entry, build, export_pt2, export_static, inputs, save_weights

from .processes import run_attrcert

timm = pytest.importorskip("timm")

EPS = "1e-3"
CLASSES = 10
#: The attack may exceed T'_e (a first-order estimate, not a certificate) by this much at
#: eps = 1e-3 in float64 (README, "When a bound is violated": 0.01% at eps = 0.01).
ATTACK_TOLERANCE = 1e-3
RELU_MAXPOOL = frozenset({"ReLU", "max-pooling"})
BOUND = ["--eps", EPS, "--norm", "2", "--method", "saliency", "--dtype", "float64",
         "--spectral", "iterative", "--attack-steps", "10", "--format", "json", "--quiet"]


def _timm(name: str, nonsmooth: frozenset[str] = frozenset(), *, degenerate: bool = False
          ) -> Entry:
    arch = f"timm:{name}"
    return Entry(name, "timm test model", {32: arch, 224: arch}, None, nonsmooth,
                 degenerate=degenerate)


#: The default run: timm's own test variants (its smallest of each kind), MobileNetV3-Small.
FAST = (
    _timm("test_resnet", RELU_MAXPOOL, degenerate=True),
    _timm("test_efficientnet"),
    _timm("test_convnext"),
    # dynamic_img_size=False: with it, timm casts the position embedding to float32 in the
    # graph (aten._assert_tensor_metadata), which a float64 run of the export cannot pass
    _timm("test_vit(img_size=32, dynamic_img_size=False)"),
    _timm("mobilenetv3_small_050", frozenset({"ReLU", "Hardswish", "Hardsigmoid"})),
)
#: ``--slow``: one model of each family of the zoo's registry (its 32 px architecture).
#: (EfficientNet's and MobileNetV3's are the default run's test_efficientnet and
#: mobilenetv3_small_050.)
FAMILIES = tuple(e for e in ZOO if e.library == "timm"
                 and e.key not in ("efficientnet", "mobilenetv3"))
CASES = [pytest.param(e, id=e.key.split("(")[0]) for e in FAST] + [
    pytest.param(e, id=e.key, marks=pytest.mark.slow) for e in FAMILIES]
#: Every family in the default run for ``bound --verify`` and ``inspect`` (the other
#: commands and formats of the families beyond FAST run with ``--slow``).
EVERY_FAMILY = [pytest.param(e, id=e.key.split("(")[0]) for e in (*FAST, *FAMILIES)]


@dataclass
class Files:
    dynamic: str
    static: str
    weights: str
    arch: str
    x: str


def invoke(*args: str) -> dict:
    """``attrcert ARGS`` in this process: the JSON document of a run that exited 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


_written: dict[str, Files] = {}


@pytest.fixture
def files(tmp_path_factory, entry: Entry) -> Files:
    """``entry`` at 32 px with 10 classes, written once per session: both exports, the
    weights, one image."""
    if entry.key not in _written:
        folder = tmp_path_factory.mktemp(entry.key.split("(")[0])
        model = build(entry, 32, CLASSES)
        torch.save(inputs(1, 32, seed=3), folder / "x.pt")
        arch = entry.arch(32)
        assert arch is not None
        _written[entry.key] = Files(
            str(export_pt2(model, inputs(2, 32), folder / "dynamic.pt2")),
            str(export_static(model, 32, folder / "static.pt2")),
            str(save_weights(model, folder / "weights.safetensors")), arch,
            str(folder / "x.pt"))
    return _written[entry.key]


_bounds: dict[str, dict] = {}


def dynamic_bound(entry: Entry, files: Files) -> dict:
    """``bound --verify`` on the dynamic export (run once, shared by the tests)."""
    if entry.key not in _bounds:
        _bounds[entry.key] = invoke("bound", files.dynamic, files.x, "--verify", *BOUND)
    return _bounds[entry.key]


def _flags(found: list[str]) -> set[str]:
    return {op.split(" (")[0] for op in found}


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.mark.parametrize("entry", EVERY_FAMILY)
def test_bound_is_finite_flagged_and_unbeaten(entry, files):
    doc = dynamic_bound(entry, files)
    assert _flags(doc["config"]["nonsmooth_ops"]) == set(entry.nonsmooth)
    assert all("(aten." in op for op in doc["config"]["nonsmooth_ops"])  # named by op
    (rec,) = doc["samples"]
    for key in ("xi_max", "T_e", "T_e_prime", "attr_norm", "T_e_hat"):
        assert _finite(rec[key]), (key, rec[key])
    assert rec["attack_checked"] is True and not rec["vacuous"]
    if entry.degenerate:  # piecewise linear: the logit's Hessian is 0 almost everywhere
        assert rec["T_e"] == 0.0 and "--beta-smooth" in rec["degenerate"][0]
        return
    assert rec["T_e"] > 0 and rec["degenerate"] == []
    if entry.smooth:  # T'_e is tight at small eps on smooth models
        assert rec["T_e_hat"] <= rec["T_e_prime"] * (1 + ATTACK_TOLERANCE), rec
        assert rec["warnings"] == []
    else:
        assert "estimates, not certificates" in rec["warnings"][0]


@pytest.mark.parametrize("entry", CASES)
def test_static_export_and_arch_give_the_dynamic_exports_xi_max(entry, files):
    """The batch-1 export (padded or run row by row) and ``--arch timm:NAME`` with the
    weights as safetensors certify the same function (``--arch`` takes timm's input size,
    mean and std by default: overridden here, the images being the exports' inputs)."""
    ref = dynamic_bound(entry, files)["samples"][0]
    arch = invoke("bound", files.weights, files.x, "--arch", files.arch, "--size", "32", "32",
                  "--mean", "0,0,0", "--std", "1,1,1", *BOUND)
    docs = [arch]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        static = CliRunner().invoke(app, ["bound", files.static, files.x, *BOUND])
    # (a static export with Hardsigmoid once failed: the rewrite for autograd traced it on
    # two rows; it now rewrites the exported graph at its own batch size)
    assert static.exit_code == 0, static.output
    docs.append(json.loads(static.stdout))
    assert docs[-1]["config"]["static_batch"] == 1
    for doc in docs:
        (rec,) = doc["samples"]
        assert rec["predicted"] == ref["predicted"]
        assert rec["xi_max"] == pytest.approx(ref["xi_max"], rel=1e-4, abs=1e-12)
        assert _flags(doc["config"]["nonsmooth_ops"]) == set(entry.nonsmooth)


@pytest.mark.parametrize("entry", CASES)
def test_attack_command_beats_no_certified_bound(entry, files):
    """``attack`` in the l2 ball (l-inf's Theorem 2 forms the full Jacobian, d = 3072
    products: minutes here) against ``T'_e`` (smooth models: verified)."""
    doc = invoke("attack", files.dynamic, files.x, "--eps", EPS, "--norm", "2",
                 "--method", "saliency", "--attack-steps", "10", "--dtype", "float64",
                 "--format", "json", "--quiet")
    (rec,) = doc["samples"]
    assert _finite(rec["T_e_hat"]) and _finite(rec["T_e_prime"])
    if entry.smooth:
        assert rec["T_e_hat"] <= rec["T_e_prime"] * (1 + ATTACK_TOLERANCE)
        assert rec["verified"] is True


@pytest.mark.parametrize("entry", EVERY_FAMILY)
def test_inspect_flags_what_is_not_smooth(entry, files):
    for model, extra in ((files.dynamic, ()), (files.weights, ("--arch", files.arch))):
        info = invoke("inspect", model, files.x, *extra, "--size", "32", "32", "--format",
                      "json")
        assert _flags(info["nonsmooth_ops"]) == set(entry.nonsmooth), info["nonsmooth_ops"]
        assert info["smooth"] is entry.smooth and info["classes"] == CLASSES


@pytest.mark.parametrize("entry", [c for c in CASES if not c.values[0].smooth])
def test_beta_smooth_certifies_the_smoothed_explanation(entry, files):
    """ReLU / Hard* nets: with ``--beta-smooth 10`` the explanation is smooth, its bound
    non-zero and finite, and the attack on it does not beat ``T'_e``."""
    plain = dynamic_bound(entry, files)["samples"][0]
    doc = invoke("bound", files.dynamic, files.x, "--beta-smooth", "10", "--verify",
                 *[a if a != EPS else "1e-4" for a in BOUND])
    assert doc["config"]["smooth"] is True
    (rec,) = doc["samples"]
    assert rec["degenerate"] == [] and rec["beta_smooth"] == 10.0
    assert rec["predicted"] == plain["predicted"]
    assert 0 < rec["T_e"] and math.isfinite(rec["T_e"])
    assert rec["T_e_hat"] <= rec["T_e_prime"] * (1 + ATTACK_TOLERANCE), rec


def test_the_suite_covers_every_timm_family_of_the_zoo():
    """The ``--slow`` run holds one model of each family the README lists as tested."""
    families = {e.family for e in FAMILIES} | {"EfficientNet", "MobileNetV3"}
    assert families == {e.family for e in ZOO if e.library == "timm"}
    assert len(families) == 10


@pytest.mark.parametrize("entry", [e for e in ZOO if e.key == "mobilenetv3"])
def test_library_users_of_mobilenetv3_are_told_what_to_do_and_it_works(entry, files):
    """In Python, timm's MobileNetV3 (Hardsigmoid) is refused with one line naming
    ``attrcert.differentiable_hard``; passed through it, it certifies with the command
    line's ``xi_max``."""
    import attrcert
    from attrcert.errors import AttrcertError

    model = build(entry, 32, CLASSES)
    x = torch.load(files.x, weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AttrcertError, match=r"attrcert\.differentiable_hard\(model"):
            attrcert.certify(model, x, eps=0.01, norm=2, method="saliency")
        fixed = attrcert.differentiable_hard(model, x)
        (rec,) = attrcert.certify(fixed, x, eps=0.01, norm=2, method="saliency")
    ref = dynamic_bound(entry, files)["samples"][0]
    assert rec["xi_max"] == pytest.approx(ref["xi_max"], rel=1e-4)


def test_a_graph_that_fixes_float32_is_refused_in_float64_in_one_line(tmp_path):
    """timm's ViT with ``dynamic_img_size=True`` casts inside its exported graph: a float64
    run of it is refused before any work (exit 2, one line), and float32 runs."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=CLASSES, img_size=32,
                              dynamic_img_size=True).eval()
    path = export_pt2(model, inputs(2, 32), tmp_path / "vit.pt2")
    torch.save(inputs(1, 32, seed=3), tmp_path / "x.pt")
    args = ("bound", str(path), str(tmp_path / "x.pt"), "--method", "saliency", "--quiet")
    refused = run_attrcert(*args, "--dtype", "float64")
    assert refused.returncode == 2 and refused.stdout == ""
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: the model does not run in float64 (") and \
        "--dtype float32" in line
    assert run_attrcert(*args).returncode == 0
