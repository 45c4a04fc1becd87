"""The command line's options, declared once: enums, the ``Annotated`` option types, the
:class:`CommandOptions` options of the commands that certify, and :func:`common_options`, the
decorator that adds them to a command's signature (so no command repeats them)."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..attributions import METHODS
from ..bounds import METRICS
from ..loading import PRESETS, VALUE_RANGES, Geometry
from ..proposition1 import LABEL_GRADIENTS
from ..settings import AttackOptions, SolverOptions
from ..sizing import SPECTRAL
from .preprocessing import Preprocessing, resolve_preprocessing

MAX_SIDE = 16384  #: --size H W: larger sides are surely typos (and would exhaust memory)
MAX_INT = 2**31 - 1


def finite(value: float | None) -> float | None:
    """Option callback: NaN and infinities are not numbers a user means."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def fraction(value: float) -> float:
    """Option callback: a number in the open interval (0, 1)."""
    if not (math.isfinite(value) and 0 < value < 1):
        raise typer.BadParameter(f"{value} must be a finite number in (0, 1)")
    return value


def positive(value: float | None) -> float | None:
    """Option callback: a finite number > 0 (or not given)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} must be a finite number > 0")
    return value


def image_size(value: tuple[int, int] | None) -> tuple[int, int] | None:
    if value is not None and not all(1 <= v <= MAX_SIDE for v in value):
        raise typer.BadParameter(f"{value[0]} {value[1]}: each side must lie in 1..{MAX_SIDE}")
    return value


# The choices Typer offers, written out so that mypy checks every use; each equals the list
# the library defines (METHODS, METRICS, ...), which tests/test_cli_enums.py checks.
class Method(str, Enum):
    integrated_gradients = "integrated_gradients"
    saliency = "saliency"
    input_x_gradient = "input_x_gradient"


class Format(str, Enum):
    table = "table"
    json = "json"


class Metric(str, Enum):
    euclidean = "euclidean"
    cosine = "cosine"
    angle = "angle"


class DType(str, Enum):
    float32 = "float32"
    float64 = "float64"


class LabelGradient(str, Enum):
    completeness = "completeness"
    attribution = "attribution"


class Spectral(str, Enum):
    auto = "auto"
    full = "full"
    iterative = "iterative"


class PresetName(str, Enum):
    imagenet = "imagenet"
    cifar10 = "cifar10"


class InputRange(str, Enum):
    unit = "unit"
    range_255 = "255"
    any = "any"


#: Each enum of the command line and the library's list it offers.
CHOICES: dict[type[Enum], tuple[str, ...]] = {
    Method: tuple(METHODS), Format: ("table", "json"), Metric: tuple(METRICS),
    DType: ("float32", "float64"), LabelGradient: tuple(LABEL_GRADIENTS),
    Spectral: tuple(SPECTRAL), PresetName: tuple(PRESETS), InputRange: tuple(VALUE_RANGES),
}


ModelArg = Annotated[Path, typer.Argument(
    help="Model: torch.export .pt2, TorchScript .pt, or weights (safetensors / state dict) "
    "with --arch.", show_default=False)]
ImagesArg = Annotated[Path, typer.Argument(
    help="Images: a folder of PNG/JPEG (sorted by name) or one tensor file (.pt, .npy, "
    ".safetensors) of shape (N, C, H, W) or (C, H, W), values in [0, 1].",
    show_default=False)]
NormOpt = Annotated[str, typer.Option(help="Norm of the perturbation: 2, inf, or any p >= 1.")]
EpsOpt = Annotated[float, typer.Option(
    callback=finite, help="Radius of the perturbation ball, in pixel units of the images as "
    "loaded ([0, 1]).")]
FormatOpt = Annotated[Format, typer.Option(
    help="table for people; json prints one JSON document on stdout and nothing else.")]
SizeOpt = Annotated[tuple[int, int] | None, typer.Option(
    help="Resize images to H W.", show_default=False, callback=image_size)]
ArchOpt = Annotated[str | None, typer.Option(
    help="What builds the model for a weights file: timm:NAME or torchvision:NAME (the "
    "library's architecture, untrained, sized from the weights; its preprocessing unless "
    "--preset/--mean/--std/--size/--resize/--crop say otherwise), or module:factory / "
    "file.py:factory (this imports and runs that Python code, by design: name only code "
    "you trust).")]
MeanOpt = Annotated[str | None, typer.Option(
    help="Per-channel mean, e.g. 0.485,0.456,0.406: folded into the model so eps stays in "
    "pixel units.")]
StdOpt = Annotated[str | None, typer.Option(help="Per-channel std, e.g. 0.229,0.224,0.225.")]
PresetOpt = Annotated[PresetName | None, typer.Option(
    help="The input pipeline a model family expects: imagenet = resize the shorter side to "
    "256, centre-crop 224, ImageNet mean/std; cifar10 = CIFAR-10 mean/std. --mean, --std, "
    "--size, --resize and --crop override its parts. Default: the library's for --arch "
    "timm:NAME / torchvision:NAME, else none.", show_default=False)]
ResizeOpt = Annotated[int | None, typer.Option(
    min=1, max=MAX_SIDE, help="Resize so that the shorter side is this long, keeping the "
    "aspect ratio (torchvision's Resize(int)).", show_default=False)]
CropOpt = Annotated[tuple[int, int] | None, typer.Option(
    help="Then centre-crop H W (torchvision's CenterCrop).", show_default=False,
    callback=image_size)]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-code", "--trust-pickle", help="Load a model file that attrcert cannot check: a "
    "pickle, or an archive calling operators outside attrcert's allowlist (files, print, "
    "randomness, unbounded loops). This RUNS CODE from the file. --trust-pickle is the old "
    "name.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
LabelGradOpt = Annotated[LabelGradient, typer.Option(
    help="Proposition 1's a_y': from class gradients (completeness, docs/math.md §4) or "
         "through the attribution (one second-order pass per class).")]
RequireVerifiedOpt = Annotated[bool, typer.Option(
    help="Exit 1 if the attack exceeded a bound on any sample.")]

#: The options of every command that certifies, in the order ``--help`` lists them after
#: the command's own: name -> (annotation, default).
SHARED: dict[str, tuple[Any, Any]] = {
    "method": (Annotated[Method, typer.Option(help="Attribution method.")],
               Method.integrated_gradients),
    "steps": (Annotated[int, typer.Option(min=1, max=100_000,
                                          help="Integrated-gradients steps m (Eq. 40).")], 50),
    "baseline": (Annotated[str, typer.Option(
        help="Integrated-gradients baseline: zero, or a tensor file of one image.")], "zero"),
    "labels": (Annotated[Path | None, typer.Option(
        help="CSV with columns name,label: target classes instead of the predictions.")],
        None),
    "beta_smooth": (Annotated[float | None, typer.Option(
        callback=positive, metavar="BETA", help="Explain a copy of the model whose ReLUs "
        "are Softplus(BETA) (Dombrowski et al., 2019; LeakyReLU, ReLU6, Hardtanh, clamp, "
        "Hardswish, Hardsigmoid through their ReLU forms, max-pooling by a smooth maximum): "
        "the attribution, every bound, the attack and --sound are the smoothed net's, for "
        "the class the original predicts. Larger BETA: closer to the original explanation, "
        "larger bounds (README).", show_default=False)], None),
    "mean": (MeanOpt, None),
    "std": (StdOpt, None),
    "preset": (PresetOpt, None),
    "size": (SizeOpt, None),
    "resize": (ResizeOpt, None),
    "crop": (CropOpt, None),
    "input_range": (Annotated[InputRange, typer.Option(
        help="The values of float tensor files: unit = in [0, 1] (others are refused); 255 = "
        "in [0, 255], divided by 255; any = taken as they are (eps is then in their units, "
        "e.g. of normalised images).")], InputRange.unit),
    "arch": (ArchOpt, None),
    "trust_pickle": (TrustOpt, False),
    "device": (Annotated[str, typer.Option(
        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")], "auto"),
    "dtype": (Annotated[DType, typer.Option(help="Computation precision.")], DType.float32),
    "spectral": (Annotated[Spectral, typer.Option(
        help="full: form each Jacobian (needed for Theorem 2's l-inf bound); iterative: "
        "xi_max and v_max matrix-free (l-inf then uses Corollary 1); auto: iterative except "
        "l-inf up to d = 4096.")], Spectral.auto),
    "tol": (Annotated[float, typer.Option(
        callback=fraction, help="Relative tolerance of the iterative solver, in (0, 1).")],
        1e-4),
    "chunk_size": (Annotated[int | None, typer.Option(
        min=1, max=MAX_INT, help="Jacobian rows per autograd pass (memory cap; GPU "
        "strategy).")], None),
    "batch_size": (Annotated[int | None, typer.Option(
        min=1, max=MAX_INT, help="Samples per batch (default: 1 on CPU, 16 on GPU). On a CPU, "
        "8 makes small inputs faster (their spectra share passes).")], None),
    "memory_budget": (Annotated[str | None, typer.Option(
        help="Memory the autograd passes may use, e.g. 4GB or 512MiB (default: half of the "
        "device's free memory). Picks batch and chunk sizes, and how many integrated-"
        "gradients points one matrix-free pass or attack step holds (the rest are recomputed: "
        "slower, same bound); on a GPU an out-of-memory pass is retried with half the size.",
        show_default=False)], None),
    "threads": (Annotated[int, typer.Option(
        min=1, max=4096, help="CPU threads for torch. 1 costs little for small models and "
        "avoids a 3-5x slowdown when other processes share the cores (BENCHMARKS.md); raise "
        "it for large models on a quiet machine.")], 1),
    "quiet": (QuietOpt, False),
}
#: The options of the commands that write records (not ``report``, which writes a folder).
OUTPUTS: dict[str, tuple[Any, Any]] = {
    "output": (Annotated[Path | None, typer.Option(
        help="Also write the results to FILE.json, FILE.jsonl (a record per line as each "
        "sample finishes) or FILE.csv.")], None),
    "format": (FormatOpt, Format.table),
    "save_attributions": (Annotated[Path | None, typer.Option(
        help="Save each sample's attribution g and worst-case direction v_max to "
        "FILE.safetensors.")], None),
    "shard": (Annotated[str | None, typer.Option(
        help="I/N: certify only shard I of N (the images i with i % N == I) into --output "
        "FILE.jsonl, for job arrays; join the shards with 'attrcert merge'. Under torchrun "
        "each rank takes its shard by itself.", show_default=False)], None),
}
#: The attack's budget (``attack``, ``bound --verify``, ``report``).
ATTACK: dict[str, tuple[Any, Any]] = {
    "attack_steps": (Annotated[int, typer.Option(
        min=1, max=1_000_000, help="Steps of each attack run.")], 40),
    "restarts": (Annotated[int, typer.Option(
        min=1, max=10_000, help="Random restarts of each attack run.")], 1),
    "seed": (Annotated[int, typer.Option(
        min=0, max=2**63 - 1, help="Seed of the attacks' random starts.")], 0),
}


@dataclass
class CommandOptions:
    """The options every command that certifies shares, as parsed (paths, numbers, enums):
    the commands turn them into the value objects of :mod:`attrcert.settings` once, at the
    boundary, and pass those down."""

    model: Path
    images: Path
    method: Method = Method.integrated_gradients
    steps: int = 50
    baseline: str = "zero"
    labels: Path | None = None
    beta_smooth: float | None = None
    device: str = "auto"
    dtype: DType = DType.float32
    chunk_size: int | None = None
    batch_size: int | None = None
    output: Path | None = None
    format: Format = Format.table
    save_attributions: Path | None = None
    mean: str | None = None
    std: str | None = None
    size: tuple[int, int] | None = None
    preset: Any = None
    resize: int | None = None
    crop: tuple[int, int] | None = None
    input_range: Any = None  # InputRange; None: unit
    arch: str | None = None
    trust_pickle: bool = False
    quiet: bool = False
    spectral: Spectral = Spectral.auto
    tol: float = 1e-4
    threads: int = 1
    memory_budget: str | None = None
    shard: str | None = None
    attack: AttackOptions = field(default_factory=AttackOptions)

    @property
    def value_range(self) -> str:
        """``--input-range`` as :func:`attrcert.loading.load_images` takes it."""
        return "unit" if self.input_range is None else str(self.input_range.value)

    def preprocessing(self) -> Preprocessing:
        """Resize, crop and normalisation: from the options given, else --preset's, else
        the library's for --arch timm:NAME / torchvision:NAME, else none."""
        return resolve_preprocessing(
            preset=self.preset.value if self.preset is not None else None, arch=self.arch,
            mean=self.mean, std=self.std, size=self.size, resize=self.resize, crop=self.crop)

    def geometry(self) -> Geometry:
        """Resize and crop (:meth:`preprocessing`)."""
        return self.preprocessing().geometry

    def geometry_config(self) -> dict[str, Any]:
        """The geometry as the configuration records it."""
        return self.preprocessing().geometry_config()

    def solver(self) -> SolverOptions:
        """The solver options, checked (a bad --memory-budget fails before anything is
        loaded); a torchrun rank replaces the device with its own."""
        return SolverOptions(spectral=self.spectral.value, tol=self.tol,
                             chunk_size=self.chunk_size, batch_size=self.batch_size,
                             memory_budget=self.memory_budget, device=self.device,
                             dtype=self.dtype.value)


_COMMAND_FIELDS = {f.name for f in fields(CommandOptions)}


def common_options(*groups: dict[str, tuple[Any, Any]]) -> Callable[[Callable[..., Any]],
                                                                    Callable[..., None]]:
    """Give a command the options of ``groups`` (:data:`SHARED`, :data:`OUTPUTS`,
    :data:`ATTACK`) after its own, and call it with them gathered in ``opts: CommandOptions``.

    The command declares ``model``, ``images``, its own options and ``opts``; the wrapper's
    signature (which Typer reads) holds all of them, so each shared option is declared
    here once.
    """
    shared = {name: spec for group in groups for name, spec in group.items()}

    def decorate(func: Callable[..., Any]) -> Callable[..., None]:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values()
               if p.name != "opts"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                   annotation=annotation)
                 for name, (annotation, default) in shared.items()]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added

        @functools.wraps(func)
        def command(**kwargs: Any) -> None:
            gathered = {name: kwargs.pop(name) for name in shared if name in _COMMAND_FIELDS}
            attack = {name: kwargs.pop(name) for name in shared if name in ATTACK}
            if attack:
                gathered["attack"] = AttackOptions(steps=attack["attack_steps"],
                                                   restarts=attack["restarts"],
                                                   seed=attack["seed"])
            opts = CommandOptions(model=kwargs["model"], images=kwargs["images"], **gathered)
            func(opts=opts, **kwargs)

        del command.__wrapped__  # Typer must read the signature below, not func's
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate
