"""The shift suite: deterministic under its seed, verified on load, corruptions that do what they say."""
import json

import numpy as np
import pytest
from imagecorruptions import get_corruption_names

from advsoup.config import CORRUPTIONS, ConfigError, ShiftConfig, load_config
from advsoup.data.prepared import load_split
from advsoup.shift.suite import corrupt_image, generate_suite, load_sets, sketch_image

SMALL = dict(subset=40, corruptions=["gaussian_noise", "glass_blur", "spatter", "contrast"], severities=[1, 5])


@pytest.fixture(scope="module")
def suite(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("shifts") / "a"
    generate_suite(prepared, out, ShiftConfig(**SMALL))
    return out


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_suite_is_deterministic_under_its_seed(prepared, suite, tmp_path):
    generate_suite(prepared, tmp_path / "b", ShiftConfig(**SMALL))
    assert _files(suite) == _files(tmp_path / "b")  # byte for byte, manifest included
    generate_suite(prepared, tmp_path / "c", ShiftConfig(**SMALL, seed=1))
    a, c = load_sets(suite), load_sets(tmp_path / "c")
    assert not np.array_equal(a["gaussian_noise-1"][1].images, c["gaussian_noise-1"][1].images)


def test_suite_sets_hold_the_test_subset(prepared, suite):
    manifest = json.loads((suite / "manifest.json").read_text())
    names = ["clean"] + [f"{c}-{s}" for c in SMALL["corruptions"] for s in SMALL["severities"]] + ["sketch"]
    assert sorted(manifest["sets"]) == sorted(names)
    test = load_split(prepared, "test")
    idx = np.asarray(manifest["test_indices"])
    sets = load_sets(suite)
    clean = sets["clean"][1]
    assert np.array_equal(clean.images, test.images[idx]) and np.array_equal(clean.labels, test.labels[idx])
    assert np.bincount(clean.labels).tolist() == [4] * 10
    for name, (entry, split) in sets.items():
        assert split.images.shape == (40, 1, 28, 28) and split.images.dtype == np.uint8, name
        assert np.array_equal(split.labels, clean.labels), name
    assert sets["glass_blur-5"][0] == {"kind": "corruption", "corruption": "glass_blur", "severity": 5, "size": 40}


def test_corruptions_grow_with_severity(suite):
    sets = load_sets(suite)
    clean = sets["clean"][1].images.astype(float)
    for c in SMALL["corruptions"]:
        d1, d5 = (np.abs(sets[f"{c}-{s}"][1].images - clean).mean() for s in (1, 5))
        assert 0 < d1 < d5, c


def test_tampered_set_is_refused(suite, tmp_path):
    copy = tmp_path / "s"
    copy.mkdir()
    for name, data in _files(suite).items():
        (copy / name).write_bytes(data)
    arr = np.load(copy / "contrast-1_images.npy")
    arr[0, 0, 0, 0] ^= 1
    np.save(copy / "contrast-1_images.npy", arr)
    with pytest.raises(ValueError, match="sha256"):
        load_sets(copy)
    with pytest.raises(ValueError, match="no shift set"):
        load_sets(suite, ["fog-3"])


def test_small_grey_images_are_padded_and_come_back_grey():
    image = np.zeros((28, 28), np.uint8)
    image[8:20, 8:20] = 200
    out = corrupt_image(image, "brightness", 3, seed=0)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out[0, 0] > 0 and out[10, 10] >= 200  # brighter everywhere, the square still brightest
    assert np.array_equal(corrupt_image(image, "shot_noise", 2, 7), corrupt_image(image, "shot_noise", 2, 7))


def test_sketch_draws_dark_edges_on_white():
    image = np.zeros((28, 28), np.uint8)
    image[8:20, 8:20] = 200
    out = sketch_image(image)
    assert out[0, 0] == 255 and out[14, 14] == 255  # paper white outside and inside the shape
    assert out[8, 14] < 128 and out.min() == 0  # a dark stroke along its border


RUNS = ["runs={a: {training: nominal, adapter: none}}", "data.train_size=500"]


def test_config_knows_every_imagenet_c_corruption():
    assert CORRUPTIONS == tuple(get_corruption_names("all"))
    with pytest.raises(ConfigError, match=r"shift.corruptions\[1\].*'fogg'"):
        load_config([], ["shift.corruptions=[fog,fogg]", *RUNS])
    with pytest.raises(ConfigError, match="shift.k"):
        load_config([], ["shift.subset=20", "shift.k=20", *RUNS])
    with pytest.raises(ConfigError, match=r"shift.severities\[0\]"):
        load_config([], ["shift.severities=[6]", *RUNS])
