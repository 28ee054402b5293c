"""ImageNet (or any ImageFolder dataset) read in place: ``<root>/train/<class>/*``, ``<root>/val/<class>/*``.

``prepare`` never copies 150 GB: it writes a file list per split (relative
path, size in bytes, class index) and a manifest with the lists' sha256. Every
later read checks a file's size against its list, which catches a replaced or
truncated file for free; hashing every image (``data.hash_files``) is opt-in.
The manifest's test split is the ``val/`` folder (ImageNet's test labels are
not public).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, List, Tuple

from ..atomic import atomic_dir, sha256, write_json, write_text
from .sources import DataMissingError

FOLDERS = {"train": "train", "test": "val"}
EXTENSIONS = (".jpeg", ".jpg", ".png")  # what timm's ImageFolder reads by default, lower-cased
KIND = "files"


def _scan(folder: Path, classes: List[str]) -> List[Tuple[str, int, int]]:
    rows = []
    for idx, cls in enumerate(classes):
        if not (folder / cls).is_dir():  # a class the split does not hold (a partial val/)
            continue
        entries = sorted((e for e in os.scandir(folder / cls) if e.name.lower().endswith(EXTENSIONS)),
                         key=lambda e: e.name)
        rows += [(f"{folder.name}/{cls}/{e.name}", e.stat().st_size, idx) for e in entries]
    return rows


def _check_layout(root: Path) -> List[str]:
    expected = (f"expected the ImageFolder layout {root}/train/<class>/<image>.JPEG and {root}/val/<class>/<image>.JPEG "
                f"(config key data.source_dir)")
    if not root.is_dir():
        raise DataMissingError(f"'{root}' is not a folder: {expected}")
    for split, name in FOLDERS.items():
        if not (root / name).is_dir():
            raise DataMissingError(f"'{root / name}' is missing: {expected}")
    classes = sorted(e.name for e in os.scandir(root / "train") if e.is_dir())
    if not classes:
        raise ValueError(f"'{root / 'train'}' has no class folders: {expected}")
    val_classes = sorted(e.name for e in os.scandir(root / "val") if e.is_dir())
    if not val_classes:
        raise ValueError(f"'{root / 'val'}' has no class folders (ILSVRC ships val/ flat): sort its images into "
                         f"one folder per class (wnid) first, e.g. with the valprep.sh script; {expected}")
    extra = sorted(set(val_classes) - set(classes))
    if extra:
        raise ValueError(f"'{root / 'val'}' has classes that train/ lacks, e.g. {extra[:3]}: {expected}")
    return classes


def prepare_image_folder(source_dir: str, out_dir: Path, hash_files: bool, name: str) -> Dict:
    """Write out_dir/{train,test}_files.tsv and manifest.json for the ImageFolder at source_dir."""
    root = Path(source_dir).resolve()
    classes = _check_layout(root)
    manifest: Dict = {"dataset": name, "kind": KIND, "root": str(root), "classes": classes, "files": {}}
    with atomic_dir(out_dir) as tmp:
        for split, folder in FOLDERS.items():
            rows = _scan(root / folder, classes)
            if not rows:
                raise ValueError(f"'{root / folder}' holds no image ({', '.join(EXTENSIONS)}) in its class folders")
            lines = ["path\tbytes\tclass" + ("\tsha256" if hash_files else "")]
            for path, size, idx in rows:
                digest = "\t" + hashlib.sha256((root / path).read_bytes()).hexdigest() if hash_files else ""
                lines.append(f"{path}\t{size}\t{idx}{digest}")
            listing = tmp / f"{split}_files.tsv"
            write_text(listing, "\n".join(lines) + "\n")
            manifest["files"][listing.name] = {"sha256": sha256(listing), "images": len(rows),
                                               "bytes": sum(r[1] for r in rows)}
            counts = [0] * len(classes)
            for _, _, idx in rows:
                counts[idx] += 1
            manifest[f"{split}_class_counts"] = counts
        write_json(tmp / "manifest.json", manifest)
    return manifest


def read_file_list(prepared: Path, manifest: Dict, split: str) -> Tuple[Path, List[str], List[int], List[int]]:
    """(root, relative paths, sizes, labels) of a prepared split, the list checked against the manifest."""
    listing = prepared / f"{split}_files.tsv"
    expected = manifest["files"].get(listing.name, {}).get("sha256")
    if not listing.is_file() or sha256(listing) != expected:
        raise ValueError(f"{listing} is missing or does not match the sha256 in {prepared / 'manifest.json'}; "
                         f"re-run `advsoup prepare` to list the files again")
    rows = [line.split("\t") for line in listing.read_text().splitlines()[1:]]
    root = Path(manifest["root"])
    if not root.is_dir():
        raise DataMissingError(f"the dataset root '{root}' listed in {prepared / 'manifest.json'} is not mounted; "
                               f"mount it there, or re-run `advsoup prepare` with data.source_dir=<its path>")
    return root, [r[0] for r in rows], [int(r[1]) for r in rows], [int(r[2]) for r in rows]
