"""The value objects (attrcert.settings) and the keywords they stand for give the same records."""

from __future__ import annotations

import pytest
import torch

from attrcert import AttackOptions, AttributionSpec, SolverOptions, certify, max_eps
from attrcert.errors import OptionError

from .models import make_cnn


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return make_cnn(), torch.rand(2, 1, 6, 6, dtype=torch.float64)


def _strip(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_value_objects_and_keywords_give_identical_records(batch):
    model, x = batch
    by_keywords = certify(model, x, eps=0.1, method="integrated_gradients", steps=4,
                          spectral="iterative", tol=1e-6, verify=True, attack_steps=3,
                          seed=1)
    by_objects = certify(model, x, eps=0.1,
                         attribution=AttributionSpec("integrated_gradients", steps=4),
                         solver=SolverOptions(spectral="iterative", tol=1e-6),
                         attack=AttackOptions(steps=3, seed=1))
    assert _strip(by_keywords) == _strip(by_objects)
    assert by_objects[0]["attack_checked"] is True


def test_keywords_override_the_objects_fields(batch):
    model, x = batch
    (rec,) = max_eps(model, x[:1], omega=0.1, attribution=AttributionSpec(steps=50),
                     steps=3, method="saliency")
    assert rec["method"] == "saliency"


def test_unknown_keyword_is_a_type_error_and_bad_values_are_option_errors(batch):
    model, x = batch
    with pytest.raises(TypeError, match="unexpected keyword argument 'stpes'"):
        certify(model, x, eps=0.1, stpes=3)
    for bad in (lambda: AttributionSpec(method="lrp"), lambda: AttributionSpec(steps=0),
                lambda: SolverOptions(tol=2.0), lambda: SolverOptions(batch_size=0),
                lambda: AttackOptions(restarts=0),
                lambda: AttributionSpec(method="saliency", baseline=torch.zeros(1))):
        with pytest.raises(OptionError):
            bad()
