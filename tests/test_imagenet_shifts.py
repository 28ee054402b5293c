"""Loading one setting of a published shifted ImageNet set: ImageNet-1k targets, the subset, the transform."""
import numpy as np
import pytest
import torch
from PIL import Image

from torchvision.transforms.functional import to_tensor

from advsoup.shift.imagenet import eval_transform, load_setting, predict_labels
from advsoup.shift.layout import RealShiftMissing, class_indices, imagenet_synsets


def _images(folder, n, size=(40, 50)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((*size, 3), 40 * i, np.uint8)).save(folder / f"img_{i}.JPEG")


def test_targets_are_imagenet_indices_and_the_subset_is_class_balanced(tmp_path):
    wnids = imagenet_synsets()[3:6]  # ImageNet-1k indices 3, 4, 5
    for w in wnids:
        _images(tmp_path / w, 4)
    full = load_setting(tmp_path, 32, corrupted=False, subset=0, seed=0)
    assert len(full) == 12 and sorted(set(full.targets)) == [3, 4, 5]
    x, y = full[0]
    assert x.shape == (3, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and y == 3
    sub = load_setting(tmp_path, 32, corrupted=False, subset=6, seed=0)
    assert sorted(y for _, y in sub) == [3, 3, 4, 4, 5, 5]  # two per class
    again = load_setting(tmp_path, 32, corrupted=False, subset=6, seed=0)
    assert sub.indices == again.indices  # the same images for every run


def test_a_folder_that_is_not_an_imagenet_class_is_refused(tmp_path):
    _images(tmp_path / "n01440764", 1)
    _images(tmp_path / "cats", 1)
    with pytest.raises(RealShiftMissing, match=r"wnid class folders only; found \['cats'\]"):
        load_setting(tmp_path, 32, corrupted=False, subset=0, seed=0)


def test_imagenet_c_is_not_cropped_again_at_224():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    assert torch.equal(eval_transform(224, corrupted=True)(image), to_tensor(image))  # already 224, centred
    assert not torch.equal(eval_transform(224, corrupted=False)(image), to_tensor(image))  # resize 256, crop


def test_predict_labels_stays_within_the_set():
    logits = torch.zeros(2, 1000)
    logits[:, 0] = 10.0  # tench: not an ImageNet-A class, so it cannot be predicted there
    logits[0, 6], logits[1, 11] = 5.0, 4.0  # 6 (stingray) and 11 (goldfinch) are ImageNet-A classes
    idx = class_indices("imagenet-a")
    assert {6, 11} <= set(idx) and 0 not in idx
    assert predict_labels(logits, idx).tolist() == [6, 11]
    assert predict_labels(logits, None).tolist() == [0, 0]
