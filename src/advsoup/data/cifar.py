"""CIFAR-10 and CIFAR-100 in the official binary format ("suitable for C programs").

Read straight from the published archive (``cifar-10-binary.tar.gz``,
``cifar-100-binary.tar.gz``), checked against the MD5 the dataset page
publishes, or from its extracted folder. Never the Python version: that one is
pickled, and advsoup unpickles nothing that could come from a shared remote.

A record is ``label bytes + 3072 image bytes`` (1024 red, 1024 green, 1024
blue, row-major 32x32): CIFAR-10 has one label byte, CIFAR-100 two (coarse,
then fine; we train on the 100 fine classes).
"""
from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .sources import DataMissingError

IMAGE_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class CifarSpec:
    archive: str
    md5: str  # published on https://www.cs.toronto.edu/~kriz/cifar.html
    folder: str  # the folder the archive unpacks to
    train: Tuple[str, ...]
    test: Tuple[str, ...]
    label_bytes: int
    label_offset: int  # which label byte is the class
    names_file: str
    num_classes: int
    counts: Tuple[int, int]  # published train / test sizes


CIFAR = {
    "cifar10": CifarSpec("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", "cifar-10-batches-bin",
                         tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), 1, 0,
                         "batches.meta.txt", 10, (50000, 10000)),
    "cifar100": CifarSpec("cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8", "cifar-100-binary",
                          ("train.bin",), ("test.bin",), 2, 1, "fine_label_names.txt", 100, (50000, 10000)),
}


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _member_reader(spec: CifarSpec, root: Path, checksum: bool) -> Tuple[Callable[[str], Optional[bytes]], Dict]:
    """A function member name -> bytes (None if absent), from the archive or the extracted folder."""
    archive = root / spec.archive if root.is_dir() else root
    if archive.is_file() and archive.name.endswith(".tar.gz"):
        md5 = _md5(archive) if checksum else None
        if checksum and md5 != spec.md5:
            raise ValueError(f"'{archive}' has MD5 {md5}, not the published {spec.md5}: it is damaged or another "
                             f"file; download it again, or set data.checksum=false for a file you made yourself")
        tar = tarfile.open(archive, "r:gz")

        def read(member: str) -> Optional[bytes]:
            try:
                fh = tar.extractfile(f"{spec.folder}/{member}")
            except KeyError:
                return None
            return fh.read() if fh is not None else None
        return read, {"archive": str(archive), "archive_md5": md5}
    for folder in (root / spec.folder, root):
        if all((folder / m).is_file() for m in spec.train + spec.test):
            return (lambda m, f=folder: (f / m).read_bytes() if (f / m).is_file() else None), \
                {"folder": str(folder), "archive_md5": None}
    raise DataMissingError(
        f"no CIFAR binary data in '{root}' (config key data.source_dir): expected the archive "
        f"'{spec.archive}' (MD5 {spec.md5}) or its extracted folder '{spec.folder}/' holding "
        f"{', '.join(spec.train + spec.test)}. The Python (pickled) version is not read: get the binary version "
        f"from https://www.cs.toronto.edu/~kriz/cifar.html")


def _records(raw: bytes, spec: CifarSpec, member: str) -> Tuple[np.ndarray, np.ndarray]:
    size = spec.label_bytes + IMAGE_BYTES
    if len(raw) == 0 or len(raw) % size:
        raise ValueError(f"{spec.folder}/{member}: {len(raw)} bytes is not a whole number of {size}-byte records "
                         f"({spec.label_bytes} label byte(s) + {IMAGE_BYTES} pixels): not the binary CIFAR format")
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, size)
    labels = rec[:, spec.label_offset].astype(np.int64)
    if labels.max() >= spec.num_classes:
        raise ValueError(f"{spec.folder}/{member}: label {labels.max()} beyond the {spec.num_classes} classes: "
                         f"is it the other CIFAR (data.name)?")
    return rec[:, spec.label_bytes:].reshape(-1, 3, 32, 32).copy(), labels


def read_cifar(name: str, source_dir: str, checksum: bool) -> Tuple[Dict[str, np.ndarray], List[str], Dict]:
    """(arrays {train,test}_{images,labels}, class names, provenance) of CIFAR ``name``."""
    spec = CIFAR[name]
    read, provenance = _member_reader(spec, Path(source_dir), checksum)
    arrays: Dict[str, np.ndarray] = {}
    for split, members, count in (("train", spec.train, spec.counts[0]), ("test", spec.test, spec.counts[1])):
        parts = []
        for m in members:
            raw = read(m)
            if raw is None:
                raise DataMissingError(f"'{source_dir}' lacks '{spec.folder}/{m}' of the binary CIFAR layout")
            parts.append(_records(raw, spec, m))
        arrays[f"{split}_images"] = np.concatenate([p[0] for p in parts])
        arrays[f"{split}_labels"] = np.concatenate([p[1] for p in parts])
        n = len(arrays[f"{split}_labels"])
        if checksum and n != count:
            raise ValueError(f"'{source_dir}': {n} {split} images, but {name} has {count}; "
                             f"set data.checksum=false to accept a partial copy")
    names = read(spec.names_file)
    classes = [c for c in (names or b"").decode().splitlines() if c.strip()] or [str(i) for i in range(spec.num_classes)]
    if len(classes) != spec.num_classes:
        raise ValueError(f"'{source_dir}': {spec.names_file} names {len(classes)} classes, {name} has {spec.num_classes}")
    return arrays, classes, provenance
