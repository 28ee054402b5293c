"""Loaders for the real-scale shifted ImageNet test sets, in their published folder layouts.

One root (config key ``shift.imagenet_root``) holds the sets as their archives
extract:

    <root>/imagenet-c/<corruption>/<severity 1-5>/<wnid>/*.JPEG   Hendrycks & Dietterich 2019 (noise/blur/
                                                                  weather/digital/extra tars)
    <root>/imagenet-a/<wnid>/*.jpg                                Hendrycks et al. 2021, 200 classes
    <root>/imagenet-r/<wnid>/*.jpg                                Hendrycks et al. 2021, 200 classes
    <root>/sketch/<wnid>/*.JPEG                                   Wang et al. 2019 (ImageNet-Sketch.zip), 1000

Targets are ImageNet-1k class indices (the sorted-wnid order timm's models use),
so a 1000-way model is scored as is. ImageNet-A and -R cover 200 of the 1000
classes: their ``class_indices`` list those classes, and a model's prediction
is the best of those 200 logits (:func:`predict_labels`), the protocol of the
papers that released them. The class lists are the ones timm ships.
Nothing is downloaded: the sets are large and come under their own licences.
"""
from __future__ import annotations

import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torchvision import transforms
from torchvision.datasets import ImageFolder

from ..config import CORRUPTIONS

LAYOUTS = {
    "imagenet-c": "<root>/imagenet-c/<corruption>/<severity 1-5>/<wnid>/*.JPEG",
    "imagenet-a": "<root>/imagenet-a/<wnid>/*.jpg (200 wnid folders)",
    "imagenet-r": "<root>/imagenet-r/<wnid>/*.jpg (200 wnid folders)",
    "imagenet-sketch": "<root>/sketch/<wnid>/*.JPEG (1000 wnid folders)",
}
FOLDERS = {"imagenet-c": "imagenet-c", "imagenet-a": "imagenet-a", "imagenet-r": "imagenet-r",
           "imagenet-sketch": "sketch"}
SUBSET_SYNSETS = {"imagenet-a": "imagenet_a_synsets.txt", "imagenet-r": "imagenet_r_synsets.txt"}


class RealShiftMissing(FileNotFoundError):
    """A shifted ImageNet set that is not where the config says, or not in its published layout."""


def _timm_list(name: str) -> List[str]:
    data = pkgutil.get_data("timm", f"data/_info/{name}")
    if data is None:
        raise RuntimeError(f"timm does not ship data/_info/{name}; install timm>=1.0")
    return data.decode().split()


def imagenet_synsets() -> List[str]:
    """The 1000 ImageNet-1k wnids in class-index order."""
    return _timm_list("imagenet_synsets.txt")


def _missing(name: str, root: Path, what: str) -> RealShiftMissing:
    return RealShiftMissing(
        f"{name}: {what}. Expected layout under shift.imagenet_root='{root}': {LAYOUTS[name]}. "
        f"Download and extract {name} there (it is not fetched at run time), or set shift.imagenet_root "
        f"to the folder that holds '{FOLDERS[name]}/'.")


class _WnidFolder(ImageFolder):
    """An ImageFolder whose class folders are wnids and whose targets are ImageNet-1k indices."""

    def __init__(self, root: Path, allowed: List[str], transform: Callable, on_unknown: Callable) -> None:
        self._allowed, self._on_unknown = allowed, on_unknown
        super().__init__(str(root), transform=transform)

    def find_classes(self, directory: str):
        present = sorted(e.name for e in os.scandir(directory) if e.is_dir())
        unknown = [w for w in present if w not in self._allowed]
        if unknown or not present:
            raise self._on_unknown(unknown[:5] if unknown else None)
        index = {w: i for i, w in enumerate(imagenet_synsets())}
        return present, {w: index[w] for w in present}


@dataclass
class RealShiftSet:
    name: str
    dataset: ImageFolder
    class_indices: Optional[List[int]]  # ImageNet-1k indices the set covers; None = all 1000
    missing_classes: List[str]  # wnids of the published list without a folder (incomplete extraction)


def eval_transform(img_size: int, resize: bool = True) -> Callable:
    """Resize to img_size/0.875 and centre-crop (the usual ImageNet evaluation); tensors in [0, 1]
    (advsoup models normalise inside). ImageNet-C is already cropped to 224: crop only."""
    steps = [transforms.Resize(int(round(img_size / 0.875)))] if resize else []
    return transforms.Compose(steps + [transforms.CenterCrop(img_size), transforms.ToTensor()])


def load_real_shift(name: str, root: str | os.PathLike, img_size: int = 224, corruption: Optional[str] = None,
                    severity: Optional[int] = None) -> RealShiftSet:
    """One shifted ImageNet set; ImageNet-C needs the corruption and severity."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown shifted ImageNet set '{name}'; choose one of {sorted(LAYOUTS)}")
    if not str(root) or not Path(root).is_dir():
        raise _missing(name, Path(root), "shift.imagenet_root is not set or not a folder")
    root = Path(root)
    folder = root / FOLDERS[name]
    allowed = _timm_list(SUBSET_SYNSETS[name]) if name in SUBSET_SYNSETS else imagenet_synsets()
    if name == "imagenet-c":
        if corruption not in CORRUPTIONS or severity not in (1, 2, 3, 4, 5):
            raise ValueError(f"imagenet-c needs a corruption in {CORRUPTIONS} and a severity 1-5, "
                             f"got {corruption!r}, {severity!r}")
        folder = folder / corruption / str(severity)
    if not folder.is_dir():
        raise _missing(name, root, f"folder '{folder}' does not exist")

    def unknown(wnids: Optional[List[str]]) -> RealShiftMissing:
        return _missing(name, root, f"'{folder}' holds no wnid class folder" if wnids is None else
                        f"'{folder}' holds folders that are not {name} classes: {wnids}")

    try:
        dataset = _WnidFolder(folder, allowed, eval_transform(img_size, resize=name != "imagenet-c"), unknown)
    except FileNotFoundError as exc:  # ImageFolder: class folders without any image
        if isinstance(exc, RealShiftMissing):
            raise
        raise _missing(name, root, f"no image files in '{folder}' ({exc})") from None
    index = {w: i for i, w in enumerate(imagenet_synsets())}
    subset = sorted(index[w] for w in allowed) if name in SUBSET_SYNSETS else None
    return RealShiftSet(name, dataset, subset, sorted(set(allowed) - set(dataset.classes)))


def predict_labels(logits: torch.Tensor, class_indices: Optional[List[int]]) -> torch.Tensor:
    """ImageNet-1k labels predicted from 1000-way logits, restricted to the set's classes if it has a subset."""
    if class_indices is None:
        return logits.argmax(1)
    idx = torch.as_tensor(class_indices, device=logits.device)
    return idx[logits[:, idx].argmax(1)]


def real_shift_sets(root: str | os.PathLike, img_size: int = 224,
                    severities: tuple = (1, 2, 3, 4, 5)) -> Dict[str, RealShiftSet]:
    """Every set found under root: imagenet-c/<corruption>-<severity>, imagenet-a, imagenet-r, imagenet-sketch.

    Sets whose top folder is absent are skipped; a present folder in a wrong layout is an error.
    """
    out: Dict[str, RealShiftSet] = {}
    root = Path(root)
    for name, folder in FOLDERS.items():
        if not (root / folder).is_dir():
            continue
        if name == "imagenet-c":
            for c in CORRUPTIONS:
                for s in severities:
                    if (root / folder / c / str(s)).is_dir():
                        out[f"imagenet-c/{c}-{s}"] = load_real_shift(name, root, img_size, c, s)
        else:
            out[name] = load_real_shift(name, root, img_size)
    if not out:
        raise RealShiftMissing(f"no shifted ImageNet set under shift.imagenet_root='{root}'; expected any of: "
                               + "; ".join(LAYOUTS.values()))
    return out
