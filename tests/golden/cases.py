"""The commands whose records are pinned in ``records.json`` (issue: the redesign must not
change a single record). ``python -m tests.golden.cases`` rewrites the file from the
installed attrcert; the test ``tests/test_golden.py`` compares a fresh run against it.

Every field of every record is compared except ``seconds`` (wall time) and
``config_hash`` (a digest that includes the configuration's keys, which new options may
extend without changing any number).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
RECORDS = Path(__file__).with_name("records.json")
IGNORED = ("seconds", "config_hash", "input_sha256")

#: name -> arguments after ``attrcert`` (``{three}`` is a tensor file of the first three
#: sample digits, written by :func:`prepare`).
CASES: dict[str, list[str]] = {
    "bound_ig_l2_folder": ["bound", "sample_models/digits_softplus.pt2", "sample_models/digits",
                           "--labels", "sample_models/digits/labels.csv", "--steps", "8",
                           "--eps", "0.1"],
    "bound_saliency_linf_full": ["bound", "sample_models/digits_relu_maxpool.pt2", "{three}",
                                 "--norm", "inf", "--method", "saliency", "--eps", "0.05"],
    "bound_ixg_l3_arch": ["bound", "sample_models/digits_softplus.safetensors", "{three}",
                          "--arch", "sample_models/digits_arch.py:softplus_cnn",
                          "--method", "input_x_gradient", "--norm", "3", "--eps", "0.05",
                          "--label-gradient", "attribution"],
    "bound_verify_mlp": ["bound", "sample_models/digits_tanh_mlp.pt2", "sample_models/digits8.pt",
                         "--method", "saliency", "--eps", "0.05", "--verify",
                         "--attack-steps", "10"],
    "attack_linf_mlp": ["attack", "sample_models/digits_tanh_mlp.pt2", "sample_models/digits8.pt",
                        "--norm", "inf", "--method", "saliency", "--eps", "0.02",
                        "--attack-steps", "5"],
    "attack_ig_relu": ["attack", "sample_models/digits_relu_maxpool.pt2", "{three}",
                       "--steps", "4", "--eps", "0.1", "--attack-steps", "5"],
    "max_eps_modified_angle": ["max-eps", "sample_models/digits_softplus.pt2", "{three}",
                               "--omega", "5", "--metric", "angle", "--modified", "--steps", "8"],
    "max_eps_cosine_float64": ["max-eps", "sample_models/digits_softplus.pt", "{three}",
                               "--omega", "0.01", "--metric", "cosine", "--steps", "4",
                               "--dtype", "float64", "--spectral", "full"],
}


def prepare(folder: Path) -> dict[str, str]:
    """The tensor files the cases name, written into ``folder``."""
    three = folder / "three.pt"
    torch.save(torch.load(SAMPLES / "digits.pt", weights_only=True)[:3].clone(), three)
    return {"three": str(three)}


def arguments(name: str, files: dict[str, str]) -> list[str]:
    """The command line of case ``name``, JSON on stdout, one thread, no progress bar."""
    return [a.format(**files) for a in CASES[name]] + ["--format", "json", "--threads", "1",
                                                       "--quiet"]


def comparable(document: dict) -> list[dict]:
    """The records of a JSON document without the fields that may differ between runs."""
    return [{k: v for k, v in rec.items() if k not in IGNORED} for rec in document["samples"]]


def main() -> None:
    import tempfile

    sys.path.insert(0, str(ROOT))
    from tests.processes import run_attrcert

    out: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = prepare(Path(tmp))
        for name in CASES:
            done = run_attrcert(*arguments(name, files), cwd=ROOT)
            if done.returncode != 0:
                raise SystemExit(f"{name}: exit {done.returncode}: {done.stderr}")
            out[name] = comparable(json.loads(done.stdout))
            print(name, len(out[name]), "records", file=sys.stderr)
    text = json.dumps(out, indent=1, sort_keys=True, allow_nan=False)
    RECORDS.write_text(text.replace(str(files["three"]), "{three}") + "\n")


if __name__ == "__main__":
    main()
