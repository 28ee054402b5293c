"""Raw dataset sources: IDX files from a local folder, torchvision's downloader as fallback."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Dict

import numpy as np

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DATASETS = {"fashion_mnist": FASHION_MNIST_CLASSES}


class DataMissingError(FileNotFoundError):
    """The raw data is not where the config says."""


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array, checking its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated, header says {dims} but holds {data.size} bytes")
    return data.reshape(dims).copy()


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem, folder / "raw" / f"{stem}.gz",
                      folder / "raw" / stem):
        if candidate.is_file():
            return candidate
    return None


def _download_with_torchvision(root: Path) -> Path:
    from torchvision.datasets import FashionMNIST  # only with a network

    FashionMNIST(str(root), train=True, download=True)
    FashionMNIST(str(root), train=False, download=True)
    return root / "FashionMNIST" / "raw"


def load_raw(name: str, source_dir: str, download: bool, download_root: Path) -> Dict[str, np.ndarray]:
    """The four arrays of an IDX dataset, from source_dir or (download=true) torchvision."""
    if name not in DATASETS:
        raise DataMissingError(f"unknown dataset '{name}' (config key data.name); known: {sorted(DATASETS)}")
    folder = Path(source_dir)
    found = {k: _find(folder, stem) for k, stem in IDX_FILES.items()}
    if not all(found.values()) and download:
        folder = _download_with_torchvision(download_root)
        found = {k: _find(folder, stem) for k, stem in IDX_FILES.items()}
    missing = [IDX_FILES[k] for k, v in found.items() if v is None]
    if missing:
        raise DataMissingError(
            f"Fashion-MNIST IDX files {missing} not found in '{source_dir}' (config key data.source_dir). "
            "Install them with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; `make setup` does it), "
            "point data.source_dir at a folder holding the IDX files, or set data.download=true "
            "to fetch them with torchvision (needs a network).")
    return {k: read_idx(p) for k, p in found.items()}  # type: ignore[arg-type]
