"""The prepared dataset: uint8 arrays as .npy plus a manifest with sha256 hashes.

``prepare`` is the first DAG stage; every later stage calls ``load_split``,
which checks the hashes so that a corrupted or swapped file is refused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from ..atomic import atomic_dir, sha256, write_json
from ..config import DataConfig
from .imagefolder import prepare_image_folder
from .registry import kind, raw_arrays

MANIFEST = "manifest.json"


def prepare(data: DataConfig, out_dir: Path) -> Dict:
    """Read the raw dataset and write out_dir/{split}_{images,labels}.npy + manifest.json."""
    if kind(data.name) == "files":  # ImageNet: a file list, the images stay where they are
        return prepare_image_folder(data.source_dir, out_dir, data.hash_files, data.name)
    arrays, classes, provenance = raw_arrays(data)
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(x) != len(y):
            raise ValueError(f"{data.source_dir}: {split} has {len(x)} images but {len(y)} labels")
        if y.max() >= len(classes):
            raise ValueError(f"{data.source_dir}: {split} label {y.max()} beyond the {len(classes)} classes")
    manifest = {"dataset": data.name, "source_dir": data.source_dir, "classes": list(classes), "files": {},
                **provenance}
    with atomic_dir(out_dir) as tmp:
        for key, arr in arrays.items():
            if key.endswith("_images") and arr.ndim == 3:
                arr = arr[:, None]  # N, C, H, W
            np.save(tmp / f"{key}.npy", arr, allow_pickle=False)
            manifest["files"][f"{key}.npy"] = {
                "sha256": sha256(tmp / f"{key}.npy"), "shape": list(arr.shape), "dtype": str(arr.dtype)}
        for split in ("train", "test"):
            manifest[f"{split}_class_counts"] = np.bincount(
                arrays[f"{split}_labels"], minlength=len(classes)).tolist()
        write_json(tmp / MANIFEST, manifest)
    return manifest


@dataclass
class Split:
    images: np.ndarray  # N, C, H, W uint8
    labels: np.ndarray  # N int64
    classes: tuple

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images as float in [0, 1] and labels as int64 (attacks work in this space)."""
        return (torch.from_numpy(self.images).float().div_(255.0),
                torch.from_numpy(self.labels.astype(np.int64)))

    def __len__(self) -> int:
        return len(self.labels)


def balanced_order(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Every index, round-robin over classes in a fixed shuffle: any prefix holds each class equally (up to one)."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order = [idx[i] for i in range(max(map(len, per_class))) for idx in per_class if i < len(idx)]
    return np.asarray(order, dtype=np.int64)


def balanced_subset(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced subset, the first ``size`` of :func:`balanced_order`; the same for every run."""
    return np.sort(balanced_order(labels, seed)[:size])


def load_validation(prepared: Path, train_size: int, val_size: int) -> Split:
    """The validation split: the last ``val_size`` of the training split's class-balanced order.

    Training takes the first ``train_size`` of that same order
    (:func:`balanced_subset`), so the two never share an image and holding the
    validation images out changes nothing in training.
    """
    train = load_split(prepared, "train")
    n = len(train)
    if val_size < 1 or train_size < 1 or train_size + val_size > n:
        raise ValueError(f"data.val_size={val_size} validation images cannot be held out of the {n} training images "
                         f"beside data.train_size={train_size}: need 1 <= val_size and 1 <= train_size <= "
                         f"{n} - val_size")
    idx = np.sort(split_training(train.labels, train_size, val_size, str(prepared))[1])
    return Split(train.images[idx], train.labels[idx], train.classes)


def split_training(labels: np.ndarray, train_size: int, val_size: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices of a training split, in :func:`balanced_order`: its first ``train_size``
    (0 = every image but the validation split) and its last ``val_size``, never sharing one.

    ``where`` names the split's data in the error of a combination that does not fit.
    """
    if val_size < 1:
        raise ValueError(f"data.val_size={val_size}: there is no validation split to read; set data.val_size > 0")
    n = len(labels)
    train = train_size or n - val_size
    if train < 1 or train + val_size > n:
        beside = (f"data.train_size={train_size}" if train_size else
                  "data.train_size=0 (all the training images but the validation split)")
        raise ValueError(f"data.val_size={val_size}: cannot hold out {val_size} of the {n} training images of {where} "
                         f"beside {beside}; lower data.val_size to at most {max(n - (train_size or 1), 0)}"
                         + (" or data.train_size" if train_size else "")
                         + " (data.val_size: 0 = no validation split, every chosen soup an oracle)")
    order = balanced_order(labels)
    return order[:train], order[n - val_size:]


def load_split(prepared: Path, split: str, size: int = 0) -> Split:
    """Load a prepared split, verifying the manifest's hashes; size>0 takes a balanced subset."""
    mpath = prepared / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(f"no prepared data at '{prepared}' (missing {MANIFEST}); "
                                f"run `advsoup prepare --config <experiment>` first")
    manifest = json.loads(mpath.read_text())
    if manifest.get("kind") == "files":
        raise ValueError(f"{prepared} lists image files ({manifest['dataset']}), which are streamed, never loaded "
                         f"whole: read them with advsoup.data.loaders.eval_loader")
    out = {}
    for key in (f"{split}_images", f"{split}_labels"):
        path = prepared / f"{key}.npy"
        expected = manifest["files"][path.name]["sha256"]
        if not path.is_file() or sha256(path) != expected:
            raise ValueError(f"{path} is missing or does not match the sha256 in {mpath}; "
                             f"re-run `advsoup prepare` (or `dvc checkout`) to restore it")
        out[key] = np.load(path, allow_pickle=False)
    images, labels = out[f"{split}_images"], out[f"{split}_labels"]
    if size and size < len(labels):
        idx = balanced_subset(labels, size)
        images, labels = images[idx], labels[idx]
    return Split(images, labels.astype(np.int64), tuple(manifest["classes"]))
