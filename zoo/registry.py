"""The zoo, registry style: each architecture with what builds it at each input size, the
preprocessing its library records for it, and what attrcert supports on it.

The library entries are timm's and torchvision's own code, built as ``--arch`` builds them
(``pretrained=False``, nothing downloaded) and named as ``--arch`` names them. The
``torch.nn`` entries are what the libraries lack. ``tests/test_timm_zoo.py --slow`` checks
``nonsmooth`` and ``degenerate`` of every timm entry at its ``small`` size (bounds, attacks,
static exports, ``--arch``, ``--beta-smooth``); ``sound``, ``sound_smoothed`` and
``torchscript`` record one-off runs (``tests/test_sound_timm.py`` checks EfficientNet's
proof and the ViT's refusal).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

from .handwritten import ViT, maxpool_cnn, resnet

__all__ = ["IMAGENET", "INCEPTION", "ZOO", "Entry", "Pre", "entry"]

Builder = Callable[[int], nn.Module]  # classes -> model


@dataclass(frozen=True)
class Pre:
    """The evaluation preprocessing a library records (timm's pretrained config,
    torchvision's default weights' transforms): resize the shorter side to ``resize``
    (``interpolation``), centre-crop ``crop``, normalise by ``mean`` and ``std``."""

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _pre(resize: int, interpolation: str = "bicubic",
         stats: tuple[tuple[float, ...], tuple[float, ...]] = IMAGENET) -> Pre:
    mean, std = stats
    return Pre(resize, 224, interpolation, (mean[0], mean[1], mean[2]),
               (std[0], std[1], std[2]))


@dataclass(frozen=True)
class Entry:
    """One architecture of the zoo.

    Attributes:
        key: the zoo's name for it (``benchmarks/bench_zoo.py --archs``).
        family: what users call it (ResNet, ViT, ...).
        sizes: input side -> what builds it there: an ``--arch`` value
            (``timm:NAME(...)``, ``torchvision:NAME``) or a ``torch.nn`` builder taking
            the number of classes. ``small`` and ``224`` are always present.
        small: the conformance size (the tests' exports), 32 px unless the entry says.
        pre: the library's preprocessing for the 224 architecture (``None``: none, the
            ``torch.nn`` entries).
        nonsmooth: what ``attrcert inspect`` flags (``find_nonsmooth``'s names; empty:
            smooth).
        degenerate: the saliency Jacobian (the logit's Hessian) is zero almost everywhere:
            ``bound`` marks it ``degenerate`` and ``--beta-smooth`` is the way to a bound.
        sound: ``--sound`` on the model as it is: ``"proved"``, or what the refusal names
            first.
        sound_smoothed: ``--sound --beta-smooth`` on the non-smooth ones: the same.
        torchscript: ``torch.jit.trace`` of the model certifies (else refused, in one line).
        note: what else the table should say.
    """

    key: str
    family: str
    sizes: Mapping[int, str | Builder]
    pre: Pre | None
    nonsmooth: frozenset[str] = frozenset()
    degenerate: bool = False
    sound: str = "proved"
    sound_smoothed: str | None = None
    torchscript: bool = True
    small: int = 32
    note: str = ""

    @property
    def smooth(self) -> bool:
        return not self.nonsmooth

    @property
    def library(self) -> str:
        """``timm``, ``torchvision`` or ``torch.nn``."""
        first = self.sizes[224]
        return first.split(":", 1)[0] if isinstance(first, str) else "torch.nn"

    def arch(self, size: int) -> str | None:
        """The ``--arch`` value that builds it at ``size`` (``None``: a ``torch.nn``
        entry)."""
        how = self.sizes[size]
        return how if isinstance(how, str) else None


def _timm(key: str, family: str, small: str, large: str | None = None, *,
          pre: Pre, **supports: object) -> Entry:
    return Entry(key, family, {32: f"timm:{small}", 224: f"timm:{large or small}"}, pre,
                 **supports)  # type: ignore[arg-type]


RELU_MAXPOOL = frozenset({"ReLU", "max-pooling"})
LAYER_NORM = "LayerNorm"

#: Every architecture, timm's first (one of each family), then torchvision's, then what the
#: libraries lack.
ZOO: tuple[Entry, ...] = (
    _timm("resnet18", "ResNet", "resnet18", pre=_pre(235), nonsmooth=RELU_MAXPOOL,
          degenerate=True, sound="ReLU", sound_smoothed="proved"),
    _timm("efficientnet", "EfficientNet", "test_efficientnet", "efficientnet_b0",
          pre=_pre(256), note="SiLU, squeeze-excitation (in-place aten.silu_)"),
    _timm("convnext", "ConvNeXt", "convnext_atto", pre=_pre(256), sound=LAYER_NORM),
    _timm("vit", "ViT / DeiT", "vit_tiny_patch16_224(img_size=32, patch_size=8)",
          "vit_tiny_patch16_224", pre=_pre(248, stats=INCEPTION), sound=LAYER_NORM,
          note="deit_tiny_patch16_224 is the same VisionTransformer"),
    _timm("swin", "Swin", "swin_tiny_patch4_window7_224(img_size=32, window_size=4)",
          "swin_tiny_patch4_window7_224", pre=_pre(248), sound=LAYER_NORM),
    _timm("mixer", "MLP-Mixer", "mixer_s16_224(img_size=32)", "mixer_s16_224",
          pre=_pre(256, stats=INCEPTION), sound=LAYER_NORM),
    _timm("regnet", "RegNet", "regnety_002", pre=_pre(256), nonsmooth=frozenset({"ReLU"}),
          sound="ReLU", sound_smoothed="proved"),
    _timm("mobilenetv3", "MobileNetV3", "mobilenetv3_small_050", "mobilenetv3_large_100",
          pre=_pre(256), nonsmooth=frozenset({"ReLU", "Hardswish", "Hardsigmoid"}),
          sound="ReLU", sound_smoothed="proved"),
    _timm("levit", "LeViT", "levit_128s(img_size=32)", "levit_128s", pre=_pre(248),
          nonsmooth=frozenset({"Hardswish"}), sound="Hardswish", sound_smoothed="attention"),
    _timm("poolformer", "PoolFormer", "poolformer_s12", pre=_pre(248), sound="GroupNorm"),
    Entry("tv_resnet18", "ResNet (torchvision)",
          {32: "torchvision:resnet18", 224: "torchvision:resnet18"}, _pre(256, "bilinear"),
          RELU_MAXPOOL, degenerate=True, sound="ReLU", sound_smoothed="proved"),
    Entry("tv_mobilenet_v2", "MobileNetV2 (torchvision)",
          {32: "torchvision:mobilenet_v2", 224: "torchvision:mobilenet_v2"},
          _pre(232, "bilinear"), frozenset({"ReLU6"}), degenerate=True, sound="ReLU6",
          sound_smoothed="proved"),
    Entry("vit_nn", "ViT on nn.TransformerEncoderLayer",
          {8: lambda k: ViT(classes=k),
           32: lambda k: ViT(image=32, patch=4, dim=256, depth=7, heads=4, mlp=2, classes=k),
           224: lambda k: ViT(image=224, patch=16, dim=768, depth=12, heads=12, mlp=4,
                              classes=k)},
          None, sound=LAYER_NORM, small=8, torchscript=False,
          note="traced in eval mode it records the fused fast path, which has no "
               "derivative: refused in one line naming the remedy"),
    Entry("resnet_softplus", "ResNet with Softplus",
          {8: lambda k: resnet(classes=k),
           32: lambda k: resnet(("basic",) * 4, (2, 2, 2, 2), width=64, classes=k),
           224: lambda k: resnet(("bottleneck",) * 4, (3, 4, 6, 3), width=64,
                                 imagenet_stem=True, classes=k)},
          None, small=8, note="ResNet-18 (32 px) and ResNet-50 (224 px) shapes"),
    Entry("maxpool", "Softplus CNN with max-pooling",
          {8: lambda k: maxpool_cnn(classes=k), 32: lambda k: maxpool_cnn(32, k),
           224: lambda k: maxpool_cnn(32, k)},
          None, frozenset({"max-pooling"}), sound="max-pooling", small=8),
)


def entry(key: str) -> Entry:
    """The entry named ``key``."""
    for found in ZOO:
        if found.key == key:
            return found
    raise KeyError(f"no zoo entry {key!r}; known: {', '.join(e.key for e in ZOO)}")
