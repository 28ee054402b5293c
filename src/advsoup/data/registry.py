"""The dataset registry, chosen by ``data.name``.

Two kinds of dataset:

* ``arrays``: small enough to hold whole (Fashion-MNIST, CIFAR-10/100).
  ``prepare`` writes uint8 arrays plus a manifest with their sha256
  (advsoup.data.prepared); training indexes them in memory, or streams them
  through DataLoader workers when augmentation is on.
* ``files``: ImageNet in the ImageFolder layout, read in place.
  ``prepare`` writes a file list (advsoup.data.imagefolder); training streams
  it through DataLoader workers with timm's transforms.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

from ..config import DataConfig
from .cifar import read_cifar
from .sources import FASHION_MNIST_CLASSES, load_raw

Arrays = Tuple[Dict[str, np.ndarray], List[str], Dict]


def _fashion_mnist(data: DataConfig) -> Arrays:
    # No provenance keys: the manifest stays byte-identical to the one the demo has always written.
    arrays = load_raw(data.name, data.source_dir, data.download, Path(data.prepared_dir) / "downloads")
    return arrays, list(FASHION_MNIST_CLASSES), {}


def _cifar(data: DataConfig) -> Arrays:
    return read_cifar(data.name, data.source_dir, data.checksum)


ARRAY_DATASETS: Dict[str, Callable[[DataConfig], Arrays]] = {
    "fashion_mnist": _fashion_mnist, "cifar10": _cifar, "cifar100": _cifar}
FILE_DATASETS = ("imagenet",)


def kind(name: str) -> str:
    if name in ARRAY_DATASETS:
        return "arrays"
    if name in FILE_DATASETS:
        return "files"
    raise ValueError(f"unknown dataset '{name}' (config key data.name); "
                     f"known: {sorted([*ARRAY_DATASETS, *FILE_DATASETS])}")


def raw_arrays(data: DataConfig) -> Arrays:
    """(arrays {train,test}_{images,labels}, class names, provenance for the manifest) of an arrays dataset."""
    kind(data.name)
    return ARRAY_DATASETS[data.name](data)
