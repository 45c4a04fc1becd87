"""Loading models (every format, refusals, corrupt files), images, labels and helpers."""

from __future__ import annotations

import copy
import pickle
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from attrcert.devices import prepare
from attrcert.errors import InputError, LoadError, OptionError
from attrcert.loading import (
    Normalized,
    UntrustedPickleWarning,
    infer_input_channels,
    load_images,
    load_labels,
    load_model,
    sniff_model,
    with_normalization,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_models"
ARCH_FILE = "sample_models/digits_arch.py:softplus_cnn"


class Payload:
    """Unpickling this creates the file ``target``: stands in for arbitrary code."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.load(SAMPLES / "digits.pt", weights_only=True)[:4]


@pytest.fixture(scope="module")
def exported() -> nn.Module:
    return load_model(SAMPLES / "digits_softplus.pt2")


@pytest.fixture(scope="module")
def reference(exported, x) -> torch.Tensor:
    with torch.no_grad():
        return exported(x)


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """The softplus CNN with the sample weights, as a plain module."""
    return load_model(SAMPLES / "digits_softplus.safetensors", arch=str(SAMPLES / "digits_arch.py")
                      + ":softplus_cnn")


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# --------------------------------------------------------------------------- model formats


def test_every_format_gives_the_same_logits(tmp_path, monkeypatch, x, reference, trained):
    monkeypatch.chdir(REPO)
    state = trained.state_dict()
    torch.save(state, tmp_path / "sd.pt")
    torch.save(state, tmp_path / "sd_legacy.bin", _use_new_zipfile_serialization=False)
    renamed = tmp_path / "model.weights"  # a safetensors file under a misleading suffix
    renamed.write_bytes((SAMPLES / "digits_softplus.safetensors").read_bytes())
    cases = [
        (SAMPLES / "digits_softplus.pt", None),
        (SAMPLES / "digits_softplus.safetensors", ARCH_FILE),
        (renamed, ARCH_FILE),
        (tmp_path / "sd.pt", ARCH_FILE),
        (tmp_path / "sd_legacy.bin", ARCH_FILE),
        (SAMPLES / "digits_softplus.pt2", ARCH_FILE),  # --arch is ignored for whole models
    ]
    for path, arch in cases:
        model = load_model(path, arch=arch)
        assert isinstance(model, nn.Module)
        torch.testing.assert_close(_logits(model, x), reference, rtol=1e-5, atol=1e-5)
    assert sniff_model(tmp_path / "sd.pt") == "state_dict"
    assert sniff_model(tmp_path / "sd_legacy.bin") == "torch_legacy"
    assert sniff_model(renamed) == "safetensors"
    assert not load_model(tmp_path / "sd.pt", arch=ARCH_FILE).training


def test_arch_as_module_and_factory(monkeypatch, x, reference):
    monkeypatch.chdir(SAMPLES)
    monkeypatch.delitem(sys.modules, "digits_arch", raising=False)
    path_before = list(sys.path)
    model = load_model("digits_softplus.safetensors", arch="digits_arch:softplus_cnn")
    torch.testing.assert_close(_logits(model, x), reference, rtol=1e-5, atol=1e-5)
    assert sys.path == path_before  # the working directory was on sys.path only to import
    monkeypatch.chdir(REPO)
    model = load_model(SAMPLES / "digits_softplus.safetensors",
                       arch="sample_models.digits_arch:softplus_cnn")
    torch.testing.assert_close(_logits(model, x), reference, rtol=1e-5, atol=1e-5)


def test_weights_without_arch_are_refused(tmp_path, trained):
    torch.save(trained.state_dict(), tmp_path / "sd.pt")
    for path in (SAMPLES / "digits_softplus.safetensors", tmp_path / "sd.pt"):
        with pytest.raises(LoadError, match=r"weights only \(a state dict\).*--arch"):
            load_model(path)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_bad_arch_gives_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    weights = SAMPLES / "digits_softplus.safetensors"
    _write(tmp_path / "small.py", "from torch import nn\ndef net():\n    return nn.Linear(3, 2)\n")
    _write(tmp_path / "notmod.py", "def net():\n    return 42\nNOT_CALLABLE = 1\n")
    _write(tmp_path / "raises.py", "def net(width):\n    return None\n")
    _write(tmp_path / "broken.py", "def net(:\n")
    _write(tmp_path / "wide.py", f"import sys\nsys.path.insert(0, {str(SAMPLES)!r})\n"
           "import digits_arch\nfrom torch import nn\ndef net():\n"
           "    m = digits_arch.softplus_cnn()\n    m[0] = nn.Conv2d(3, 8, 5)\n    return m\n")
    cases = {
        "nocolon": "not of the form module:factory",
        "small.py:": "not of the form",
        "small.py:1bad": "not of the form",
        "no_such_module_xyz:net": "cannot import module no_such_module_xyz",
        "missing.py:net": "file missing.py does not exist",
        "small.py:nope": "has no attribute nope",
        "notmod.py:NOT_CALLABLE": "is not callable",
        "notmod.py:net": "returned a int, not a torch.nn.Module",
        "raises.py:net": r"calling net\(\) failed: TypeError",
        "broken.py:net": "importing broken.py failed: SyntaxError",
        "small.py:net": "do not fit --arch small.py:net: missing keys weight, bias; unexpected",
        "wide.py:net":
            r"shape mismatch \(file vs model\) 0.weight \(8, 1, 5, 5\) vs \(8, 3, 5, 5\)",
    }
    for arch, message in cases.items():
        with pytest.raises(LoadError, match=message) as info:
            load_model(weights, arch=arch)
        assert "\n" not in str(info.value), arch


def test_pickled_module_needs_trust(tmp_path, x, reference, trained):
    files = {"zip": tmp_path / "whole.pt", "legacy": tmp_path / "legacy.pt",
             "pickle": tmp_path / "whole.pkl"}
    torch.save(trained, files["zip"])
    torch.save(trained, files["legacy"], _use_new_zipfile_serialization=False)
    with files["pickle"].open("wb") as fh:
        pickle.dump(trained, fh)
    for name, path in files.items():
        with pytest.raises(LoadError, match=r"--trust-pickle") as info:
            load_model(path)
        assert "run code" in str(info.value), name
        with pytest.warns(UntrustedPickleWarning):
            model = load_model(path, trust_pickle=True)
        assert not model.training
        torch.testing.assert_close(_logits(model, x), reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(LoadError, match=r"needs the Python object torch\.nn\.modules"):
        load_model(files["zip"])


def test_raw_pickled_state_dict_needs_trust_and_arch(tmp_path, monkeypatch, trained):
    monkeypatch.chdir(REPO)
    path = tmp_path / "sd.pkl"
    with path.open("wb") as fh:
        pickle.dump(trained.state_dict(), fh)
    with pytest.raises(LoadError, match=r"plain Python pickle.*--trust-pickle"):
        load_model(path, arch=ARCH_FILE)
    with pytest.warns(UntrustedPickleWarning), pytest.raises(LoadError, match="--arch"):
        load_model(path, trust_pickle=True)
    with pytest.warns(UntrustedPickleWarning):
        assert isinstance(load_model(path, arch=ARCH_FILE, trust_pickle=True), nn.Sequential)


def test_malicious_pickle_is_never_unpickled(tmp_path):
    pwned = tmp_path / "pwned"
    files = [tmp_path / "evil.pt", tmp_path / "evil_legacy.pt", tmp_path / "evil.pkl"]
    torch.save(Payload(pwned), files[0])
    torch.save(Payload(pwned), files[1], _use_new_zipfile_serialization=False)
    with files[2].open("wb") as fh:
        pickle.dump(Payload(pwned), fh)
    for path in files:
        sniff_model(path)
        with pytest.raises(LoadError, match="--trust-pickle"):
            load_model(path)
        with pytest.raises(LoadError, match="--trust-pickle"):
            load_model(path, arch=ARCH_FILE)
        with pytest.raises(InputError, match=r"refused.*run code"):
            load_images(path)
        assert not pwned.exists(), path
    # The payload is real: --trust-pickle runs it (and the result is still no model).
    with pytest.warns(UntrustedPickleWarning), pytest.raises(LoadError, match="NoneType"):
        load_model(files[2], trust_pickle=True)
    assert pwned.exists()


def _damage_zip(src: Path, dst: Path, member: str, content: bytes | None = None) -> Path:
    """A copy of the zip ``src`` whose member ending in ``member`` is cut in half (or replaced)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(member):
                data = data[: len(data) // 2] if content is None else content
            zout.writestr(info, data)
    return dst


def test_damaged_archives(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "sd.pt")
    cases = {
        _damage_zip(SAMPLES / "digits_softplus.pt2", tmp_path / "a.pt2", "models/model.json",
                    b"{garbage"):
            r"corrupt torch\.export archive \(entry .*model\.json is not valid JSON: "
            r"JSONDecodeError",
        _damage_zip(SAMPLES / "digits_softplus.pt", tmp_path / "b.pt", "data.pkl"):
            "corrupt or truncated TorchScript archive",
        _damage_zip(tmp_path / "sd.pt", tmp_path / "c.pt", "data.pkl"):
            r"corrupt or truncated torch\.save file \(its pickle does not decode\)",
        _damage_zip(tmp_path / "sd.pt", tmp_path / "d.pt", "data/0"):
            r"corrupt or truncated torch\.save file\?\): RuntimeError",
    }
    for path, message in cases.items():
        with pytest.raises(LoadError, match=message) as info:
            load_model(path, arch=ARCH_FILE)
        assert "\n" not in str(info.value), path
    with pytest.raises(InputError, match="its pickle does not decode"):
        load_images(tmp_path / "c.pt")
    with pytest.raises(InputError, match="cannot read images"):
        load_images(tmp_path / "d.pt")


def test_broken_model_files(tmp_path):
    pt2 = (SAMPLES / "digits_softplus.pt2").read_bytes()
    script = (SAMPLES / "digits_softplus.pt").read_bytes()
    weights = (SAMPLES / "digits_softplus.safetensors").read_bytes()
    gen = np.random.default_rng(0)
    random_bytes = bytes([7]) + gen.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    cases = {
        "empty.pt2": (b"", "is empty"),
        "half.pt2": (pt2[: len(pt2) // 2], "truncated, corrupt or unknown zip"),
        "half_script.pt": (script[: len(script) - 100], "truncated, corrupt or unknown zip"),
        "half.safetensors": (weights[:1000], "cannot load model"),
        "bad_header.safetensors": (b"\x20" + b"\x00" * 7 + b"{not json at all" + b" " * 32,
                                   "cannot load model"),
        "legacy_cut.pt": (legacy.read_bytes()[:-20], "cannot load model"),
        "random.bin": (random_bytes, r"not a torch\.export"),
        "digit.pt2": ((SAMPLES / "digits" / "digit_00.png").read_bytes(), "is an image"),
        "notes.txt": (b"hello world\n", r"not a torch\.export"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(LoadError, match=message) as info:
            load_model(path)
        assert "\n" not in str(info.value), name
    with pytest.raises(LoadError, match="does not exist"):
        load_model(tmp_path / "missing.pt2")
    with pytest.raises(LoadError, match="not a file"):
        load_model(tmp_path)
    with pytest.raises(LoadError, match="not a model or a state dict"):
        torch.save(torch.ones(3), tmp_path / "tensor.pt")
        load_model(tmp_path / "tensor.pt", arch=ARCH_FILE)


# --------------------------------------------------------------------------- image folders


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_folder_rgb_to_gray_and_sizes(tmp_path):
    gen = np.random.default_rng(1)
    rgb = gen.integers(0, 256, (2, 9, 7, 3), dtype=np.uint8)
    for i, a in enumerate(rgb):
        _png(tmp_path / f"img_{i}.png", a)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "._img_0.png").write_bytes(b"AppleDouble junk")  # hidden: ignored
    colour = load_images(tmp_path)
    assert colour.tensor.shape == (2, 3, 9, 7) and colour.tensor.dtype == torch.float32
    assert colour.sources == ["img_0.png", "img_1.png"]
    torch.testing.assert_close(colour.tensor, torch.from_numpy(rgb).permute(0, 3, 1, 2) / 255.0)
    gray = load_images(tmp_path, channels=1)
    assert gray.tensor.shape == (2, 1, 9, 7)
    expected = np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in rgb]) / 255.0
    torch.testing.assert_close(gray.tensor[:, 0].double(), torch.from_numpy(expected))
    luma = (colour.tensor * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    assert (gray.tensor[:, 0] - luma).abs().max() <= 1 / 255
    resized = load_images(tmp_path, size=(5, 4))
    assert resized.tensor.shape == (2, 3, 5, 4)
    assert 0 <= resized.tensor.min() and resized.tensor.max() <= 1
    _png(tmp_path / "img_2.png", rgb[0, :8])
    with pytest.raises(InputError, match=r"differ in size \(H x W: 8x7, 9x7\).*--size H W"):
        load_images(tmp_path)
    assert load_images(tmp_path, size=(9, 7)).tensor.shape == (3, 3, 9, 7)
    _png(tmp_path / "img_3.png", rgb[0, :, :, 0])
    with pytest.raises(InputError, match=r"mix grayscale \(img_3\.png\).*channels=1"):
        load_images(tmp_path, size=(9, 7))
    assert load_images(tmp_path, size=(9, 7), channels=3).tensor.shape == (4, 3, 9, 7)


def test_folder_and_tensor_resize_agree(tmp_path):
    folder = load_images(SAMPLES / "digits", size=(14, 20))
    tensor = load_images(SAMPLES / "digits.pt", size=(14, 20))
    assert folder.tensor.shape == tensor.tensor.shape == (16, 1, 14, 20)
    torch.testing.assert_close(folder.tensor, tensor.tensor, rtol=0, atol=1e-5)
    single = load_images(SAMPLES / "digits" / "digit_03.png")
    assert single.sources == ["digit_03.png"]
    torch.testing.assert_close(single.tensor, load_images(SAMPLES / "digits").tensor[3:4])


def test_other_image_modes(tmp_path):
    deep = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    _png(tmp_path / "a.png", deep)
    images = load_images(tmp_path)
    torch.testing.assert_close(images.tensor[0, 0], torch.from_numpy(deep / 65535.0).float())
    assert load_images(tmp_path, channels=3).tensor.shape == (1, 3, 2, 2)
    palette = Image.fromarray(np.array([[0, 128], [255, 7]], dtype=np.uint8)).convert("P")
    palette.save(tmp_path / "b.png")
    assert load_images(tmp_path).tensor.shape == (2, 1, 2, 2)  # a gray palette stays gray
    jpeg = tmp_path / "jpeg"
    jpeg.mkdir()
    Image.fromarray(np.full((4, 5), 200, dtype=np.uint8)).save(jpeg / "a.JPG")
    Image.fromarray(np.full((4, 5), 90, dtype=np.uint8)).save(jpeg / "b.jpeg")
    gray = load_images(jpeg)
    assert gray.sources == ["a.JPG", "b.jpeg"] and gray.tensor.shape == (2, 1, 4, 5)
    assert abs(gray.tensor[0].mean().item() - 200 / 255) < 0.01
    rgba = tmp_path / "rgba"
    rgba.mkdir()
    Image.new("RGBA", (3, 2), (255, 0, 0, 10)).save(rgba / "red.png")
    red = load_images(rgba).tensor
    assert red.shape == (1, 3, 2, 3) and red[0, 0].min() == 1 and red[0, 1:].max() == 0


def test_corrupt_and_missing_images(tmp_path):
    good = (SAMPLES / "digits" / "digit_00.png").read_bytes()
    (tmp_path / "a.png").write_bytes(good)
    (tmp_path / "b.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match=r"cannot read image .*b\.png"):
        load_images(tmp_path)
    (tmp_path / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match=r"b\.png"):
        load_images(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no PNG or JPEG"):
        load_images(empty)
    (empty / "readme.txt").write_text("no images")
    with pytest.raises(InputError, match="no PNG or JPEG"):
        load_images(empty)
    with pytest.raises(InputError, match="does not exist"):
        load_images(tmp_path / "nowhere")


@pytest.mark.parametrize("limit", [100, 500])  # 28 x 28 = 784 > 2 x 100 (error), > 500 (warning)
def test_decompression_bomb(monkeypatch, limit):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning must not escape either
        with pytest.raises(InputError, match=f"decompression-bomb limit of {limit} pixels"):
            load_images(SAMPLES / "digits")


# --------------------------------------------------------------------------- tensor files


def test_tensor_files(tmp_path):
    gen = torch.Generator().manual_seed(2)
    batch = torch.rand(3, 1, 5, 6, generator=gen)
    np.save(tmp_path / "batch.npy", batch.numpy())
    np.save(tmp_path / "one.npy", batch[0].double().numpy())
    save_file({"images": batch}, tmp_path / "one.safetensors")
    save_file({"a": batch, "b": batch.clone()}, tmp_path / "two.safetensors")
    torch.save((batch * 255).round().to(torch.uint8), tmp_path / "bytes.pt")
    torch.save(batch, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.testing.assert_close(load_images(tmp_path / "legacy.pt").tensor, batch)
    (tmp_path / "npy.data").write_bytes((tmp_path / "batch.npy").read_bytes())
    loaded = load_images(tmp_path / "batch.npy")
    torch.testing.assert_close(loaded.tensor, batch)
    assert loaded.sources == ["batch.npy[0]", "batch.npy[1]", "batch.npy[2]"]
    torch.testing.assert_close(load_images(tmp_path / "npy.data").tensor, batch)  # by content
    one = load_images(tmp_path / "one.npy")
    assert one.tensor.shape == (1, 1, 5, 6) and one.tensor.dtype == torch.float32
    torch.testing.assert_close(load_images(tmp_path / "one.safetensors").tensor, batch)
    with pytest.raises(InputError, match=r"holds 2 tensors \(a, b\): expected exactly one"):
        load_images(tmp_path / "two.safetensors")
    scaled = load_images(tmp_path / "bytes.pt").tensor
    assert scaled.dtype == torch.float32
    torch.testing.assert_close(scaled, batch, rtol=0, atol=0.5 / 255 + 1e-6)

    bad = {
        "rank.pt": (torch.ones(5, 6), r"shape \(5, 6\): expected \(N, C, H, W\)"),
        "nan.pt": (torch.tensor([[[[0.5, float("nan")]]]]), "NaN or infinite"),
        "inf.npy": (np.full((1, 1, 2, 2), np.inf, dtype=np.float32), "NaN or infinite"),
        "empty.pt": (torch.ones(0, 1, 4, 4), "holds no images"),
        "wide.pt": (torch.full((1, 1, 2, 2), 300, dtype=torch.int64), "must be 0..255"),
        "dict.pt": ({"x": torch.ones(1, 1, 2, 2)}, "holds a dict, not a tensor"),
        "objects.npy": (np.array([{"a": 1}], dtype=object), "refused.*run code"),
        "complex.pt": (torch.ones(1, 1, 2, 2, dtype=torch.complex64), "complex"),
    }
    for name, (obj, message) in bad.items():
        path = tmp_path / name
        if name.endswith(".npy"):
            np.save(path, obj, allow_pickle=True)
        else:
            torch.save(obj, path)
        with pytest.raises(InputError, match=message):
            load_images(path)
    for name, content in {"zero.pt": b"", "junk.pt": b"\x00junk" * 10}.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=r"is empty|is not a folder of images"):
            load_images(tmp_path / name)


def test_tensor_channels_and_size(tmp_path):
    gen = torch.Generator().manual_seed(3)
    rgb = torch.rand(2, 3, 8, 8, generator=gen)
    torch.save(rgb, tmp_path / "rgb.pt")
    torch.save(rgb[:, :1], tmp_path / "gray.pt")
    torch.save(torch.rand(2, 2, 8, 8, generator=gen), tmp_path / "two.pt")
    gray = load_images(tmp_path / "rgb.pt", channels=1).tensor
    expected = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    torch.testing.assert_close(gray[:, 0], expected)
    repeated = load_images(tmp_path / "gray.pt", channels=3).tensor
    assert repeated.shape == (2, 3, 8, 8) and torch.equal(repeated[:, 2], rgb[:, 0])
    assert load_images(tmp_path / "rgb.pt", channels=3).tensor.shape == (2, 3, 8, 8)
    assert load_images(tmp_path / "two.pt").tensor.shape == (2, 2, 8, 8)
    with pytest.raises(InputError, match="2 channels: cannot convert them to 3"):
        load_images(tmp_path / "two.pt", channels=3)
    resized = load_images(tmp_path / "rgb.pt", size=(4, 6)).tensor
    assert resized.shape == (2, 3, 4, 6)
    with pytest.raises(OptionError, match="channels must be 1 or 3"):
        load_images(tmp_path / "rgb.pt", channels=2)
    with pytest.raises(OptionError, match="size must be two positive integers"):
        load_images(tmp_path / "rgb.pt", size=(0, 4))


# --------------------------------------------------------------------------- helpers


def test_infer_input_channels(exported, trained):
    assert infer_input_channels(exported, 28, 28) == 1
    assert infer_input_channels(trained, 28, 28) == 1
    assert infer_input_channels(trained, 20, 20) is None  # the Linear layer needs 28 x 28
    colour = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert infer_input_channels(colour.train(), 8, 8) == 3
    assert colour.training  # put back
    assert infer_input_channels(nn.Conv2d(1, 2, 3), 8, 8) is None  # 4-D output


def test_with_normalization(exported, x, trained):
    mean, std = [0.1], [0.3]
    wrapped = with_normalization(exported, mean, std)
    assert isinstance(wrapped, Normalized)
    torch.testing.assert_close(_logits(wrapped, x), _logits(exported, (x - 0.1) / 0.3))
    assert wrapped.mean.shape == (1, 1, 1, 1)
    assert next(iter(wrapped.parameters())) is next(iter(exported.parameters()))
    assert wrapped.eval() is wrapped and not wrapped.training  # the export inside refuses
    wrapped.train()
    assert wrapped.training

    xg = x[:2].clone().requires_grad_()
    out = wrapped(xg)
    (grad,) = torch.autograd.grad(out[:, 3].sum(), xg, create_graph=True)
    (hess,) = torch.autograd.grad((grad * grad).sum(), xg)
    assert torch.isfinite(hess).all() and hess.abs().sum() > 0

    # as certify() uses it: eval(), parameters(), deepcopy and a dtype change
    model, x64 = prepare(wrapped, x[:1], dtype="float64", device=None)
    assert x64.dtype == torch.float64 and model.mean.dtype == torch.float64
    torch.testing.assert_close(model(x64).float(), _logits(wrapped, x[:1]), rtol=1e-4,
                               atol=1e-4)

    plain = with_normalization(copy.deepcopy(trained), [0.5, 0.5, 0.5], [0.2])
    assert plain.std.shape == (1, 3, 1, 1)
    with pytest.raises(OptionError, match="3 values but the images have 1 channels"):
        plain(x)
    for mean, std, message in [([0.0], [0.0], "positive"), ([0.0], [-1.0], "positive"),
                               ([0.0, 0.0], [1.0, 1.0, 1.0], "one per channel"),
                               ([], [1.0], "at least one"), ([float("nan")], [1.0], "finite"),
                               (["a"], [1.0], "numbers")]:
        with pytest.raises(OptionError, match=message):
            with_normalization(trained, mean, std)


# --------------------------------------------------------------------------- labels


def test_labels(tmp_path):
    sources = ["a.png", "b.png", "c.png"]

    def labels(text: str, num_classes: int | None = None) -> torch.Tensor:
        path = tmp_path / "labels.csv"
        path.write_text(text, encoding="utf-8")
        return load_labels(path, sources, num_classes)

    got = labels("name,label\nc.png,2\na.png,0\n\nb.png, 9\n", num_classes=10)
    assert got.tolist() == [0, 9, 2] and got.dtype == torch.long
    assert labels("\ufeffLabel, Name\n1,a.png\n2,b.png\n3,c.png\n").tolist() == [1, 2, 3]
    bad = {
        "file,class\na.png,1\n": "columns name,label",
        "": "columns name,label",
        "name,label\na.png,1\nb.png,x\nc.png,1\n": "label of b.png is 'x', not an integer",
        "name,label\na.png,1\nb.png,1\nc.png,1\nz.png,1\ny.png,2\n":
            r"labels z\.png, which is not among the images \(and 1 more\)",
        "name,label\na.png,1\n": r"no label for b\.png and 1 more",
        "name,label\na.png,1\nb.png,10\nc.png,1\n": r"label of b\.png is 10, outside 0\.\.9",
        "name,label\na.png,1\na.png,2\n": "a.png is labelled twice",
        "name,label\na.png\n": "expected name,label",
    }
    for text, message in bad.items():
        with pytest.raises(InputError, match=message) as info:
            labels(text, num_classes=10)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError, match=r"label of a\.png is -1, outside >= 0"):
        labels("name,label\na.png,-1\nb.png,1\nc.png,1\n")
    with pytest.raises(InputError, match="does not exist"):
        load_labels(tmp_path / "missing.csv", sources)
    digits = load_images(SAMPLES / "digits")
    assert load_labels(SAMPLES / "digits" / "labels.csv", digits.sources, 10).shape == (16,)
