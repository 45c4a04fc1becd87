"""Architectures written as users write them (``torch.nn`` only): a ViT on
``nn.TransformerEncoderLayer`` (whose traced fast path has no derivative), ResNets with
Softplus or ReLU (basic and bottleneck blocks), a Softplus CNN whose only non-smooth
operation is max-pooling, and tiny look-alikes of the library families (Swin, MLP-Mixer,
ConvNeXt, EfficientNet, MobileNet) small enough to form their full Jacobians in the tests
(3 x 8 x 8 inputs, :data:`TINY`). Every builder takes the widths, so the same code gives
the realistic models of ``benchmarks/``. The libraries' own architectures are in
:mod:`zoo.registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class ViT(nn.Module):
    """ViT: patch embedding, class token, learned positions, pre-norm
    ``nn.TransformerEncoderLayer`` blocks (softmax attention, GELU MLP, LayerNorm)."""

    def __init__(self, image: int = 8, patch: int = 2, dim: int = 16, depth: int = 1,
                 heads: int = 2, mlp: int = 2, classes: int = 5) -> None:
        super().__init__()
        tokens = (image // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, tokens + 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, mlp * dim, dropout=0.0,
                                           activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        for p in self.encoder.parameters():  # the clones start equal: re-draw each
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        z = self.patch_embed(x).flatten(2).transpose(1, 2)
        z = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), z], dim=1) + self.pos_embed
        return self.head(self.norm(self.encoder(z)[:, 0]))


class WindowBlock(nn.Module):
    """Swin-style block: multi-head attention inside ``window x window`` patches of the
    token grid (cyclically shifted by ``shift``), then a GELU MLP; pre-norm, residual."""

    def __init__(self, dim: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, z: Tensor) -> Tensor:  # z: (N, H, W, C)
        n, h, w, c = z.shape
        s, k = self.shift, self.window
        y = torch.roll(self.norm1(z), (-s, -s), (1, 2)) if s else self.norm1(z)
        y = y.reshape(n, h // k, k, w // k, k, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, k * k, c)
        y = self.attn(y, y, y, need_weights=False)[0]
        y = y.reshape(n, h // k, w // k, k, k, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
        z = z + (torch.roll(y, (s, s), (1, 2)) if s else y)
        return z + self.mlp(self.norm2(z))


class Swin(nn.Module):
    """Patch embedding, pairs of window / shifted-window attention blocks, mean pooling."""

    def __init__(self, patch: int = 2, dim: int = 16, depth: int = 2, heads: int = 2,
                 window: int = 2, classes: int = 5) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.Sequential(*[WindowBlock(dim, heads, window, (i % 2) * window // 2)
                                      for i in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        z = self.blocks(self.patch_embed(x).permute(0, 2, 3, 1))
        return self.head(self.norm(z).mean(dim=(1, 2)))


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(),
                                       nn.Linear(token_hidden, tokens))
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(),
                                         nn.Linear(channel_hidden, dim))

    def forward(self, z: Tensor) -> Tensor:  # (N, T, C)
        z = z + self.token_mlp(self.norm1(z).transpose(1, 2)).transpose(1, 2)
        return z + self.channel_mlp(self.norm2(z))


class Mixer(nn.Module):
    """MLP-Mixer: token-mixing and channel-mixing GELU MLPs, LayerNorm, mean pooling."""

    def __init__(self, image: int = 8, patch: int = 2, dim: int = 16, depth: int = 1,
                 classes: int = 5) -> None:
        super().__init__()
        tokens = (image // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.Sequential(*[MixerBlock(tokens, dim, dim // 2, 4 * dim)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        z = self.blocks(self.patch_embed(x).flatten(2).transpose(1, 2))
        return self.head(self.norm(z).mean(dim=1))


# --- convolutional -----------------------------------------------------------------------

class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm over channels, 4x GELU MLP, layer scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(0.5 * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an ``(N, C, H, W)`` tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def convnext(dims: tuple[int, ...] = (8, 16), depths: tuple[int, ...] = (1, 1),
             stem: int = 2, classes: int = 5) -> nn.Module:
    """ConvNeXt: patchify stem, stages of blocks, LayerNorm + stride-2 downsampling."""
    layers: list[nn.Module] = [nn.Conv2d(3, dims[0], stem, stem), LayerNorm2d(dims[0])]
    for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
        if i:
            layers += [LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2)]
        layers += [ConvNeXtBlock(dim) for _ in range(depth)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(dims[-1]),
               nn.Linear(dims[-1], classes)]
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int, act: type[nn.Module],
                 gate: type[nn.Module]) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Conv2d(channels, squeezed, 1), act(),
                                nn.Conv2d(squeezed, channels, 1), gate())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(self.pool(x))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise conv, squeeze-excitation, 1x1
    projection (eval BatchNorm after each conv), residual when the shape allows."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4, kernel: int = 3,
                 act: type[nn.Module] = nn.SiLU, gate: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        mid = cin * expand
        expansion = ([nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), act()]
                     if expand != 1 else [])
        self.block = nn.Sequential(
            *expansion,
            nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid), act(),
            SqueezeExcite(mid, max(1, cin // 4), act, gate),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def efficientnet(stages: tuple[tuple[int, ...], ...] = ((8, 8, 1, 1, 4, 3),
                                                    (8, 16, 2, 1, 4, 3)),
                 stem: int = 8, head: int = 32, classes: int = 5,
                 act: type[nn.Module] = nn.SiLU, gate: type[nn.Module] = nn.Sigmoid
                 ) -> nn.Module:
    """EfficientNet-style: conv stem, MBConv stages ``(cin, cout, stride, repeats, expand,
    kernel)``, 1x1 head conv, average pooling (:data:`EFFICIENTNET_B0` is B0's layout).
    ``act=nn.Hardswish`` gives the MobileNetV3 flavour (:func:`mobilenet`)."""
    layers: list[nn.Module] = [nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem),
                               act()]
    for cin, cout, stride, repeats, expand, kernel in stages:
        for r in range(repeats):
            layers.append(MBConv(cin if r == 0 else cout, cout, stride if r == 0 else 1,
                                 expand=expand, kernel=kernel, act=act, gate=gate))
    last = stages[-1][1]
    layers += [nn.Conv2d(last, head, 1, bias=False), nn.BatchNorm2d(head), act(),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head, classes)]
    return nn.Sequential(*layers)


#: EfficientNet-B0's stages (stem 32, head 1280): ``(cin, cout, stride, repeats, expand,
#: kernel)``.
EFFICIENTNET_B0 = ((32, 16, 1, 1, 1, 3), (16, 24, 2, 2, 6, 3), (24, 40, 2, 2, 6, 5),
                   (40, 80, 2, 3, 6, 3), (80, 112, 1, 3, 6, 5), (112, 192, 2, 4, 6, 5),
                   (192, 320, 1, 1, 6, 3))


def mobilenet(gate: type[nn.Module] = nn.Sigmoid, **kwargs: object) -> nn.Module:
    """MobileNetV3-style: :func:`efficientnet` with Hardswish. MobileNetV3's own
    squeeze-excitation gate, ``gate=nn.Hardsigmoid``, cannot be differentiated twice by
    autograd (``aten.hardsigmoid_backward`` has no derivative): attrcert refuses it."""
    return efficientnet(act=nn.Hardswish, gate=gate, **kwargs)  # type: ignore[arg-type]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act = act()
        self.shortcut = _shortcut(cin, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResidualSoftplus(nn.Module):
    """A basic residual block: conv-BN-Softplus-conv-BN, plus the input, then Softplus."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.act = nn.Softplus()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        out = 4 * width
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.act = act()
        self.shortcut = _shortcut(cin, out, stride)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        return self.act(self.bn3(self.conv3(y)) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


def resnet(blocks: tuple[str, ...] = ("basic", "bottleneck"),
           layers: tuple[int, ...] = (1, 1), width: int = 8, act: type[nn.Module] = nn.Softplus,
           imagenet_stem: bool = False, classes: int = 5) -> nn.Module:
    """ResNet: stages of basic or bottleneck blocks (residual adds, eval BatchNorm),
    widths doubling per stage, average pooling. ``imagenet_stem``: 7x7/2 conv and a 3x3/2
    average pool (ResNet's max-pool made smooth); else a 3x3 conv."""
    stem: list[nn.Module] = ([nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                              act(), nn.AvgPool2d(3, 2, 1)] if imagenet_stem else
                             [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                              act()])
    body: list[nn.Module] = []
    cin = width
    for i, (kind, repeats) in enumerate(zip(blocks, layers, strict=True)):
        block = BasicBlock if kind == "basic" else Bottleneck
        w = width * 2**i
        for r in range(repeats):
            body.append(block(cin, w, 2 if (i and r == 0) else 1, act))
            cin = w * block.expansion
    return nn.Sequential(*stem, *body, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(cin, classes))


def maxpool_cnn(width: int = 8, classes: int = 5) -> nn.Module:
    """A Softplus CNN whose only non-smooth operation is its max-pooling."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.Softplus(), nn.MaxPool2d(2),
                         nn.Conv2d(width, 2 * width, 3, padding=1), nn.Softplus(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))


# --- the tiny zoo of the conformance suite -------------------------------------------------

@dataclass(frozen=True)
class Tiny:
    """A tiny zoo model: how to build it, and the non-smooth ops attrcert must report
    (human names as :func:`attrcert.find_nonsmooth` gives them; empty: smooth)."""

    name: str
    build: Callable[[], nn.Module]
    nonsmooth: frozenset[str] = frozenset()
    attention: bool = False

    @property
    def smooth(self) -> bool:
        return not self.nonsmooth


SHAPE = (3, 8, 8)
TINY: tuple[Tiny, ...] = (
    Tiny("vit", ViT, attention=True),
    Tiny("swin", Swin, attention=True),
    Tiny("mixer", Mixer),
    Tiny("convnext", convnext),
    Tiny("efficientnet", efficientnet),
    Tiny("mobilenet", mobilenet, frozenset({"Hardswish"})),
    Tiny("resnet_softplus", resnet),
    Tiny("resnet_relu", lambda: resnet(act=nn.ReLU), frozenset({"ReLU"})),
    Tiny("maxpool", maxpool_cnn, frozenset({"max-pooling"})),
)
