"""Where the published shifted ImageNet sets are, and whether they are laid out as published.

Torch-free and cheap: :func:`check_real_sets` runs at config time, before any
job starts (and on a login node), so it lists folders and never walks the
images. The sets, as their archives extract:

    imagenet-c/<corruption>/<severity 1-5>/<wnid>/*.JPEG   Hendrycks & Dietterich 2019 (the noise, blur,
                                                           weather, digital and extra tars), 50k per setting
    imagenet-a/<wnid>/*.jpg                                Hendrycks et al. 2021, 7,500 images, 200 classes
    imagenet-r/<wnid>/*.jpg                                Hendrycks et al. 2021, 30,000 images, 200 classes
    sketch/<wnid>/*.JPEG                                   Wang et al. 2019 (ImageNet-Sketch.zip), 50,889 images

A set's folder is ``shift.real.<set>.root`` if given, else
``<shift.imagenet_root>/<folder above>``. A set is configured when it is
enabled and its folder resolves; the others are skipped. The class lists
(ImageNet-1k's 1000 wnids, ImageNet-A's and -R's 200) are the ones timm ships.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..config.schema import RealSetConfig, ShiftConfig  # not ..config: config.preflight may import this module
from .names import REAL_SETS

FOLDERS = {"imagenet-c": "imagenet-c", "imagenet-a": "imagenet-a", "imagenet-r": "imagenet-r",
           "imagenet-sketch": "sketch"}
LAYOUTS = {  # inside the set's folder
    "imagenet-c": "<corruption>/<severity 1-5>/<wnid>/*.JPEG (1000 wnid folders per setting)",
    "imagenet-a": "<wnid>/*.jpg (200 wnid folders)",
    "imagenet-r": "<wnid>/*.jpg (200 wnid folders)",
    "imagenet-sketch": "<wnid>/*.JPEG (1000 wnid folders)",
}
SUBSET_SYNSETS = {"imagenet-a": "imagenet_a_synsets.txt", "imagenet-r": "imagenet_r_synsets.txt"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what torchvision's ImageFolder reads, among the published formats


class RealShiftMissing(FileNotFoundError):
    """A configured shifted ImageNet set that is not where the config says, or not in its published layout."""


def config_key(name: str) -> str:
    """The config key of a set: shift.real.imagenet_c for imagenet-c."""
    return f"shift.real.{name.replace('-', '_')}"


def set_config(shift: ShiftConfig, name: str) -> RealSetConfig:
    if name not in REAL_SETS:
        raise ValueError(f"unknown shifted ImageNet set '{name}'; choose one of {REAL_SETS}")
    return getattr(shift.real, name.replace("-", "_"))


def _timm_list(filename: str) -> List[str]:
    # Read from timm's package folder without importing timm (which imports torch): this runs at config time.
    spec = importlib.util.find_spec("timm")
    path = Path(spec.submodule_search_locations[0]) / "data" / "_info" / filename if spec else None
    if path is None or not path.is_file():
        raise RuntimeError(f"timm's class list data/_info/{filename} is missing; install timm>=1.0")
    return path.read_text().split()


def imagenet_synsets() -> List[str]:
    """The 1000 ImageNet-1k wnids in class-index order (sorted, the order timm's models use)."""
    return _timm_list("imagenet_synsets.txt")


def set_wnids(name: str) -> List[str]:
    """The wnids a set's class folders may be named: its 200 classes for ImageNet-A and -R, else all 1000."""
    return _timm_list(SUBSET_SYNSETS[name]) if name in SUBSET_SYNSETS else imagenet_synsets()


def class_indices(name: str) -> Optional[List[int]]:
    """The ImageNet-1k indices of a set's classes, sorted; None for a set of all 1000."""
    if name not in SUBSET_SYNSETS:
        return None
    index = {w: i for i, w in enumerate(imagenet_synsets())}
    return sorted(index[w] for w in set_wnids(name))


def real_set_folders(shift: ShiftConfig) -> Dict[str, Path]:
    """{set: its folder} of every configured set, in REAL_SETS order (nothing is read from disk)."""
    out = {}
    for name in REAL_SETS:
        sub = set_config(shift, name)
        if sub is None:  # blanked: outside the config slice of a job that scores another set
            continue
        if sub.enabled and (sub.root or shift.imagenet_root):
            out[name] = Path(sub.root) if sub.root else Path(shift.imagenet_root) / FOLDERS[name]
    return out


def settings(name: str, folder: Path, shift: ShiftConfig) -> List[Tuple[str, Dict[str, object], Path]]:
    """(set key, what it is, its class-folder parent) of every setting a set's job scores.

    ImageNet-C has one per configured corruption and severity ("imagenet-c/fog-3"); the others one.
    """
    if name != "imagenet-c":
        return [(name, {"kind": name}, folder)]
    c = shift.real.imagenet_c
    return [(f"{name}/{corr}-{sev}", {"kind": "corruption", "corruption": corr, "severity": sev},
             folder / corr / str(sev)) for corr in c.corruptions for sev in c.severities]


def _missing(name: str, folder: Path, what: str) -> RealShiftMissing:
    key = config_key(name)
    return RealShiftMissing(
        f"{name}: {what}. Expected in '{folder}' ({key}.root, or shift.imagenet_root/{FOLDERS[name]}): "
        f"{LAYOUTS[name]}. Extract the published archive there (nothing is downloaded at run time), point "
        f"{key}.root at it, or leave the set out with {key}.enabled=false.")


def _check_classes(name: str, setting: Path, folder: Path, allowed: set) -> None:
    if not setting.is_dir():
        raise _missing(name, folder, f"folder '{setting}' does not exist")
    present = sorted(e.name for e in os.scandir(setting) if e.is_dir())
    if not present:
        raise _missing(name, folder, f"'{setting}' holds no wnid class folder")
    unknown = [w for w in present if w not in allowed]
    if unknown:
        raise _missing(name, folder, f"'{setting}' holds folders that are not {name} classes: {unknown[:5]}")
    first = setting / present[0]  # one class folder looked into: enough to catch an unextracted archive
    if not any(e.name.lower().endswith(IMAGE_SUFFIXES) for e in os.scandir(first)):
        raise _missing(name, folder, f"no image file ({', '.join(IMAGE_SUFFIXES)}) in '{first}'")


def check_real_sets(shift: ShiftConfig, names: Sequence[str] = REAL_SETS) -> Dict[str, Path]:
    """The configured sets' folders (among ``names``), each checked against its published layout; call before
    any job starts.

    Raises RealShiftMissing naming the set, the path and the layout it expected.
    A set that is disabled or has no root (neither its own nor shift.imagenet_root) is skipped.
    """
    folders = {n: f for n, f in real_set_folders(shift).items() if n in names}
    for name, folder in folders.items():
        if not folder.is_dir():
            raise _missing(name, folder, f"folder '{folder}' does not exist")
        allowed = set(set_wnids(name))
        for _, _, setting in settings(name, folder, shift):
            _check_classes(name, setting, folder, allowed)
    return folders
