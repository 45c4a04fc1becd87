"""``attrcert report``: the numbers against closed forms and the API, the HTML page, the
CLI contract, and (marked ``browser``) what a user sees in headless Chromium."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attrcert import certify, linearity_gap
from attrcert.attributions import get_method
from attrcert.cli import main
from attrcert.report import (
    JACOBIAN_MAX_D,
    compute_report,
    default_sweep,
    parse_sweep,
    write_report,
)

from .conftest import SAMPLES
from .models import make_cnn, make_quadratic

pytest.importorskip("matplotlib")

MODEL = str(SAMPLES / "digits_softplus.pt2")
FAST = {"attack_steps": 3, "steps": 8}


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def quad_inputs(n: int = 3, seed: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 3, 3, generator=gen, dtype=torch.float64)


# --- the numbers --------------------------------------------------------------------------

def test_saliency_of_a_quadratic_is_linear_so_the_sweep_is_exact():
    """Saliency of ``f_y = z^T A z / 2 + b^T z`` is ``A z + b``: J = A, g is affine, so
    eta = 0, c = 1, T'_e = T_e = ||A||_2 eps and the deviation along v_max is T_e."""
    model, x = make_quadratic(), quad_inputs()
    radii = [0.01, 0.1, 0.5]
    data = compute_report(model, x, eps=0.1, method="saliency", sweep=radii, **FAST)
    assert np.allclose(data.sweep.eps, radii)
    for i, rec in enumerate(data.records):
        a = model.a[rec["target"]].numpy()
        xi = np.linalg.norm(a, 2)
        assert data.sweep.T_e[:, i] == pytest.approx(xi * np.array(radii), rel=1e-9)
        assert data.sweep.T_e_prime[:, i] == pytest.approx(data.sweep.T_e[:, i], rel=1e-9)
        assert data.sweep.deviation[:, i] == pytest.approx(xi * np.array(radii), rel=1e-9)
        assert np.all(np.abs(data.sweep.eta[:, i]) < 1e-12)
        g = float(np.linalg.norm(data.samples[i].attribution))
        for k, r in enumerate(radii):
            ratio = xi * r / g
            expected = math.degrees(math.asin(ratio)) if ratio < 1 else math.nan
            got = data.sweep.T_c_deg[k, i]
            assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)
    jac = data.jacobian
    assert jac.matrix is not None
    y = data.records[0]["target"]
    assert np.allclose(jac.matrix, model.jacobian(x[0], y, "saliency").numpy(), atol=1e-12)
    assert jac.xi_max_full == pytest.approx(jac.xi_max_record, rel=1e-8)


def test_integrated_gradients_sweep_matches_closed_form_and_certify():
    """IG of a quadratic is ``g = z (k A z + b)``, k = (m+1)/(2m): exactly quadratic in x,
    so ``g(x + e u) - g(x) - e J u = e^2 k u (A u)`` and eta = e^2 k ||u * (A u)||."""
    model, x = make_quadratic(), quad_inputs()
    steps = 8
    k = (steps + 1) / (2 * steps)
    data = compute_report(model, x, eps=0.2, sweep=[0.05, 0.2, 0.4], steps=steps,
                          attack_steps=3, figures=3)
    for i, view in enumerate(data.samples):
        a = model.a[view.record["target"]].numpy()
        u = view.direction.reshape(-1)
        assert np.linalg.norm(u) == pytest.approx(1.0)
        for kk, r in enumerate(data.sweep.eps):
            assert data.sweep.eta[kk, i] == pytest.approx(r * r * k * np.linalg.norm(u * (a @ u)),
                                                          rel=1e-8)
        z = x[i].reshape(-1).numpy()
        g = view.attribution.reshape(-1)
        assert g == pytest.approx(z * (k * (a @ z) + model.b[view.record["target"]].numpy()))
        moved = (z + 0.2 * u) * (k * (a @ (z + 0.2 * u))
                                 + model.b[view.record["target"]].numpy())
        assert view.moved.reshape(-1) == pytest.approx(moved, rel=1e-9)
    # at eps = 0.2 the sweep reproduces certify's record (c, T'_e, eta along v_max)
    recs = certify(model, x, eps=0.2, steps=steps, verify=True, attack_steps=3)
    col = list(data.sweep.eps).index(0.2)
    for i, rec in enumerate(recs):
        assert data.records[i]["T_e_prime"] == pytest.approx(rec["T_e_prime"], rel=1e-12)
        assert data.sweep.T_e_prime[col, i] == pytest.approx(rec["T_e_prime"], rel=1e-10)
        assert data.sweep.T_e[col, i] == pytest.approx(rec["T_e"], rel=1e-10)
        assert data.sweep.T_c_deg[col, i] == pytest.approx(rec["T_c_deg"], rel=1e-10)
        assert data.sweep.eta[col, i] == pytest.approx(rec["eta_vmax"], rel=1e-8)
    # and linearity_gap, the API's own eta, agrees at every radius
    ig = get_method("integrated_gradients", steps=steps)
    u = torch.from_numpy(np.stack([v.direction for v in data.samples]))
    target = torch.tensor([r["target"] for r in data.records])
    for kk, r in enumerate(data.sweep.eps):
        eta = linearity_gap(model, x, ig, target, float(r) * u)
        assert data.sweep.eta[kk] == pytest.approx(eta.numpy(), rel=1e-8)


def test_linf_sweep_uses_theorem2_and_sign_directions():
    """l-inf: T_e = eps sqrt(sum |P_ij|) with P = J^T J (Theorem 2), no T'_e, and the
    worst-case direction is sign(v_max)."""
    model, x = make_quadratic(), quad_inputs(2)
    data = compute_report(model, x, eps=0.05, norm="inf", method="saliency",
                          sweep=[0.01, 0.05], **FAST)
    for i, rec in enumerate(data.records):
        a = model.a[rec["target"]].numpy()
        slope = math.sqrt(np.abs(a.T @ a).sum())
        assert data.sweep.T_e[:, i] == pytest.approx([0.01 * slope, 0.05 * slope], rel=1e-9)
        assert np.all(np.isnan(data.sweep.T_e_prime[:, i]))
        assert set(np.unique(data.samples[i].direction)) <= {-1.0, 1.0}
        assert rec["T_e_method"] == "theorem2"


def test_attack_never_exceeds_a_linear_attribution_bound():
    """For an affine attribution the bound is exact: no attack can beat T_e, so the report
    says the bound held on every sample (a check the attack could fail)."""
    model, x = make_quadratic(), quad_inputs()
    data = compute_report(model, x, eps=0.1, method="saliency", attack_steps=20,
                          sweep=[0.1])
    for rec in data.records:  # (the quadratic logits break Prop. 1's first-order radius on
        # one sample, a label change that makes ``verified`` false: not the bound's doing)
        assert rec["attack_checked"] and not rec["violation"] and not rec["violation_cosine"]
        assert rec["verified"] == (not rec["label_radius_violated"]
                                   and not rec["label_preserved_violated"])
        assert rec["T_e_hat"] <= rec["T_e"] * (1 + 1e-9)
        assert rec["T_e_hat"] >= 0.9 * rec["T_e"]  # PGD finds the top direction


def test_sweep_parsing_and_defaults():
    assert default_sweep(0.3) == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.25, 0.3])
    assert parse_sweep(None, 0.6) == pytest.approx(default_sweep(0.6))
    assert parse_sweep("0.1, 0.02,0.1", 1.0) == [0.02, 0.1]
    from attrcert.errors import OptionError
    for bad in ("", "a,b", "0.1,-1", "nan", "0"):
        with pytest.raises(OptionError):
            parse_sweep(bad, 0.1)


# --- the page -------------------------------------------------------------------------------

def _check_self_contained(page: Path) -> str:
    text = page.read_text()
    assert "<script" not in text.lower()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", text, re.I)
    assert "NaN" not in re.sub(r"base64,[A-Za-z0-9+/=]+", "", text)
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        png = base64.b64decode(s.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return text


def test_write_report_is_self_contained_and_says_what_was_shown(tmp_path):
    model, x = make_cnn(), torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(0),
                                      dtype=torch.float64)
    data = compute_report(model, x, eps=0.05, sweep=[0.02, 0.05], figures=2,
                          sources=["a.png", "b.png", "c.png"], **FAST)
    page = write_report(tmp_path / "out", data, {"model": "tiny", "attack_steps": 3})
    text = _check_self_contained(page)
    names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert names == ["bound_minus_attack.png", "jacobian.png", "sample_000.png",
                     "sample_001.png", "sweep.png"]
    assert text.count("<img ") == len(names)
    for name in ("a.png", "b.png", "c.png", "Theorem 1", "Eq. 11", "Corollary 2",
                 "locally linear", "first 2 of 3 samples"):
        assert name in text
    assert ("did not exceed" in text) != ("exceeded the Euclidean bound" in text)
    doc = strict_json((tmp_path / "out" / "report.json").read_text())
    assert len(doc["samples"]) == 3 and doc["sweep"]["eps"] == [0.02, 0.05]
    assert doc["jacobian"]["formed"] is True
    for name in names:
        with Image.open(tmp_path / "out" / name) as im:
            assert im.width >= 800


def test_non_smooth_model_and_violations_are_named(tmp_path):
    model = make_cnn(smooth=False)
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with pytest.warns(UserWarning):
        data = compute_report(model, x, eps=0.3, sweep=[0.3], attack_steps=10, steps=4)
    page = write_report(tmp_path, data, {})
    text = page.read_text()
    assert "Non-smooth model" in text and "ReLU" in text
    beaten = sum(1 for r in data.records if not r["verified"])
    if beaten:
        assert "VIOLATED" in text and f"on {sum(r['violation'] for r in data.records)} of 4" \
            in text
    else:
        assert "did not exceed" in text


def test_rgb_images_and_no_sample_figures(tmp_path):
    """3-channel inputs: the image is drawn in colour and g summed over channels; with
    figures=0 the page says there are no per-sample figures."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Softplus(),
                              torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3)).double().eval()
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    data = compute_report(net, x, eps=0.05, sweep=[0.05], figures=1, **FAST)
    assert data.samples[0].image.shape == (3, 6, 6)
    write_report(tmp_path / "one", data, {})
    with Image.open(tmp_path / "one" / "sample_000.png") as im:
        assert im.width >= 800
    data.samples = []
    text = write_report(tmp_path / "none", data, {}).read_text()
    assert "No per-sample figures" in text
    assert not list((tmp_path / "none").glob("sample_*.png"))


def test_large_d_skips_the_jacobian_and_says_so(tmp_path):
    model, x = make_quadratic(), quad_inputs(1)
    data = compute_report(model, x, eps=0.1, method="saliency", sweep=[0.1],
                          jacobian_max_d=4, **FAST)
    assert data.jacobian.matrix is None and "d = 9 exceeds the limit of 4" in \
        data.jacobian.reason
    page = write_report(tmp_path, data, {})
    assert "d = 9 exceeds the limit of 4" in page.read_text()
    assert not (tmp_path / "jacobian.png").exists()
    assert JACOBIAN_MAX_D >= 784  # the sample models' J is drawn by default


def test_linf_report_renders(tmp_path):
    model, x = make_quadratic(), quad_inputs(2)
    data = compute_report(model, x, eps=0.05, norm="inf", method="saliency", sweep=[0.05],
                          **FAST)
    text = _check_self_contained(write_report(tmp_path, data, {}))
    assert "Theorem 2" in text and "sign(v_max)" in text


# --- the command ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_report(tmp_path_factory) -> tuple[Path, str]:
    """One end-to-end run on the sample Softplus model with 2 images (short settings)."""
    folder = tmp_path_factory.mktemp("report")
    two = folder / "two.pt"
    torch.save(torch.load(SAMPLES / "digits.pt", weights_only=True)[:2].clone(), two)
    out = folder / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "attrcert", "report", MODEL, str(two), "--eps", "0.1",
         "--steps", "8", "--attack-steps", "3", "--sweep", "0.05,0.1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {out / 'report.html'}"
    assert "Traceback" not in proc.stderr and "report: forming the 784 x 784" in proc.stderr
    return out, proc.stderr


def test_end_to_end_on_the_sample_model(sample_report):
    out, _ = sample_report
    text = _check_self_contained(out / "report.html")
    doc = strict_json((out / "report.json").read_text())
    assert [r["source"] for r in doc["samples"]] == ["two.pt[0]", "two.pt[1]"]
    assert doc["config"]["command"] == "report" and doc["config"]["attack_checked"]
    jac = doc["jacobian"]
    assert jac["d"] == 784 and jac["xi_max_full"] == pytest.approx(jac["xi_max_record"],
                                                                    rel=1e-3)
    for i, rec in enumerate(doc["samples"]):
        assert doc["sweep"]["T_e"][1][i] == pytest.approx(rec["T_e"], rel=1e-9)
        assert doc["sweep"]["T_e_prime"][1][i] == pytest.approx(rec["T_e_prime"], rel=1e-9)
        assert doc["sweep"]["eta"][1][i] == pytest.approx(rec["eta_vmax"], rel=1e-3, abs=1e-6)
    assert "two.pt[0]" in text and len(list(out.glob("*.png"))) == 5


def _run_main(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.mark.parametrize("extra, message", [
    (["--sweep", "0.1,x"], "--sweep"),
    (["--sweep", "0,0.1"], "finite number > 0"),
    (["--eps", "-1"], "eps"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, extra, message):
    code, out, err = _run_main(["report", MODEL, str(SAMPLES / "digits"), "--out",
                                str(tmp_path / "r"), *extra], capsys)
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1


def test_out_that_is_a_file_exits_2(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    code, out, err = _run_main(["report", MODEL, str(SAMPLES / "digits"), "--out", str(file)],
                               capsys)
    assert code == 2 and out == "" and "is a file" in err


def test_without_matplotlib_report_exits_2_with_the_install_command(tmp_path):
    """matplotlib made unimportable: ``report`` exits 2 naming the install command, and the
    rest of attrcert (the CLI, the report module itself, ``bound``) still works."""
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import attrcert, attrcert.cli, attrcert.report\n"
        "from attrcert.cli import main\n"
        f"main(['report', {MODEL!r}, {str(SAMPLES / 'digits')!r}, '--out', "
        f"{str(tmp_path / 'r')!r}])\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        'error: attrcert report draws its figures with matplotlib, which is not installed: '
        'run pip install "attrcert[report]"']
    assert not (tmp_path / "r").exists()
    bound = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['matplotlib'] = None\n"
         "from attrcert.cli import main\n"
         f"main(['bound', {MODEL!r}, {str(SAMPLES / 'digits' / 'digit_00.png')!r}, "
         "'--steps', '2', '--format', 'json', '--quiet'])"],
        capture_output=True, text=True, timeout=300, check=False)
    assert bound.returncode == 0, bound.stderr
    assert strict_json(bound.stdout)["samples"][0]["T_e"] > 0


# --- what a user sees -----------------------------------------------------------------------

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install "
                    "chromium)")
def test_report_renders_in_headless_chromium(sample_report, tmp_path):
    """Render report.html as a user would and check the screenshot shows the figures: a
    blank or text-only page has almost no saturated pixels, the colour maps have many."""
    out, _ = sample_report
    shot = tmp_path / "screenshot.png"
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--allow-file-access-from-files", f"--screenshot={shot}", "--window-size=1400,2400",
         (out / "report.html").resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.exists()
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    assert rgb.shape[:2] == (2400, 1400)
    non_white = (rgb.min(axis=2) < 0.9).mean()
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    colourful = (saturation > 0.35).mean()
    assert non_white > 0.05, f"page looks blank ({non_white:.1%} non-white)"
    assert colourful > 0.01, f"no figures visible ({colourful:.2%} saturated pixels)"
