"""Loaders of the real-scale shifted ImageNet sets, on tiny fake trees in their published layouts."""
import numpy as np
import pytest
import torch
from PIL import Image

from advsoup.shift.imagenet import (RealShiftMissing, imagenet_synsets, load_real_shift, predict_labels,
                                          real_shift_sets)

R_WNIDS = ["n01443537", "n01484850"]  # goldfish (1k index 1), great white shark (2): ImageNet-R classes


def _images(folder, n=2, ext="jpg"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((40, 50, 3), 40 * i, np.uint8)).save(folder / f"img_{i}.{ext}")


def test_imagenet_r_targets_are_imagenet_indices_and_logits_are_masked(tmp_path):
    for w in R_WNIDS:
        _images(tmp_path / "imagenet-r" / w)
    s = load_real_shift("imagenet-r", tmp_path, img_size=32)
    assert len(s.dataset) == 4 and sorted(set(s.dataset.targets)) == [1, 2]
    x, y = s.dataset[0]
    assert x.shape == (3, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and y == 1
    assert len(s.class_indices) == 200 and len(s.missing_classes) == 198
    logits = torch.zeros(2, 1000)
    logits[:, 0] = 10.0  # tench: not an ImageNet-R class, so it cannot be predicted
    logits[0, 2], logits[1, 1] = 5.0, 4.0
    assert predict_labels(logits, s.class_indices).tolist() == [2, 1]
    assert predict_labels(logits, None).tolist() == [0, 0]


def test_imagenet_c_and_sketch_layouts(tmp_path):
    _images(tmp_path / "imagenet-c" / "fog" / "3" / "n01440764", ext="JPEG")
    _images(tmp_path / "sketch" / "n01440764", ext="JPEG")
    c = load_real_shift("imagenet-c", tmp_path, img_size=32, corruption="fog", severity=3)
    assert c.dataset.targets == [0, 0] and c.class_indices is None
    assert set(real_shift_sets(tmp_path, img_size=32)) == {"imagenet-c/fog-3", "imagenet-sketch"}
    assert imagenet_synsets()[0] == "n01440764" and len(imagenet_synsets()) == 1000


@pytest.mark.parametrize("make, name, kwargs, needle", [
    (lambda root: None, "imagenet-a", {}, "<root>/imagenet-a/<wnid>/*.jpg"),
    (lambda root: _images(root / "imagenet-c" / "fog" / "3" / "n01440764"), "imagenet-c",
     {"corruption": "fog", "severity": 5}, "<root>/imagenet-c/<corruption>/<severity 1-5>/<wnid>/*.JPEG"),
    (lambda root: _images(root / "imagenet-r" / "n01440764"), "imagenet-r", {},  # tench is not an -R class
     "not imagenet-r classes: ['n01440764']"),
    (lambda root: (root / "sketch" / "n01440764").mkdir(parents=True), "imagenet-sketch", {}, "no image files"),
])
def test_missing_or_misplaced_sets_name_the_expected_layout(tmp_path, make, name, kwargs, needle):
    make(tmp_path)
    with pytest.raises(RealShiftMissing) as exc:
        load_real_shift(name, tmp_path, img_size=32, **kwargs)
    msg = str(exc.value)
    assert needle in msg and "shift.imagenet_root" in msg and str(tmp_path) in msg


def test_unset_root_and_empty_root(tmp_path):
    with pytest.raises(RealShiftMissing, match="shift.imagenet_root is not set"):
        load_real_shift("imagenet-sketch", "")
    with pytest.raises(RealShiftMissing, match="no shifted ImageNet set"):
        real_shift_sets(tmp_path)
    with pytest.raises(ValueError, match="needs a corruption"):
        load_real_shift("imagenet-c", tmp_path, corruption="fogg", severity=3)
