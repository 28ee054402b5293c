"""Raw dataset sources: IDX files from a local folder, torchvision's downloader as fallback."""
from __future__ import annotations

import gzip
import struct
import zlib
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
# The training split's published size (checked before any job), and what one image is.
# cifar*: the published sizes (data.checksum holds them to it); imagenet: ILSVRC-2012's train/ folder
TRAIN_IMAGES = {"fashion_mnist": 60000, "cifar10": 50000, "cifar100": 50000, "imagenet": 1281167}
IMAGE_SHAPES = {"fashion_mnist": (28, 28)}


class DataMissingError(FileNotFoundError):
    """The raw data is not where the config says."""


class DataFileError(ValueError):
    """A raw data file that is damaged or not the file it should be; the message names it."""


def _bad(path: Path, what: str) -> DataFileError:
    return DataFileError(f"'{path}': {what}; replace it with the original file (for Fashion-MNIST: "
                         f"`sudo apt-get install --reinstall dataset-fashion-mnist`, or data.download=true)")


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except EOFError:
        raise _bad(path, "the gzip stream ends early: the file is truncated") from None
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise _bad(path, f"not a readable gzip file ({exc})") from None


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array, checking its header and length.

    ``ndim``: the dimensions expected (3 for images, 1 for labels), so a swapped file is named as such.
    """
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise _bad(path, f"not an unsigned-byte IDX file (bad magic number {raw[:4].hex() or 'none'}, "
                         f"expected 0000080{ndim or 'N'})")
    dims_found = raw[3]
    header = 4 + 4 * dims_found
    if len(raw) < header:
        raise _bad(path, f"cut inside its header ({len(raw)} of {header} bytes)")
    if ndim is not None and dims_found != ndim:
        kinds = {1: "labels (1 dimension)", 3: "images (3 dimensions)"}
        raise _bad(path, f"holds {kinds.get(dims_found, f'{dims_found} dimensions')} where "
                         f"{kinds.get(ndim, f'{ndim} dimensions')} belong: an images and a labels file swapped?")
    dims = struct.unpack(f">{dims_found}I", raw[4:header])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(dims)):
        raise _bad(path, f"{'truncated' if data.size < np.prod(dims) else 'too long'}: its header says "
                         f"{'x'.join(map(str, dims))} = {int(np.prod(dims))} bytes, it holds {data.size}")
    return data.reshape(dims).copy()


def _check_arrays(name: str, found: Dict[str, Path], arrays: Dict[str, np.ndarray]) -> None:
    """Images and labels agree in number, images have the dataset's shape: else name the files."""
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        shape = IMAGE_SHAPES.get(name)
        if shape and images.shape[1:] != shape:
            raise _bad(found[f"{split}_images"], f"images of {'x'.join(map(str, images.shape[1:]))} pixels, "
                                                 f"{name} has {'x'.join(map(str, shape))}")
        if len(images) != len(labels):
            raise DataFileError(f"'{found[f'{split}_images']}' holds {len(images)} images but "
                                f"'{found[f'{split}_labels']}' {len(labels)} labels: they are not one split's "
                                f"pair; replace them with the original files")


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
    arrays = {k: read_idx(p, 3 if k.endswith("_images") else 1) for k, p in found.items()}  # type: ignore[arg-type]
    _check_arrays(name, found, arrays)  # type: ignore[arg-type]
    return arrays
