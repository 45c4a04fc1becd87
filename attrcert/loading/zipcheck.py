"""Zip archives (``.pt2``, TorchScript, ``torch.save``) checked before anything in them is
decompressed or handed to torch, so that a small file cannot claim huge memory or time.

:func:`zip_problem` reads only the central directory and each entry's 30-byte local header.
It refuses:

- two entries of one name (torch's reader and Python's pick different ones);
- entries that overlap, or reach past the start of the central directory: an index that
  names one deflated entry many times makes every name expand the same bytes again;
- a compression other than stored or deflate; a stored entry whose two sizes differ;
- a deflated entry that claims more than :data:`MAX_RATIO` times its compressed size, or
  declared sizes that add up to more than :data:`MAX_RATIO` times the file.

Stored entries (torch's tensors) are at most the file's size, so the total that an archive
may expand to is at most ``MAX_RATIO`` times its size on disk.
"""

from __future__ import annotations

import itertools
import struct
import zipfile
from pathlib import Path

__all__ = ["MAX_RATIO", "zip_problem"]

#: The most a deflated entry may expand, and all entries together relative to the file.
#: Deflate reaches ~1000x on repeated bytes; code and JSON reach ~10x.
MAX_RATIO = 64
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_MAGIC = b"PK\x03\x04"


def zip_problem(path: Path) -> str | None:
    """What makes the zip archive at ``path`` unsafe to read, or ``None``.

    Nothing is decompressed. A file that is not a zip archive at all is ``"not a zip
    archive"``.
    """
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as zf, path.open("rb") as fh:
            infos = zf.infolist()
            end = getattr(zf, "start_dir", size)
            return _entries_problem(infos, fh, end, size)
    except zipfile.BadZipFile as exc:
        return f"not a zip archive ({exc})"
    except (OSError, ValueError, EOFError, struct.error) as exc:
        return f"a corrupt zip archive ({exc.__class__.__name__}: {exc})"


def _entries_problem(infos: list[zipfile.ZipInfo], fh, end: int, size: int) -> str | None:
    seen: set[str] = set()
    spans: list[tuple[int, int, str]] = []
    total = 0
    for info in infos:
        name = info.filename
        if name in seen:
            return f"the entry {name[:80]!r} appears twice in its index"
        seen.add(name)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            return f"the entry {name[:80]!r} uses compression method {info.compress_type}"
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            return (f"the stored entry {name[:80]!r} declares {info.file_size} bytes but holds "
                    f"{info.compress_size}")
        if info.file_size > MAX_RATIO * max(info.compress_size, 1):
            return (f"the entry {name[:80]!r} would expand {info.compress_size} bytes to "
                    f"{info.file_size} (a zip bomb?)")
        total += info.file_size
        start = info.header_offset
        fh.seek(start)
        header = fh.read(_LOCAL.size)
        if len(header) < _LOCAL.size or header[:4] != _LOCAL_MAGIC:
            return f"the entry {name[:80]!r} has no local header where its index says"
        name_len, extra_len = _LOCAL.unpack(header)[-2:]
        stop = start + _LOCAL.size + name_len + extra_len + info.compress_size
        if stop > end:
            return f"the entry {name[:80]!r} reaches past the end of the archive's data"
        spans.append((start, stop, name))
    spans.sort()
    for (_, stop, first), (start, _, second) in itertools.pairwise(spans):
        if start < stop:
            return f"the entries {first[:60]!r} and {second[:60]!r} overlap (a zip bomb?)"
    if total > MAX_RATIO * max(size, 1):
        return (f"its entries declare {total} bytes in all from a file of {size} bytes "
                "(a zip bomb?)")
    return None
