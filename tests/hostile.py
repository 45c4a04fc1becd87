"""Hostile model files, built from the sample model by the tests (never committed).

Each tampered archive would run ``touch MARKER`` (or reach past its storage, or name an
unsafe path) if attrcert let torch load it as torch does; the tests check that the marker
never appears.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .conftest import SAMPLES

SAMPLE_PT2 = SAMPLES / "digits_softplus.pt2"
ROOT = "digits_softplus/"


class Payload:
    """Unpickling this runs ``touch <marker>`` through :func:`os.system`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def pickled(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


Edit = Callable[[dict[str, bytes]], None]


def rewrite(dst: Path, edit: Edit, src: Path = SAMPLE_PT2) -> Path:
    """A copy of ``src`` whose entries (names without the root folder -> bytes) ``edit``
    changed in place."""
    with zipfile.ZipFile(src) as zf:
        entries = {name[len(ROOT):]: zf.read(name) for name in zf.namelist()}
    edit(entries)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name if name.startswith("/") or ".." in name else ROOT + name, data)
    return dst


def edit_json(name: str, change: Callable[[Any], None]) -> Edit:
    def edit(entries: dict[str, bytes]) -> None:
        obj = json.loads(entries[name])
        change(obj)
        entries[name] = json.dumps(obj).encode()
    return edit


WEIGHTS = "data/weights/model_weights_config.json"
CONSTANTS = "data/constants/model_constants_config.json"
PROGRAM = "models/model.json"


def pickled_weight(marker: Path) -> Edit:
    """Weight ``0.weight`` marked ``use_pickle`` and its file a pickle that runs code."""
    def edit(entries: dict[str, bytes]) -> None:
        edit_json(WEIGHTS, lambda c: c["config"]["0.weight"].update(use_pickle=True))(entries)
        entries["data/weights/weight_0"] = pickled(Payload(marker))
    return edit


def benign_pickled_weight() -> Edit:
    """Weight ``0.weight`` marked ``use_pickle``, its file the real tensor, pickled."""
    def edit(entries: dict[str, bytes]) -> None:
        config = json.loads(entries[WEIGHTS])
        config["config"]["0.weight"]["use_pickle"] = True
        entries[WEIGHTS] = json.dumps(config).encode()
        raw = torch.frombuffer(bytearray(entries["data/weights/weight_0"]), dtype=torch.float32)
        entries["data/weights/weight_0"] = pickled(torch.nn.Parameter(raw.view(8, 1, 5, 5)))
    return edit


def opaque_constant(marker: Path) -> Edit:
    """An opaque constant (which torch reads with ``pickle.loads``)."""
    def edit(entries: dict[str, bytes]) -> None:
        entries[CONSTANTS] = json.dumps({"config": {"evil": {
            "path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
            "tensor_meta": None}}}).encode()
        entries["data/constants/opaque_obj_0"] = pickled(Payload(marker))
    return edit


def pickled_sample_inputs(marker: Path) -> Edit:
    """Sample inputs that run code when unpickled (torch falls back to weights_only=False)."""
    def edit(entries: dict[str, bytes]) -> None:
        entries["data/sample_inputs/model.pt"] = pickled(Payload(marker))
    return edit


def _first_expr(program: Any) -> dict:
    return program["graph_module"]["graph"]["tensor_values"]["input"]["sizes"][0]["as_expr"]


def sympy_expression(marker: Path) -> Edit:
    """A shape expression, which torch evaluates with ``sympy.sympify``."""
    code = f"__import__('os').system('touch {marker}')"
    return edit_json(PROGRAM, lambda p: _first_expr(p).update(expr_str=code))


def guards_code(marker: Path) -> Edit:
    code = f"__import__('os').system('touch {marker}')"
    return edit_json(PROGRAM, lambda p: p.update(guards_code=[code]))


def node_target(marker: Path) -> Edit:
    """The first node calls ``torch.os.system`` (found by ``getattr`` from ``torch``)."""
    def change(p: Any) -> None:
        node = p["graph_module"]["graph"]["nodes"][0]
        node["target"] = "torch.os.system"
    return edit_json(PROGRAM, change)


def forward_arg_name(marker: Path) -> Edit:
    code = f"x=__import__('os').system('touch {marker}')"
    return edit_json(PROGRAM, lambda p: p["graph_module"]["module_call_graph"][0]["signature"]
                     .update(forward_arg_names=[code]))


def parameter_name(marker: Path) -> Edit:
    code = f'w") or __import__("os").system("touch {marker}") or getattr(self, "w'

    def change(p: Any) -> None:
        spec = p["graph_module"]["signature"]["input_specs"][0]["parameter"]
        spec["parameter_name"] = code
    return edit_json(PROGRAM, change)


def native_code() -> Edit:
    def edit(entries: dict[str, bytes]) -> None:
        entries["data/aotinductor/model/model.so"] = b"\x7fELF"
    return edit


def legacy_weights() -> Edit:
    def edit(entries: dict[str, bytes]) -> None:
        entries["data/weights/model.pt"] = pickled({"0.weight": torch.ones(1)})
    return edit


def legacy_format(marker: Path) -> Edit:
    def edit(entries: dict[str, bytes]) -> None:
        entries.clear()
        entries["version"] = b"8.0"
        entries["serialized_exported_program.json"] = b"{}"
        entries["serialized_state_dict.pt"] = pickled(Payload(marker))
    return edit


def traversal() -> Edit:
    def edit(entries: dict[str, bytes]) -> None:
        entries["../../escaped.txt"] = b"x"
    return edit


def oversize_weight() -> Edit:
    return edit_json(WEIGHTS, lambda c: c["config"]["0.weight"]["tensor_meta"]["sizes"]
                     .__setitem__(3, {"as_int": 500}))


def far_offset() -> Edit:
    return edit_json(WEIGHTS, lambda c: c["config"]["0.weight"]["tensor_meta"].update(
        storage_offset={"as_int": 10**9}))


def missing_record() -> Edit:
    def edit(entries: dict[str, bytes]) -> None:
        del entries["data/weights/weight_2"]
    return edit


def other_version() -> Edit:
    def edit(entries: dict[str, bytes]) -> None:
        entries["archive_version"] = b"7"
    return edit


#: name -> (builder taking the marker path, words the one-line error must hold)
REFUSED: dict[str, tuple[Callable[[Path], Edit], tuple[str, ...]]] = {
    "pickled_weight": (pickled_weight, ("weight 0.weight", "use_pickle", "--trust-pickle")),
    "opaque_constant": (opaque_constant, ("constant evil", "--trust-pickle")),
    "sympy_expression": (sympy_expression, ("shape expression", "--trust-pickle")),
    "guards_code": (guards_code, ("guards_code", "--trust-pickle")),
    "node_target": (node_target, ("torch.os.system", "--trust-pickle")),
    "forward_arg_name": (forward_arg_name, ("forward_arg_names", "--trust-pickle")),
    "parameter_name": (parameter_name, ("attribute", "--trust-pickle")),
    "native_code": (lambda m: native_code(), ("aotinductor", "native code")),
    "legacy_weights": (lambda m: legacy_weights(), ("data/weights/model.pt", "pickled")),
    "legacy_format": (legacy_format, ("pre-2.7", "--trust-pickle")),
}
CORRUPT: dict[str, tuple[Callable[[], Edit], tuple[str, ...]]] = {
    "traversal": (traversal, ("not a safe archive path",)),
    "oversize_weight": (oversize_weight, ("0.weight", "bytes but its record holds")),
    "far_offset": (far_offset, ("0.weight", "bytes but its record holds")),
    "missing_record": (missing_record, ("missing record",)),
    "other_version": (other_version, ("archive version",)),
}
