"""Inputs as they come: RGB JPEGs of any size, ImageNet's resize-and-centre-crop, presets,
and folders of class folders read as labels (as torchvision's ImageFolder)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from attrcert.errors import InputError, OptionError
from attrcert.loading import PRESETS, Geometry, list_images, load_images

from .conftest import run_main

SIZES = [(300, 500), (500, 300), (256, 256), (257, 1000), (240, 320)]


def _jpeg(path, height, width, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path,
                                                                                  quality=95)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jpegs")
    for i, (h, w) in enumerate(SIZES):
        _jpeg(folder / f"photo_{i}.jpg", h, w, i)
    return folder


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """cat/ (2 JPEGs) and dog/ (1 PNG) of 40x48, plus a stray text file."""
    root = tmp_path_factory.mktemp("classes")
    for cls, names in (("cat", ["b.jpg", "a.jpg"]), ("dog", ["c.png"])):
        (root / cls).mkdir()
        for i, name in enumerate(names):
            _jpeg(root / cls / name, 40, 48, sum(map(ord, name)) + i)
    (root / "README.txt").write_text("not an image")
    (root / "empty").mkdir()
    return root


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    """A small smooth RGB classifier for any input size (global average pooling), as .pt2."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 5, stride=4), nn.Softplus(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, 5)).eval()
    path = tmp_path_factory.mktemp("m") / "rgb.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    height, width = torch.export.Dim("h", min=16, max=512), torch.export.Dim("w", min=16,
                                                                             max=512)
    ep = torch.export.export(net, (torch.zeros(2, 3, 40, 48),),
                             dynamic_shapes=({0: batch, 2: height, 3: width},))
    torch.export.save(ep, path)
    return str(path)


@pytest.fixture(scope="module")
def two_class_model(tmp_path_factory):
    """A 2-class RGB classifier (TorchScript): as many classes as cat/ and dog/."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 5, stride=4), nn.Softplus(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, 2)).eval()
    path = tmp_path_factory.mktemp("m2") / "two.pt"
    torch.jit.script(net).save(str(path))
    return str(path)


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_imagenet_geometry_is_torchvisions_resize_then_centre_crop(height, width):
    shape = PRESETS["imagenet"].geometry
    short, long = min(height, width), max(height, width)
    resized = shape.resized(height, width)
    assert min(resized) == 256 and max(resized) == int(256 * long / short)
    assert shape.output(height, width) == (224, 224)
    # a ramp along each axis: the centre pixel of the crop is the centre of the image
    ys, xs = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    arr = np.stack([ys, xs, 0.5 * np.ones_like(ys)], axis=2).astype(np.float32)
    out = shape.apply_array(arr)
    assert out.shape == (224, 224, 3)
    centre = out[112, 112]
    assert centre[0] == pytest.approx(0.5, abs=0.01) and centre[1] == pytest.approx(0.5,
                                                                                    abs=0.01)


def test_rgb_jpegs_of_any_size_load_with_the_preset(jpegs):
    images = load_images(jpegs, geometry=PRESETS["imagenet"].geometry)
    assert images.tensor.shape == (len(SIZES), 3, 224, 224)
    assert images.tensor.dtype == torch.float32
    assert 0 <= float(images.tensor.min()) and float(images.tensor.max()) <= 1
    with pytest.raises(InputError, match=r"differ in size.*--preset imagenet"):
        load_images(jpegs)


def test_tensor_files_take_the_same_geometry(tmp_path):
    x = torch.rand(2, 3, 300, 400)
    torch.save(x, tmp_path / "x.pt")
    out = load_images(tmp_path / "x.pt", geometry=Geometry(shorter=256, crop=(224, 224)))
    assert out.tensor.shape == (2, 3, 224, 224)
    with pytest.raises(InputError, match="cannot crop 500x500"):
        load_images(tmp_path / "x.pt", geometry=Geometry(crop=(500, 500)))
    with pytest.raises(OptionError, match="not both"):
        Geometry(size=(10, 10), shorter=5)


def test_class_folders_are_labels_in_sorted_order(classes):
    listing = list_images(classes)
    assert listing.sources == ["cat/a.jpg", "cat/b.jpg", "dog/c.png"]
    assert listing.labels == [0, 0, 1] and listing.classes == ["cat", "dog"]
    images = load_images(classes)
    assert images.sources == listing.sources and images.labels.tolist() == [0, 0, 1]
    assert images.tensor.shape == (3, 3, 40, 48)


def test_integer_class_folders_are_the_labels_themselves(tmp_path):
    for cls in ("3", "10"):
        (tmp_path / cls).mkdir()
        _jpeg(tmp_path / cls / "x.jpg", 20, 20, int(cls))
    listing = list_images(tmp_path)
    assert listing.sources == ["10/x.jpg", "3/x.jpg"] and listing.labels == [10, 3]


def test_cli_targets_come_from_class_folders(classes, two_class_model, capfd):
    code, out, err = run_main(["bound", two_class_model, str(classes), "--method", "saliency",
                               "--quiet", "--format", "json"], capfd)
    assert code == 0, err
    doc = json.loads(out)
    assert [r["source"] for r in doc["samples"]] == ["cat/a.jpg", "cat/b.jpg", "dog/c.png"]
    assert [r["target"] for r in doc["samples"]] == [0, 0, 1]
    assert doc["config"]["labels"] == "class folders"


def test_cli_labels_csv_overrides_class_folders(classes, rgb_model, tmp_path, capfd):
    labels = tmp_path / "labels.csv"
    labels.write_text("name,label\ncat/a.jpg,4\ncat/b.jpg,4\ndog/c.png,2\n")
    code, out, err = run_main(["bound", rgb_model, str(classes), "--method", "saliency",
                               "--quiet", "--format", "json", "--labels", str(labels)], capfd)
    assert code == 0, err
    assert [r["target"] for r in json.loads(out)["samples"]] == [4, 4, 2]


def test_class_folder_beyond_the_models_classes_is_one_line(tmp_path, rgb_model, capfd):
    (tmp_path / "7").mkdir()
    _jpeg(tmp_path / "7" / "x.jpg", 40, 48, 0)
    code, out, err = run_main(["bound", rgb_model, str(tmp_path), "--quiet"], capfd)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "model has 5 classes" in err


def test_cli_preset_imagenet_on_jpegs_of_any_size(jpegs, rgb_model, capfd):
    code, out, err = run_main(["bound", rgb_model, str(jpegs), "--preset", "imagenet",
                               "--method", "saliency", "--quiet", "--format", "json"], capfd)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["config"]["input_shape"] == [3, 224, 224]
    assert doc["config"]["preset"] == "imagenet"
    assert doc["config"]["mean"] == [0.485, 0.456, 0.406]
    assert doc["config"]["geometry"] == {"size": None, "resize": 256, "crop": [224, 224]}
    assert all(r["T_e"] is not None and r["T_e"] > 0 for r in doc["samples"])


def test_preset_parts_are_overridden_and_conflicts_refused(jpegs, rgb_model, capfd):
    code, out, err = run_main(["bound", rgb_model, str(jpegs), "--preset", "imagenet",
                               "--resize", "64", "--crop", "48", "48", "--method", "saliency",
                               "--quiet", "--format", "json"], capfd)
    assert code == 0, err
    assert json.loads(out)["config"]["input_shape"] == [3, 48, 48]
    code, out, err = run_main(["bound", rgb_model, str(jpegs), "--size", "64", "64",
                               "--resize", "64", "--quiet"], capfd)
    assert code == 2 and "not both" in err


def test_shards_of_class_folders_merge_to_the_single_run(classes, two_class_model, tmp_path,
                                                         capfd):
    argv = ["bound", two_class_model, str(classes), "--method", "saliency", "--quiet"]
    code, out, err = run_main([*argv, "--format", "json"], capfd)
    assert code == 0, err
    whole = json.loads(out)["samples"]
    shards = []
    for i in range(2):
        shard = tmp_path / f"s{i}.jsonl"
        code, _, err = run_main([*argv, "--shard", f"{i}/2", "--output", str(shard)], capfd)
        assert code == 0, err
        shards.append(str(shard))
    merged = tmp_path / "all.json"
    code, _, err = run_main(["merge", str(merged), *shards], capfd)
    assert code == 0, err
    joined = json.loads(merged.read_text())["samples"]
    keep = ("source", "target", "xi_max", "T_e")
    assert [{k: r[k] for k in keep} for r in joined] == [{k: r[k] for k in keep}
                                                          for r in whole]
