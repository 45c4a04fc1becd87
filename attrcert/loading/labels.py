"""Target classes from a CSV file ``name,label`` (``--labels``)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import torch
from torch import Tensor

from ..errors import InputError, one_line

_INTEGER = re.compile(r"-?[0-9]+\Z")


def load_labels(path: str | Path, sources: list[str], num_classes: int | None = None) -> Tensor:
    """Targets (int64, one per source) from a CSV with header ``name,label``.

    Names must match ``sources`` exactly (file names for a folder, ``"file[i]"`` for a
    tensor file); every image needs a label, every name must be an image, and labels must be
    integers in ASCII digits in ``0 .. num_classes - 1`` (``>= 0`` when ``num_classes`` is
    ``None``).

    Raises:
        InputError: with a one-line message naming the first offending name or row.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"labels file {path} does not exist")
    if not path.is_file():
        raise InputError(f"labels file {path} is not a regular file: give a CSV file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            if "name" not in header or "label" not in header:
                raise InputError(f"labels file {path} needs a header line with columns "
                                 f"name,label (found: {','.join(header) or 'nothing'})")
            i_name, i_label = header.index("name"), header.index("label")
            rows: dict[str, str] = {}
            for line, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) <= max(i_name, i_label):
                    raise InputError(f"{path} line {line}: expected name,label, got "
                                     f"{','.join(row)!r}")
                name, label = row[i_name].strip(), row[i_label].strip()
                if name in rows:
                    raise InputError(f"{path} line {line}: {name} is labelled twice")
                rows[name] = label
    except InputError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read labels {path} (need a CSV with columns name,label): "
                         f"{one_line(exc)}") from None
    known = set(sources)
    unknown = [name for name in rows if name not in known]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        example = f", e.g. {sources[0]}" if sources else ""
        raise InputError(f"{path} labels {unknown[0]}, which is not among the images{more}; "
                         f"names must match the image names exactly{example}")
    missing = [s for s in sources if s not in rows]
    if missing:
        raise InputError(f"{path} has no label for {missing[0]}"
                         + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    labels = []
    for name in sources:
        text = rows[name]
        if not _INTEGER.match(text):  # int() also takes "1_0", "+3" and non-ASCII digits
            raise InputError(f"{path}: the label of {name} is {text!r}, not an integer")
        value = int(text)
        if value < 0 or (num_classes is not None and value >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise InputError(f"{path}: the label of {name} is {value}, outside {bound}")
        labels.append(value)
    return torch.tensor(labels, dtype=torch.long)
