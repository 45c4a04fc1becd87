"""The records on the sample models equal the pinned ones (tests/golden/records.json), field
by field (all but ``seconds``, ``config_hash`` and ``input_sha256``): refactoring must not
change a number. Regenerate with ``python -m tests.golden.cases`` only for a change that is meant to
move results, and say why in the commit.

Every field that is not a float must be equal. Floats were bit-identical on the machine that
pinned them, through the redesign; on another CPU, torch vectorises float32 reductions
differently (measured on an AMD EPYC against the pinning machine: up to 1.4e-4 relative on
the float32 sample models, where attacks and differences of attributions amplify rounding;
1e-14 on the float64 case), so floats compare within :data:`FLOAT32_RTOL` on float32
models and :data:`FLOAT64_RTOL` on float64 ones: far below any change a refactoring could
make by mistake (a changed formula moves a bound by percent)."""

from __future__ import annotations

import json
import math

import pytest

from .golden.cases import CASES, RECORDS, ROOT, arguments, comparable, prepare
from .processes import run_attrcert

PINNED = json.loads(RECORDS.read_text())
FLOAT32_RTOL = 1e-3
FLOAT64_RTOL = 1e-10


def differences(got: dict, want: dict, rtol: float) -> dict:
    """The fields of ``want`` that ``got`` does not match (floats within ``rtol``)."""
    def same(a: object, b: object) -> bool:
        if isinstance(a, float) and isinstance(b, float):
            return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-300)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        return a == b and type(a) is type(b)

    return {k: (got[k], want[k]) for k in want if not same(got[k], want[k])}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_records_equal_the_pinned_ones(name, files):
    done = run_attrcert(*arguments(name, files), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    fresh = comparable(json.loads(done.stdout))
    pinned = PINNED[name]
    assert len(fresh) == len(pinned)
    for got, want in zip(fresh, pinned, strict=True):
        assert sorted(got) == sorted(want), f"{name}: keys differ"
        rtol = FLOAT64_RTOL if "float64" in CASES[name] else FLOAT32_RTOL
        diff = differences(got, want, rtol)
        assert not diff, f"{name} {want['source']}: {diff}"


def test_the_comparison_catches_a_moved_number():
    want = PINNED["bound_ig_l2_folder"][0]
    moved = {**want, "T_e": want["T_e"] * 1.01}
    assert set(differences(moved, want, FLOAT32_RTOL)) == {"T_e"}
    flipped = {**want, "label_kept": not want["label_kept"]}
    assert set(differences(flipped, want, FLOAT32_RTOL)) == {"label_kept"}
    assert differences(dict(want), want, FLOAT64_RTOL) == {}
