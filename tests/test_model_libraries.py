"""``--arch timm:NAME`` / ``torchvision:NAME`` (issue 22): the library's own architecture,
built untrained, sized from the user's weights, loaded strictly, with the library's
preprocessing; and class folders mapped to the model's classes (ImageNet synsets by timm's
tables). timm's and torchvision's own code, small inputs."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from attrcert.cli.inputs import load_inputs, run_config
from attrcert.cli.options import CommandOptions
from attrcert.cli.preprocessing import resolve_preprocessing
from attrcert.errors import InputError, LoadError
from attrcert.loading import Geometry, load_model
from attrcert.loading.classes import folder_targets
from attrcert.loading.libraries import parse_library_arch

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
from timm.data import ImageNetInfo  # noqa: E402

from .conftest import run_main  # noqa: E402

SIDE = 32


def _jpeg(path, seed, size=(SIDE, SIDE)):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, quality=95)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """timm's resnet18 with 10 classes: safetensors, a ``module.``-prefixed state dict."""
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    folder = tmp_path_factory.mktemp("resnet")
    save_file(net.state_dict(), folder / "r18.safetensors")
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, folder / "r18.pt")
    return net, folder


def _same_logits(model, net):
    x = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))


@pytest.mark.parametrize("file", ["r18.safetensors", "r18.pt"])
def test_timm_arch_loads_safetensors_and_prefixed_state_dicts(resnet, file):
    net, folder = resnet
    model = load_model(folder / file, arch="timm:resnet18")
    assert model.num_classes == 10 and not model.training  # classes from the head's shape
    _same_logits(model, net)


def test_torchvision_arch_loads_a_state_dict(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    torch.save(net.state_dict(), tmp_path / "tv.pt")
    model = load_model(tmp_path / "tv.pt", arch="torchvision:resnet18")
    assert model.fc.out_features == 7
    _same_logits(model, net)


def test_nothing_but_the_weights_is_opened_or_downloaded(resnet):
    """An audit hook records every file opened and every socket used while the model is
    built and loaded: only the weights file."""
    _, folder = resnet
    load_model(folder / "r18.safetensors", arch="timm:resnet18")  # imports done
    events: list[tuple[str, str]] = []
    active = [True]

    def hook(event, args):
        if active[0] and (event == "open" or event.startswith(("socket.", "urllib."))):
            events.append((event, str(args[0])))

    sys.addaudithook(hook)  # cannot be removed: switched off below
    try:
        load_model(folder / "r18.safetensors", arch="timm:resnet18")
        load_model(folder / "r18.pt", arch="torchvision:resnet18")
    finally:
        active[0] = False
    opened = {where for event, where in events}
    assert all(event == "open" for event, _ in events), events
    assert str(folder / "r18.pt") in opened  # the hook sees torch.load's open
    assert opened <= {str(folder / "r18.safetensors"), str(folder / "r18.pt")}, opened


def test_mismatched_weights_missing_library_and_unknown_names_are_one_line(resnet,
                                                                         monkeypatch):
    _, folder = resnet
    with pytest.raises(LoadError, match=r"do not fit --arch timm:resnet34: missing keys "
                       r"layer1\.2\.conv1\.weight"):
        load_model(folder / "r18.safetensors", arch="timm:resnet34")
    with pytest.raises(LoadError, match="no model 'resnet19'; close matches: resnet18"):
        load_model(folder / "r18.safetensors", arch="timm:resnet19")
    with pytest.raises(LoadError, match=r"torchvision has no model 'resnet_18'.*resnet18"):
        load_model(folder / "r18.safetensors", arch="torchvision:resnet_18")
    with pytest.raises(LoadError, match="pretrained= is not allowed"):
        parse_library_arch("timm:resnet18(pretrained=True)")
    with pytest.raises(LoadError, match="Python literals"):
        parse_library_arch("timm:resnet18(num_classes=open('x'))")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(LoadError, match=r"needs timm, which is not installed: pip install "
                       r"timm$"):
        load_model(folder / "r18.safetensors", arch="timm:resnet18")


def test_constructor_arguments_and_their_input_size(tmp_path):
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
                            img_size=SIDE, patch_size=8).eval()
    save_file(net.state_dict(), tmp_path / "vit.safetensors")
    arch = "timm:vit_tiny_patch16_224(img_size=32, patch_size=8)"
    _same_logits(load_model(tmp_path / "vit.safetensors", arch=arch), net)
    pre = resolve_preprocessing(preset=None, arch=arch, mean=None, std=None, size=None,
                                resize=None, crop=None)
    assert pre.geometry == Geometry(shorter=35, crop=(32, 32), interpolation="bicubic")
    assert pre.mean == [0.5, 0.5, 0.5]  # vit_tiny's pretrained config


def _pre(arch, **given):
    options = {"preset": None, "mean": None, "std": None, "size": None, "resize": None,
               "crop": None, **given}
    return resolve_preprocessing(arch=arch, **options)


def test_preprocessing_is_the_librarys_unless_overridden():
    pre = _pre("timm:resnet18")  # default tag a1_in1k: crop_pct 0.95, bicubic
    assert pre.geometry == Geometry(shorter=235, crop=(224, 224), interpolation="bicubic")
    assert pre.source == "timm:resnet18" and pre.std == [0.229, 0.224, 0.225]
    tagged = _pre("timm:resnet18.tv_in1k")  # the tag's config: 0.875, bilinear
    assert tagged.geometry == Geometry(shorter=256, crop=(224, 224))
    tv = _pre("torchvision:resnet50")  # the default weights' transforms: 232 / 224
    assert tv.geometry == Geometry(shorter=232, crop=(224, 224))
    own = _pre("timm:resnet18", size=(64, 64), mean="0.5", std="0.25")
    assert own.geometry == Geometry(size=(64, 64), interpolation="bicubic")
    assert own.mean == [0.5] and own.std == [0.25]
    preset = _pre("timm:resnet18", preset="imagenet")
    assert preset.source == "imagenet" and preset.geometry.shorter == 256


def test_timm_preprocessing_matches_timms_own_transform():
    """The geometry attrcert takes from timm's config gives the pixels of timm's own eval
    transform (Pillow on 8-bit images, then ToTensor), to 8-bit rounding."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(
        "resnet18").to_dict())
    theirs = create_transform(**config, is_training=False)
    ours = _pre("timm:resnet18")
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(40, 216, (30, 40, 3)), np.ones((10, 10, 1)))
    image = Image.fromarray(smooth.astype(np.uint8))
    mean = torch.tensor(config["mean"]).view(3, 1, 1)
    std = torch.tensor(config["std"]).view(3, 1, 1)
    want = theirs(image) * std + mean
    got = torch.from_numpy(ours.geometry.apply_array(np.asarray(image, np.float32) / 255))
    got = got.permute(2, 0, 1)
    assert got.shape == want.shape == (3, 224, 224)
    assert (got - want).abs().max() < 3 / 255


def _folders(root, names):
    for i, name in enumerate(names):
        _jpeg(root / name / f"ILSVRC2012_val_{i:08d}.JPEG", i)
    return root


@pytest.fixture(scope="module")
def imagenet_model(tmp_path_factory):
    """timm's resnet18 with ImageNet's 1000 classes, as safetensors."""
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path_factory.mktemp("r18k") / "r18k.safetensors"
    save_file(net.state_dict(), path)
    return str(path)


def test_synset_folders_are_imagenet_indices(imagenet_model, tmp_path):
    """What ``bound`` loads (its targets and config) for ImageNet's validation layout;
    certifying is left out: Prop. 1 takes 1000 class gradients per image."""
    synsets = ["n02123045"]  # tabby cat: sorted order would say 0 (tench)
    root = _folders(tmp_path / "val", synsets)
    opts = CommandOptions(model=Path(imagenet_model), images=root, arch="timm:resnet18",
                  size=(SIDE, SIDE))
    loaded = load_inputs(opts)
    info = ImageNetInfo("imagenet-1k")
    assert loaded.target.tolist() == [info.label_names().index("n02123045")] == [281]
    config = run_config(opts, loaded, opts.solver(), "bound", {})
    assert config["class_folders"] == "imagenet-1k synsets"
    assert config["preset"] == "timm:resnet18" and config["mean"] == [0.485, 0.456, 0.406]


def test_cat_and_dog_folders_for_a_1000_class_model_are_refused(imagenet_model, tmp_path,
                                                                capfd):
    root = _folders(tmp_path / "pets", ["cat", "dog"])
    code, out, err = run_main(["bound", imagenet_model, str(root), "--arch", "timm:resnet18",
                               "--size", "32", "32", "--quiet"], capfd)
    assert code == 2 and out == ""
    line = err.strip().splitlines()[-1]
    assert line.startswith("error:") and "cat/ is not the name of one imagenet-1k class" in line
    assert "--labels FILE.csv" in line


def test_the_class_folder_rule():
    def targets(names, k):
        sources = [f"{n}/x.png" for n in names]
        found = folder_targets(sorted(set(names)), sources, k, "imgs")
        return found.targets.tolist(), found.rule

    assert targets(["tench", "Tabby_Cat"], 1000) == ([0, 281], "imagenet-1k names")
    assert targets(["7", "3"], 10) == ([7, 3], "integers")
    assert targets(["dog", "cat"], 2) == ([1, 0], "sorted")
    assert targets(["n01440764", "n01443537"], 2) == ([0, 1], "sorted")  # Imagenette-like
    with pytest.raises(InputError, match="crane/ is not the name of one imagenet-1k class"):
        targets(["crane", "tench"], 1000)  # a bird and a machine
    with pytest.raises(InputError, match="2 folders are not the model's 10 classes"):
        targets(["cat", "dog"], 10)
    with pytest.raises(InputError, match="means class 12, but the model has 10 classes"):
        targets(["12"], 10)
    with pytest.raises(InputError, match="n99999999 is not a synset of imagenet-1k"):
        targets(["n99999999", "n01440764"], 1000)


def test_inspect_shows_the_preprocessing_it_would_use(resnet, capfd):
    _, folder = resnet
    model = str(folder / "r18.safetensors")
    code, out, err = run_main(["inspect", model, "--arch", "timm:resnet18", "--resize", "40",
                               "--crop", "32", "32", "--format", "json"], capfd)
    assert code == 0, err
    info = json.loads(out)
    assert info["input_shape"] == [3, 32, 32] and info["classes"] == 10
    assert info["preprocessing"] == ("resize shorter side to 40 (bicubic), centre crop 32x32, "
                                     "mean 0.485,0.456,0.406, std 0.229,0.224,0.225 "
                                     "(from timm:resnet18)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, err = run_main(["inspect", model, "--arch", "timm:resnet18", "--preset",
                                   "cifar10", "--size", "32", "32"], capfd)
    assert code == 0, err
    assert "preprocessing: resize to 32x32 (bilinear), mean 0.4914" in out
