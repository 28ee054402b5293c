import json

import numpy as np
import pytest

from advsoup.config import DataConfig
from advsoup.data.prepared import balanced_subset, load_split, prepare, sha256
from advsoup.data.sources import DataMissingError


def test_prepared_arrays_and_manifest(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["classes"][0] == "T-shirt/top" and len(manifest["classes"]) == 10
    assert manifest["train_class_counts"] == [6000] * 10 and manifest["test_class_counts"] == [1000] * 10
    for name, entry in manifest["files"].items():
        assert sha256(prepared / name) == entry["sha256"]
    train = load_split(prepared, "train")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == np.uint8
    x, y = train.tensors()
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and y.dtype.is_floating_point is False


def test_balanced_subset_is_fixed_and_balanced(prepared):
    a = load_split(prepared, "train", 1000)
    b = load_split(prepared, "train", 1000)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.images, b.images)
    assert np.bincount(a.labels).tolist() == [100] * 10
    labels = np.repeat(np.arange(3), [5, 50, 50])
    assert len(balanced_subset(labels, 30)) == 30


def test_missing_source_names_package_and_key(tmp_path):
    with pytest.raises(DataMissingError) as exc:
        prepare(DataConfig(source_dir=str(tmp_path / "empty")), tmp_path / "out")
    msg = str(exc.value)
    assert "dataset-fashion-mnist" in msg and "data.source_dir" in msg and "data.download" in msg
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_tampered_file_is_refused(prepared, tmp_path):
    copy = tmp_path / "fm"
    copy.mkdir()
    for f in prepared.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    arr = np.load(copy / "test_labels.npy")
    arr[0] = (arr[0] + 1) % 10
    np.save(copy / "test_labels.npy", arr)
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_split(copy, "test")
