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


def _blocks(section: str) -> list[tuple[str, str]]:
    return re.findall(r"```(python|bash)\n(.*?)```", section, re.S)


def test_readme_your_model_section_runs_as_written(tmp_path, monkeypatch, capfd):
    """Every block of "Your model" in order, at 32 x 32 instead of 224 (the exports and the
    trace), each ``attrcert`` command with ``--size 32 32`` and saliency added (the
    preprocessing then resizes to the exports' size; one image, to keep it short)."""
    import json
    import shlex
    import sys

    import numpy as np
    import pytest
    from PIL import Image

    from attrcert.cli import main

    pytest.importorskip("timm")
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your model"):text.index("### Class folders")]
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "photos").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
        tmp_path / "photos" / "a.png")
    scope: dict = {}
    commands = []
    for kind, code in _blocks(section):
        if kind == "python" and code.startswith("# my_arch.py"):
            (tmp_path / "my_arch.py").write_text(code)
        elif kind == "python":
            exec(compile(code.replace("224", "32"), "README.md", "exec"), scope)
        else:
            for line in code.splitlines():
                argv = shlex.split(line)
                assert argv[0] == "attrcert", line
                extra = ["--size", "32", "32"]
                if argv[1] == "bound":
                    extra += ["--method", "saliency", "--quiet", "--format", "json"]
                with pytest.raises(SystemExit) as exc:
                    main(argv[1:] + extra)
                out, err = capfd.readouterr()
                assert exc.value.code in (0, None), f"{line}: {err}"
                commands.append((argv, out, err))
    assert sys.modules.get("my_arch") is not None  # the factory was imported by a block
    ran = {argv[2]: (argv, out, err) for argv, out, err in commands}
    assert set(ran) == {"model.pt2", "model_static.pt2", "convnext.safetensors",
                        "resnet18.pth", "weights.safetensors", "model.pt"}
    static = json.loads(ran["model_static.pt2"][1])
    assert static["config"]["static_batch"] == 1
    assert "static batch of 1" in ran["model_static.pt2"][2]
    dynamic = json.loads(ran["model.pt2"][1])
    assert "static_batch" not in dynamic["config"]
    assert static["samples"][0]["T_e"] == pytest.approx(dynamic["samples"][0]["T_e"],
                                                        rel=1e-4)
    timm_run = json.loads(next(out for argv, out, _ in commands
                               if argv[1] == "bound" and argv[2] == "convnext.safetensors"))
    assert timm_run["config"]["preset"] == "timm:convnext_atto"
    assert timm_run["config"]["geometry"]["interpolation"] == "bicubic"  # timm's, kept
