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


def _class_permutations(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """Each class's indices in a fixed shuffle, classes in label order."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]


def _round_robin(groups: list[np.ndarray], from_end: bool = False) -> np.ndarray:
    """The groups' indices interleaved one per group per round, groups in order. ``from_end`` aligns the groups'
    last elements in the last round (instead of their first elements in the first), so that with unequal
    groups the short ones end with the long ones instead of early."""
    longest = max(map(len, groups))
    rounds = np.concatenate([np.arange(len(g)) + (longest - len(g) if from_end else 0) for g in groups])
    group = np.concatenate([np.full(len(g), i) for i, g in enumerate(groups)])
    return np.concatenate(groups).astype(np.int64)[np.lexsort((group, rounds))]


def balanced_order(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Every index, round-robin over classes in a fixed shuffle: any prefix holds each class equally (up to one)
    until the smallest class runs out (ImageNet's training classes hold 732 to 1300 images: later rounds hold only
    the larger classes)."""
    return _round_robin(_class_permutations(labels, seed))


def balanced_subset(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced subset, the first ``size`` of :func:`balanced_order`; the same for every run."""
    return np.sort(balanced_order(labels, seed)[:size])


def training_indices(labels: np.ndarray, split: str, size: int, train_size: int, val_size: int,
                     where: str) -> np.ndarray:
    """Which images of the training split the split ``train`` (its first ``size``, 0 = all) or ``validation``
    reads: the one answer for datasets held as arrays and as files.

    Without a validation split, ``train`` is the first ``size`` of :func:`balanced_order`. With one
    (``val_size`` > 0: :func:`split_training`), ``train`` is the first ``size`` of the training part and never
    reaches into ``validation``, whatever the class sizes; ``train_size`` 0 is every image but the validation
    split. ``train`` comes sorted (the order training samples from); ``validation`` in its class-balanced
    order, so any prefix of it spans the classes. ``where`` names the data in errors.
    """
    if split == "train" and val_size < 1:
        return balanced_subset(labels, size) if size and size < len(labels) else np.arange(len(labels))
    train, validation = split_training(labels, train_size, val_size, where)
    if split == "validation":
        return validation
    return np.sort(train[:size or None])


def load_training_split(prepared: Path, split: str, size: int, train_size: int, val_size: int) -> Split:
    """A dataset held as arrays: the images of :func:`training_indices`, in the order the arrays store them (the
    order every evaluation of an array dataset has read them in)."""
    train = load_split(prepared, "train")
    idx = np.sort(training_indices(train.labels, split, size, train_size, val_size, str(prepared)))
    if len(idx) == len(train):
        return train
    return Split(train.images[idx], train.labels[idx], train.classes)


def split_training(labels: np.ndarray, train_size: int, val_size: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices of a training split, never sharing one.

    Validation: the last images of every class's shuffle (:func:`balanced_order`'s), ``val_size`` spread over the
    classes as evenly as it divides, in round-robin order aligned at the classes' ends: every class is validated
    on, also where the classes differ in size (ImageNet's 732 to 1300), where the last ``val_size`` of that order
    would hold only the largest classes. Training: ``train_size`` 0 is every other image (round-robin over them);
    ``train_size`` N the first N of :func:`balanced_order`, the same images whatever ``val_size``, and refused
    where they reach into the validation split (only where the classes differ in size: for equal classes the
    first N never do while N + val_size fit the split, and the validation split is the last ``val_size`` of that
    order).

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
    per_class = _class_permutations(labels, seed=0)
    base, extra = divmod(val_size, len(per_class))
    # the remainder to the last classes: what the last val_size of balanced_order holds for equal classes
    held = [base + (i >= len(per_class) - extra) for i in range(len(per_class))]
    short = [(int(c), len(p), h) for c, p, h in zip(np.unique(labels), per_class, held) if h >= len(p)]
    if short:
        c, size, h = short[0]
        raise ValueError(f"data.val_size={val_size}: class {c} of {where} has {size} training images, so holding out "
                         f"its {h} leaves it none to train on; lower data.val_size to below "
                         f"{len(per_class) * min(len(p) for p in per_class)}")
    validation = _round_robin([p[len(p) - h:] for p, h in zip(per_class, held)], from_end=True)
    if not train_size:
        return _round_robin([p[:len(p) - h] for p, h in zip(per_class, held)]), validation
    order = _round_robin(per_class)
    fits = int(np.flatnonzero(np.isin(order, validation))[0])  # how far the order runs before a held-out image
    if train_size > fits:
        raise ValueError(f"data.train_size={train_size}: the first {train_size} of the class-balanced order of "
                         f"{where} reach into the data.val_size={val_size} validation split (its classes differ in "
                         f"size, {min(map(len, per_class))} to {max(map(len, per_class))} images, and the held-out "
                         f"images end every class); lower data.train_size to at most {fits}, or set it to 0 (every "
                         f"image but the validation split)")
    return order[:train_size], validation


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
