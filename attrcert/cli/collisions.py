"""Refuse, before any work, an output file that is one of the run's inputs (or another of
its outputs): writing it would destroy the input (``--output`` = ``--labels``,
``--save-attributions`` = the IMAGES tensor file or the model's weights, ``merge`` into a
shard's own file or its configuration file). Paths are compared after resolving symbolic
links, and as files (:func:`os.path.samefile`: the same inode, also through hard links)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import OptionError
from ..loading import list_images

__all__ = ["refuse_collisions", "same_file"]


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same path once symbolic links are
    resolved, or (both existing) the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


Named = Sequence[tuple[str, "Path | None"]]


def _input_files(inputs: Named, out: Path) -> Iterable[tuple[str, Path]]:
    """The input files, one per input; a folder of images as its image files (listed only
    when ``out`` exists: a file that does not exist is no image of it)."""
    for name, path in inputs:
        if path is None:
            continue
        if not path.is_dir():
            yield name, path
        elif out.exists():
            try:
                files = list_images(path).files
            except Exception:
                continue
            for file in files:
                yield f"the image {file.name} of {name}", file


def refuse_collisions(outputs: Named, inputs: Named) -> None:
    """Raise :class:`OptionError` if an output (``(what, path)``) is an input (``(what,
    path)``, a folder standing for its images) or another output."""
    named = [(flag, path) for flag, path in outputs if path is not None]
    for i, (flag, out) in enumerate(named):
        for other, path in named[:i]:
            if same_file(out, path):
                raise OptionError(f"{flag} {out} is the same file as {other} {path}: give "
                                  "each output its own file")
        for name, path in _input_files(inputs, out):
            if same_file(out, path):
                raise OptionError(f"{flag} {out} is the same file as {name} {path}, which "
                                  "it would destroy: give another file name")
