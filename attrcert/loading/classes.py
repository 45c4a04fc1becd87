"""Class folders as the model's class indices (:func:`folder_targets`).

The rule, for a model with ``k`` classes and images in class folders:

1. every folder named by an integer (``0/``, ``281/``): that integer is the class;
2. every folder named by a WordNet synset (``n01440764/``, ImageNet's layout) and ``k`` the
   size of an ImageNet release (1000: ImageNet-1k; 11221, 11821, 21841, 21842, 21843: the
   21k/22k/12k subsets timm knows): the synset's index in that release (timm's
   ``ImageNetInfo`` tables);
3. every folder named by an ImageNet class (``tench/``, ``tabby cat/``; case, ``_`` and
   ``-`` ignored; one of the comma-separated names of the class) and ``k`` the size of an
   ImageNet release: that class's index;
4. otherwise, the folders in sorted order of their names (torchvision's ``ImageFolder``),
   only when there are exactly ``k`` of them;
5. anything else is refused in one line that suggests ``--labels FILE.csv``: e.g. ``cat/``
   and ``dog/`` for a 1000-class model (no ImageNet class is called "cat"), whose sorted
   positions 0 and 1 are ImageNet's tench and goldfish.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["SYNSET", "FolderTargets", "folder_targets", "imagenet_subset"]

SYNSET = re.compile(r"^n\d{8}$")
#: timm's ImageNet releases by class count (``timm.data.infer_imagenet_subset``).
IMAGENET_SIZES = (1000, 11221, 11821, 21841, 21842, 21843)
_SUGGEST = "pass --labels FILE.csv (name,label rows) to give each image's class"


@dataclass(frozen=True)
class FolderTargets:
    """The targets of class folders and the rule that gave them.

    Attributes:
        targets: ``(N,)`` int64 class indices, one per image.
        rule: ``"integers"``, ``"sorted"``, or ``"<release> synsets"`` /
            ``"<release> names"`` (e.g. ``"imagenet-1k synsets"``).
    """

    targets: Tensor
    rule: str


def _timm_info(subset: str, why: str) -> Any:
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        raise InputError(f"{why} needs timm's ImageNet tables, and timm is not installed: "
                         "pip install timm") from None
    return ImageNetInfo(subset)


def imagenet_subset(classes: int) -> str | None:
    """timm's name of the ImageNet release with ``classes`` classes, else ``None``."""
    if classes not in IMAGENET_SIZES:
        return None
    try:
        from timm.data import infer_imagenet_subset
    except ImportError:
        return {1000: "imagenet-1k"}.get(classes, f"imagenet ({classes} classes)")
    return infer_imagenet_subset({"num_classes": classes})


def _normal(name: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", name).lower().split())


def _by_name(names: list[str], info: Any) -> dict[str, int] | str:
    """Folder name -> class index by ImageNet's class names; or the first folder name that
    matches no class, or several (``crane``: a bird and a machine)."""
    index: dict[str, set[int]] = {}
    for i, description in enumerate(info.label_descriptions()):
        for synonym in description.split(","):
            index.setdefault(_normal(synonym), set()).add(i)
    found = {}
    for name in names:
        hits = index.get(_normal(name), set())
        if len(hits) != 1:
            return name
        found[name] = next(iter(hits))
    return found


def folder_targets(classes: list[str], sources: list[str], k: int,
                   folder: Path | str) -> FolderTargets:
    """The class index of every image of a folder of class folders (the rule above).

    Args:
        classes: the class folders' names.
        sources: ``class/file`` per image (the class is the part before the first ``/``).
        k: the model's number of classes.
        folder: the images folder, for messages.

    Raises:
        InputError: folders that cannot be mapped to the model's classes, naming one.
    """
    per_file = [source.partition("/")[0] for source in sources]
    subset = imagenet_subset(k)
    if all(n.isascii() and n.isdigit() for n in classes):
        values = [int(n) for n in per_file]
        top = max(values)
        if top >= k:
            where = sources[values.index(top)]
            raise InputError(f"{folder}: the class folder of {where} means class {top}, but "
                             f"the model has {k} classes (0..{k - 1}): {_SUGGEST}")
        return FolderTargets(torch.tensor(values, dtype=torch.long), "integers")
    if subset is not None and all(SYNSET.match(n) for n in classes):
        info = _timm_info(subset, f"{folder}: mapping synset folders to the {subset} classes")
        synsets = {name: i for i, name in enumerate(info.label_names())}
        unknown = [n for n in classes if n not in synsets]
        if unknown:
            raise InputError(f"{folder}: the class folder {unknown[0]} is not a synset of "
                             f"{subset} (the model has {k} classes): {_SUGGEST}")
        return FolderTargets(torch.tensor([synsets[n] for n in per_file], dtype=torch.long),
                             f"{subset} synsets")
    matched: dict[str, int] | str = "" if subset is None else _by_name(
        classes, _timm_info(subset, f"{folder}: matching class folders to {subset} names"))
    if isinstance(matched, dict):
        return FolderTargets(torch.tensor([matched[n] for n in per_file], dtype=torch.long),
                             f"{subset} names")
    if len(classes) == k:
        order = {name: i for i, name in enumerate(sorted(classes))}
        return FolderTargets(torch.tensor([order[n] for n in per_file], dtype=torch.long),
                             "sorted")
    listed = ", ".join(f"{n}/" for n in sorted(classes)[:3]) + (" ..." if len(classes) > 3
                                                                else "")
    if subset is not None:
        why = (f"{matched}/ is not the name of one {subset} class, and {len(classes)} "
               f"folders are not the model's {k} classes in order")
        hint = f"name the folders by synset (n01440764) or class index (0..{k - 1}), or "
    else:
        why = (f"{len(classes)} folders are not the model's {k} classes, so their sorted "
               "order means nothing")
        hint = "name the folders by class index (0, 1, ...), or "
    raise InputError(f"{folder}: cannot tell the classes of the class folders ({listed}): "
                     f"{why}; {hint}{_SUGGEST}")
