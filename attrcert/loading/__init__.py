"""Loading models, images and labels, by content rather than by file suffix.

- :mod:`~attrcert.loading.models`: :func:`load_model` for every model format, and what may
  be trusted (:mod:`~attrcert.loading.zipcheck` checks every zip index first;
  :mod:`~attrcert.loading.export_archive` reads ``.pt2`` archives without running code from
  them; :mod:`~attrcert.loading.torchscript_code` reads TorchScript code before torch
  compiles it; both allow only the pure operators of :mod:`~attrcert.loading.operators`;
  :mod:`~attrcert.loading.pickles`; :mod:`~attrcert.loading.arch` for ``--arch``);
- :mod:`~attrcert.loading.model_checks`: what a model's weights and logits must be;
- :mod:`~attrcert.loading.images`: :func:`load_images` (folders of PNG/JPEG, tensor files);
- :mod:`~attrcert.loading.labels`: :func:`load_labels`;
- :mod:`~attrcert.loading.normalization`: :func:`with_normalization`;
- :mod:`~attrcert.loading.formats`: :func:`sniff_model`, what a file holds.
"""

from .arch import WeightsConvertedWarning
from .formats import sniff_model
from .images import (
    IMAGE_SUFFIXES,
    Images,
    Listing,
    first_image_size,
    image_files,
    image_size,
    list_images,
    load_image_files,
    load_images,
    load_listed,
    read_image,
)
from .labels import load_labels
from .models import infer_input_channels, load_model
from .normalization import Normalized, with_normalization
from .pickles import UntrustedPickleWarning
from .tensors import VALUE_RANGES
from .transforms import PRESETS, Geometry, Preset

__all__ = [
    "IMAGE_SUFFIXES",
    "PRESETS",
    "VALUE_RANGES",
    "Geometry",
    "Images",
    "Listing",
    "Normalized",
    "Preset",
    "UntrustedPickleWarning",
    "WeightsConvertedWarning",
    "first_image_size",
    "image_files",
    "image_size",
    "infer_input_channels",
    "list_images",
    "load_image_files",
    "load_images",
    "load_labels",
    "load_listed",
    "load_model",
    "read_image",
    "sniff_model",
    "with_normalization",
]
