"""``certify(verify=True)``, ``attrcert attack`` and ``bound --verify``: the bounds checked by an
attack, with violations reported and gated (docs/math.md §6)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from attrcert import certify
from attrcert.loading import load_model

from .conftest import SAMPLES
from .processes import run_attrcert as cli

SMOOTH = SAMPLES / "digits_softplus.pt2"
RELU = SAMPLES / "digits_relu_maxpool.pt2"


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.load(SAMPLES / "digits.pt", weights_only=True)[:2].clone()


def test_smooth_model_attack_stays_at_the_bound(images):
    records = certify(load_model(SMOOTH), images, eps=0.05, steps=4, verify=True)
    for r in records:
        assert r["attack_checked"] is True
        for key in ("T_e_hat", "T_c_hat", "T_c_hat_deg", "eta_vmax", "eta_attack"):
            assert isinstance(r[key], float)
        # T'_e is a tight estimate, not a guarantee: the attack lands within 1% of it
        assert 0.9 <= r["T_e_hat"] / r["T_e_prime"] <= 1.01
        assert r["eta_vmax"] < 0.05 * r["T_e"]  # nearly linear on this ball
        assert r["attack_label_kept"] is True
        assert r["verified"] == (not r["violation"] and not r["violation_cosine"])


def test_relu_maxpool_model_violates_and_says_so(images):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = certify(load_model(RELU), images, eps=0.1, steps=4, verify=True)
    assert any(r["violation"] for r in records)
    bad = next(r for r in records if r["violation"])
    assert bad["T_e_hat"] > 1.05 * bad["T_e_prime"]
    assert bad["verified"] is False
    assert any("an attack exceeded the bound" in w for w in bad["warnings"])
    json.dumps(records, allow_nan=False)


def test_linf_verification_includes_ifia(images):
    records = certify(load_model(SMOOTH), images[:1], eps=0.01, norm="inf", steps=2,
                      verify=True, attack_steps=5)
    r = records[0]
    assert r["T_e_prime"] is None and r["T_e_hat"] <= r["T_e"] * 1.01


@pytest.fixture(scope="module")
def two(tmp_path_factory, images) -> str:
    path = tmp_path_factory.mktemp("img") / "two.pt"
    torch.save(images, path)
    return str(path)


def test_attack_command_json(two):
    proc = cli("attack", str(RELU), two, "--steps", "4", "--format", "json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["config"]["attack_checked"] is True and doc["config"]["command"] == "attack"
    assert doc["summary"]["violations"] >= 1
    assert "violation_fraction" in doc["summary"]


def test_require_verified_gate(two):
    proc = cli("bound", str(RELU), two, "--steps", "4", "--verify", "--require-verified",
               "--quiet")
    assert proc.returncode == 1
    assert "gate failed: an attack exceeded the bound" in proc.stderr
    assert "VIOLATED" in proc.stdout
    proc = cli("bound", str(SMOOTH), two, "--require-verified", "--quiet")
    assert proc.returncode == 2 and "--verify" in proc.stderr
