"""The README's Python API example runs as written (the redesign kept it true)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_api_example_runs_as_written(monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # our own README's example
    assert len(scope["records"]) == 4 and scope["records"][0]["T_e"] > 0
    assert scope["checked"][0]["attack_checked"] is True
    assert scope["checked"][0]["method"] == "integrated_gradients"
    assert scope["J"].shape == (1, 784, 784)
    assert scope["limits"][0]["eps_max"] > 0
