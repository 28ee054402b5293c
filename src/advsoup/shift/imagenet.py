"""The published shifted ImageNet sets as datasets, and the 200-class restriction of ImageNet-A and -R.

Where the sets are and their layouts: advsoup.shift.layout. Targets are
ImageNet-1k class indices (the sorted-wnid order timm's models use), so a
1000-way model is scored as is. ImageNet-A and -R cover 200 of the 1000
classes: a model's logits are restricted to those 200 (:func:`restrict_logits`)
before the prediction and the loss are taken, the protocol of the papers that
released them (the scoring in advsoup.shift.adapt applies it). Nothing is downloaded: the sets are large and come under their
own licences.
"""
from __future__ import annotations

import os
from typing import Callable, List, Optional

import numpy as np
import torch
from torchvision import transforms
from torchvision.datasets import ImageFolder

from ..data.prepared import balanced_subset
from .adapt import restrict_logits
from .layout import RealShiftMissing, imagenet_synsets


class WnidFolder(ImageFolder):
    """An ImageFolder whose class folders are wnids and whose targets are ImageNet-1k indices."""

    def find_classes(self, directory: str):
        index = {w: i for i, w in enumerate(imagenet_synsets())}
        present = sorted(e.name for e in os.scandir(directory) if e.is_dir())
        unknown = [w for w in present if w not in index]
        if unknown or not present:
            raise RealShiftMissing(f"'{directory}' must hold ImageNet-1k wnid class folders only; "
                                   f"found {unknown[:5] if unknown else 'none'} (advsoup.shift.layout)")
        return present, {w: index[w] for w in present}


def eval_transform(img_size: int, corrupted: bool) -> Callable:
    """The usual ImageNet evaluation: resize to img_size/0.875 and centre-crop; tensors in [0, 1] (advsoup
    models normalise inside). ImageNet-C was already resized and cropped to 224 before it was corrupted:
    it is only resized to img_size (a no-op at 224)."""
    resize = img_size if corrupted else int(round(img_size / 0.875))
    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(img_size), transforms.ToTensor()])


def load_setting(folder: os.PathLike, img_size: int, corrupted: bool, subset: int,
                 seed: int) -> torch.utils.data.Dataset:
    """One setting's images (a folder of wnid class folders); subset > 0 keeps a class-balanced subset.

    The subset depends on (the sorted file list, seed) only: every run, and
    every ImageNet-C corruption and severity (the same validation images),
    is scored on the same images.
    """
    dataset = WnidFolder(str(folder), transform=eval_transform(img_size, corrupted))
    if not subset or subset >= len(dataset):
        return dataset
    idx = balanced_subset(np.asarray(dataset.targets), subset, seed=seed)
    return torch.utils.data.Subset(dataset, idx.tolist())


def predict_labels(logits: torch.Tensor, class_indices: Optional[List[int]]) -> torch.Tensor:
    """ImageNet-1k labels predicted from 1000-way logits, restricted to the set's classes if it has a subset."""
    return restrict_logits(logits, class_indices).argmax(1)
