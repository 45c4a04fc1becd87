"""Hostile model code, built by the tests (never committed): TorchScript modules whose code
writes a file, prints, loops forever or keeps state; ``.pt2`` programs that print, loop or
draw random numbers; zip archives whose index lies. The file-writing ones write into a
``target`` file of a temporary folder, which the tests check is left untouched.
"""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

#: What the file-writing models write into their target: ``fill_`` of the first 4 bytes.
ORIGINAL = b"untouched target file\n"


def _head(x: Tensor) -> Tensor:
    return x.flatten(1)[:, :3]


class FromFileForward(nn.Module):
    """``torch.from_file(path, shared=True)`` in ``forward``: overwrites the file's start."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: Tensor) -> Tensor:
        t = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8)
        t.fill_(65)
        return _head(x) + t[:3].float() * 0


class FromFileSetstate(nn.Module):
    """The same writer in ``__setstate__``, which ``torch.jit.load`` runs."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: Tensor) -> Tensor:
        return _head(x)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        t = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8)
        t.fill_(66)
        self.training = bool(t[0] > 0) and state[1]


class Printer(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        print("hello from the model")
        return _head(x)


class WhileTrue(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        i = 0
        while True:
            i += 1
            if i < 0:
                break
        return _head(x)


class BatchLoop(nn.Module):
    """A loop over the batch size: ``expand`` makes that 1e15 for free."""

    def forward(self, x: Tensor) -> Tensor:
        y = _head(x)
        for _ in range(x.shape[0]):
            y = y + 1
        return y


class TensorRows(nn.Module):
    """A loop over a tensor's rows: ``torch.len`` of a tensor, which ``expand`` makes 1e15."""

    def forward(self, x: Tensor) -> Tensor:
        y = _head(x)
        for row in x:
            y = y + row.sum()
        return y


class HugeLoop(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        y = _head(x)
        for _ in range(1_000_000_000):
            y = y + 1
        return y


class Counter(nn.Module):
    """Keeps state between calls: each call returns other logits."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return _head(x) + self.calls


class ListLoops(nn.Module):
    """Ordinary scripted code: loops over a list (one with an early exit, which TorchScript
    writes as a ``while`` loop), a constant loop, a helper method."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 5)

    def helper(self, y: Tensor) -> Tensor:
        return torch.tanh(y)

    def forward(self, x: Tensor) -> Tensor:
        y = self.lin(x.flatten(1))
        parts = torch.unbind(y, 1)
        acc = torch.zeros_like(parts[0])
        for p in parts:
            acc = acc + p
        for p in parts:
            if bool((p > 1e9).all()):
                break
            acc = acc + 0.5 * p
        for _ in range(3):
            y = y + acc[:, None] * 0.1
        return self.helper(y)


def scripted(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def edit_code(path: Path, old: str, new: str) -> Path:
    """Replace ``old`` by ``new`` in the archive's code (as a hostile file's author would:
    ``torch.jit.script`` itself drops calls whose results are unused)."""
    with zipfile.ZipFile(path) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist()}
    done = False
    for name, data in entries.items():
        if name.endswith(".py") and old.encode() in data:
            entries[name], done = data.replace(old.encode(), new.encode()), True
    assert done, old
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def aten_printer(path: Path) -> Path:
    """``ops.aten._print`` in ``forward`` (written into the code of a printing module)."""
    return edit_code(scripted(Printer(), path), 'print("hello from the model")',
                     'ops.aten._print("hello from the model")')


TORCHSCRIPT = {  # name -> (builder(target, path) -> path, words the refusal holds)
    "from_file_forward": (lambda t, p: scripted(FromFileForward(str(t)), p),
                          ("from_file", "forward")),
    "from_file_setstate": (lambda t, p: scripted(FromFileSetstate(str(t)), p),
                           ("__setstate__",)),
    "print": (lambda t, p: scripted(Printer(), p), ("print",)),
    "aten_print": (lambda t, p: aten_printer(p), ("_print",)),
    "while_true": (lambda t, p: scripted(WhileTrue(), p), ("loop", "while")),
    "batch_loop": (lambda t, p: scripted(BatchLoop(), p), ("loop",)),
    "huge_loop": (lambda t, p: scripted(HugeLoop(), p), ("calls",)),
    "tensor_rows": (lambda t, p: scripted(TensorRows(), p), ("loop", "torch.len(x)")),
    "counter": (lambda t, p: scripted(Counter(), p), ("attribute", "self.calls")),
}


# --------------------------------------------------------------------------- .pt2 programs


class ExportPrint(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        torch.ops.aten._print("hello from the model")
        return _head(x)


class ExportWhile(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        from torch._higher_order_ops import while_loop

        def cond(i: Tensor, y: Tensor) -> Tensor:
            return i < 10**15

        def body(i: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            return i + 1, y + 1

        _, y = while_loop(cond, body, (torch.tensor(0), x.reshape(x.shape[0], -1)[:, :3] * 1))
        return y


class ExportRand(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _head(x) + torch.rand(1, 3)


class ExportDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(_head(x))


def exported(module: nn.Module, path: Path, shape: tuple[int, ...] = (1, 1, 8, 8)) -> Path:
    torch.export.save(torch.export.export(module, (torch.zeros(shape),)), str(path))
    return path


EXPORT = {  # name -> (module builder, words)
    "aten_print": (ExportPrint, ("aten._print",)),
    "while_loop": (ExportWhile, ("while_loop",)),
    "rand": (ExportRand, ("aten.rand",)),
    "dropout_train": (lambda: ExportDropout().train(), ("dropout", "random")),
}


# --------------------------------------------------------------------------- lying zip indexes


def _eocd(data: bytes) -> int:
    return data.rindex(b"PK\x05\x06")


def zip_with_central(entries: list[tuple[str, bytes]], rewrite) -> bytes:
    """A zip of ``entries`` (deflated) whose central directory records ``rewrite`` maps to
    new lists of records (each record: a dict of its fields), counts and offsets fixed."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    raw = buffer.getvalue()
    end = _eocd(raw)
    count, _, start = struct.unpack("<HII", raw[end + 10:end + 20])
    records, pos = [], start
    fmt = struct.Struct("<4s6H3I5H2I")
    for _ in range(count):
        fields = list(fmt.unpack(raw[pos:pos + fmt.size]))
        n, m, k = fields[10], fields[11], fields[12]
        name = raw[pos + fmt.size:pos + fmt.size + n]
        extra = raw[pos + fmt.size + n:pos + fmt.size + n + m + k]
        records.append({"fields": fields, "name": name, "extra": extra})
        pos += fmt.size + n + m + k
    out = []
    for record in rewrite(records):
        fields = record["fields"]
        fields[10] = len(record["name"])
        out.append(fmt.pack(*fields) + record["name"] + record["extra"])
    central = b"".join(out)
    tail = bytearray(raw[end:end + 22])
    struct.pack_into("<HHII", tail, 8, len(out), len(out), len(central), start)
    return raw[:start] + central + bytes(tail)


def one_entry_many_names(copies: int = 500) -> bytes:
    """A ``torch.save``-like archive (``m/data.pkl``) whose index names one deflated entry
    ``copies`` times: each name expands the same bytes again."""
    payload = bytes(range(256)) * 64  # 16 KiB that deflate barely shrinks: no ratio alarm

    def rewrite(records):
        pickle, data = records
        return [pickle, *({"fields": list(data["fields"]), "name": f"m/data/{i:05d}".encode(),
                           "extra": data["extra"]} for i in range(copies))]
    return zip_with_central([("m/data.pkl", b"\x80\x02}q\x00."), ("m/data/00000", payload)],
                            rewrite)


def duplicate_names() -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as zf:
        warnings.simplefilter("ignore")  # "Duplicate name": the point of this file
        zf.writestr("m/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("m/data.pkl", b"\x80\x02}q\x00.")
    return buffer.getvalue()


def declared_size(size: int) -> bytes:
    """A ``torch.save``-like archive whose deflated ``data.pkl`` claims ``size`` bytes."""
    def rewrite(records):
        records[0]["fields"][9] = size  # uncompressed size
        return records
    return zip_with_central([("m/data.pkl", b"\x80\x02}q\x00." + b" " * 1000)], rewrite)
