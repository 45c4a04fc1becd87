"""The repository reads on its own: every key a JSON document can carry is listed in
docs/cli.md, and nothing the user sees cites a document outside the repository."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .golden.cases import RECORDS
from .processes import run_attrcert

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = (ROOT / "docs" / "cli.md").read_text()
MLP = ["sample_models/digits_tanh_mlp.pt2", "sample_models/digits8.pt"]
COMMON = ["--format", "json", "--quiet", "--threads", "1"]


def documented(key: str) -> bool:
    """``key`` appears on docs/cli.md as code (`` `key` ``)."""
    return f"`{key}`" in CONTRACT


@pytest.fixture(scope="module")
def documents() -> dict[str, dict]:
    """JSON documents of the commands whose keys golden records do not cover: ``--sound``,
    ``smooth`` with every option that adds keys, ``inspect``."""
    runs = {
        "sound": ["bound", *MLP, "--method", "saliency", "--eps", "0.01", "--sound",
                  "--verify", "--attack-steps", "3"],
        "smooth": ["smooth", *MLP, "--method", "saliency", "--radius", "2", "--eps", "0.01",
                   "--samples", "24", "--sigma", "0.25", "--omega", "0.2"],
    }
    out = {}
    for name, args in runs.items():
        done = run_attrcert(*args, *COMMON, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        out[name] = json.loads(done.stdout)
    done = run_attrcert("inspect", MLP[0], "--format", "json", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out["inspect"] = {"samples": [json.loads(done.stdout)]}
    return out


def test_every_record_key_of_the_golden_commands_is_documented() -> None:
    pinned = json.loads(RECORDS.read_text())
    keys = {k for records in pinned.values() for rec in records for k in rec}
    keys |= {"seconds", "config_hash", "input_sha256"}  # left out of the pins
    assert sorted(k for k in keys if not documented(k)) == []


def test_every_key_of_sound_smooth_and_inspect_is_documented(documents) -> None:
    keys: set[str] = set()
    for doc in documents.values():
        for rec in doc["samples"]:
            keys |= set(rec)
        keys |= set(doc.get("summary", {})) - {"samples"}
    assert sorted(k for k in keys if not documented(k)) == []
    assert documents["sound"]["samples"][0]["T_e_sound"] is not None


def test_the_check_catches_an_undocumented_key() -> None:
    assert not documented("T_e_made_up")
    assert documented("T_e_prime")


def test_no_user_facing_text_cites_a_document_outside_the_repository() -> None:
    """Users never see the specification the project was built from: code, messages, golden
    records and docs cite the paper's equations or ``docs/`` pages."""
    cited = re.compile(r"SPEC\s*(§|\\u00a7)|SPEC \d|shared/SPEC")
    files = [*ROOT.glob("attrcert/**/*.py"), *ROOT.glob("docs/*.md"), ROOT / "README.md",
             RECORDS, *ROOT.glob("benchmarks/*.py"), ROOT / "BENCHMARKS.md"]
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in files
            for n, line in enumerate(p.read_text().splitlines(), 1) if cited.search(line)]
    assert hits == []
