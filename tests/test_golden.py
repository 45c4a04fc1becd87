"""The records on the sample models equal the pinned ones (tests/golden/records.json), field
by field and bit for bit (all fields but ``seconds`` and ``config_hash``): refactoring must
not change a number. Regenerate with ``python -m tests.golden.cases`` only for a change
that is meant to move results, and say why in the commit."""

from __future__ import annotations

import json

import pytest

from .golden.cases import CASES, RECORDS, ROOT, arguments, comparable, prepare
from .processes import run_attrcert

PINNED = json.loads(RECORDS.read_text())


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
        diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        assert not diff, f"{name} {want['source']}: {diff}"
