"""Batches of images in [0, 1] for training and evaluation.

* Arrays without augmentation (the demo): indexed in memory, exactly as the
  demo always did (no worker processes, same order, same values).
* Files (ImageNet), or arrays with ``data.augment.enabled``: a DataLoader with
  worker processes, pinned memory and persistent workers, fed by
  :class:`EpochBatchSampler`. Workers return uint8 images (timm's transforms
  with ``use_prefetcher=True`` end in a uint8 tensor): a quarter of the bytes
  through shared memory and the host-to-GPU copy; :func:`to_device` makes
  them floats in [0, 1] on the device. Normalisation lives inside the model
  (AdaptedModel), so attacks work in pixel space.

Augmentation draws its randomness from (seed, epoch, index) for every sample:
whichever worker loads a sample, and after a requeue, it gets the same crop.
"""
from __future__ import annotations

import contextlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data.transforms_factory import transforms_imagenet_eval, transforms_imagenet_train
from torch.utils.data import DataLoader, Dataset, Subset

from ..config import AugmentConfig, DataConfig
from .imagefolder import KIND as FILES, read_file_list
from .prepared import MANIFEST, Split, balanced_order, load_split, load_training_split, training_indices
from .registry import kind
from .sampler import EpochBatchSampler


def train_transform(aug: AugmentConfig, img_size: int) -> Callable:
    """timm's training transforms (RandomResizedCrop, flip, RandAugment, colour jitter), ending in uint8 CHW."""
    return transforms_imagenet_train(
        img_size, scale=tuple(aug.scale), ratio=tuple(aug.ratio), hflip=aug.hflip,
        color_jitter=aug.color_jitter or None, auto_augment=aug.auto_augment or None,
        interpolation=aug.interpolation, use_prefetcher=True)


def eval_transform(aug: AugmentConfig, img_size: int) -> Callable:
    """Resize to img_size / crop_pct, centre crop (timm's evaluation transforms), uint8 CHW."""
    return transforms_imagenet_eval(img_size, crop_pct=aug.eval_crop_pct, use_prefetcher=True)


@contextlib.contextmanager
def _seeded(seed: int, epoch: int, index: int) -> Iterator[None]:
    """python, numpy and torch (CPU) global RNGs set from (seed, epoch, index), then restored.

    timm's crops and RandAugment use python's ``random`` and numpy, torchvision's
    flip uses torch. Restoring matters when loading runs in the training process
    (data.workers=0): dropout and drop-path draw from the same torch generator.
    """
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    a, b = np.random.SeedSequence([seed, epoch, index]).generate_state(2)
    random.seed(int(a))
    np.random.seed(int(b))
    torch.default_generator.manual_seed(int(a) << 32 | int(b))  # CPU only: CUDA generators stay untouched
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


class ImageDataset(Dataset):
    """Samples ``key -> (uint8 CHW image, label)``; key is ``(epoch, index)`` in training, ``index`` otherwise."""

    def __init__(self, read: Callable[[int], Image.Image], labels: Sequence[int], transform: Callable,
                 seed: int) -> None:
        self.read, self.labels, self.transform, self.seed = read, list(labels), transform, seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key) -> Tuple[torch.Tensor, int]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        image = self.read(i)
        with _seeded(self.seed, epoch, i):
            return self.transform(image), self.labels[i]


class _Files:
    """Reads one listed image, refusing a file whose size changed since ``prepare``."""

    def __init__(self, root: Path, paths: List[str], sizes: List[int]) -> None:
        self.root, self.paths, self.sizes = root, paths, sizes

    def __call__(self, i: int) -> Image.Image:
        path = self.root / self.paths[i]
        raw = path.read_bytes()
        if len(raw) != self.sizes[i]:
            raise ValueError(f"'{path}' has {len(raw)} bytes, its file list {self.sizes[i]}: the dataset changed "
                             f"since `advsoup prepare`; prepare it again")
        return Image.open(io.BytesIO(raw)).convert("RGB")


class _Arrays:
    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __call__(self, i: int) -> Image.Image:
        img = self.images[i]
        return Image.fromarray(img[0], "L") if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0))


def _manifest(prepared: Path) -> dict:
    path = prepared / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no prepared data at '{prepared}' (missing {MANIFEST}); "
                                f"run `advsoup prepare --config <experiment>` first")
    return json.loads(path.read_text())


def holds_files(prepared: Path) -> bool:
    """Whether the prepared dataset is a file list (streamed: ImageNet) rather than arrays held in memory; asked of
    the prepared data, which the stages read (the config's ``data.name`` says it before anything is prepared)."""
    return _manifest(prepared).get("kind") == FILES


def order_record(data: DataConfig) -> Dict[str, str]:
    """``{"test_order": ...}`` for a file dataset, whose first N test images (those an attack measures) are the
    first N of :func:`_listed`'s class-balanced order, not of its class-sorted list; ``{}`` for arrays, read in
    their files' order as always.

    Recorded beside the numbers measured on those images, and in the key of an evaluation's partial file: a
    partial file written while the test split was read in list order holds other images' batches, and is discarded.
    """
    if kind(data.name) != FILES:
        return {}
    return {"test_order": "class-balanced: round-robin over the classes (advsoup.data.prepared.balanced_order), "
                          "so any first N spans them"}


def _listed(data: DataConfig, prepared: Path, split: str, labels: Sequence[int], size: int) -> Sequence[int]:
    """Which files of a file dataset's list a split reads, in the order it reads them.

    The list is sorted by class, so the test split is read in the class-balanced order instead
    (:func:`balanced_order`): any prefix of it (the attacked ``evaluate.robust_subset``, AutoAttack's and the
    robustness checks' subsets) spreads over the classes. Test: the first ``size`` (0 = all) of that order, kept
    in it. ``train`` and ``validation``: :func:`advsoup.data.prepared.training_indices`, as for arrays.
    """
    if split == "test":
        return balanced_order(np.asarray(labels))[:size or None]
    return training_indices(np.asarray(labels), split, size, data.train_size,
                            data.val_size or 0,  # None where a stage's slice blanks it: there it decides nothing
                            str(prepared / "train_files.tsv"))


def array_split(data: DataConfig, prepared: Path, split: str, size: int) -> Split:
    """A dataset held as arrays: ``test`` (the class-balanced first ``size``, 0 = all, in stored order) or a
    training split (``train``'s first ``size``, ``validation``: :func:`advsoup.data.prepared.training_indices`)."""
    if split == "test":
        return load_split(prepared, "test", size)
    return load_training_split(prepared, split, size, data.train_size, data.val_size or 0)


def image_dataset(data: DataConfig, img_size: int, prepared: Path, split: str, size: int, seed: int,
                  training: bool) -> ImageDataset:
    """The (class-balanced first ``size`` of the) split as an ImageDataset with training or evaluation transforms.

    ``validation`` is held out of the training split (:func:`advsoup.data.prepared.training_indices`).
    """
    manifest = _manifest(prepared)
    if manifest.get("kind") == FILES:
        root, paths, sizes, labels = read_file_list(prepared, manifest, "test" if split == "test" else "train")
        keep = _listed(data, prepared, split, labels, size)
        read = _Files(root, [paths[i] for i in keep], [sizes[i] for i in keep])
        labels = [labels[i] for i in keep]
    else:
        s = array_split(data, prepared, split, size)
        read, labels = _Arrays(s.images), s.labels.tolist()
    aug = data.augment
    if training and aug.enabled:
        transform = train_transform(aug, img_size)
    elif manifest.get("kind") == FILES:
        transform = eval_transform(aug, img_size)
    else:
        transform = _to_tensor  # prepared arrays already have the model's size
    return ImageDataset(read, labels, transform, seed)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    arr = np.asarray(image)
    return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())


def _loader(dataset: Dataset, data: DataConfig, seed: int, **kw) -> DataLoader:
    workers = data.workers
    return DataLoader(dataset, num_workers=workers, pin_memory=data.pin_memory and torch.cuda.is_available(),
                      persistent_workers=data.persistent_workers and workers > 0,
                      # its own generator: creating an iterator then draws nothing from the global torch RNG,
                      # which dropout uses (a resumed run would otherwise diverge)
                      generator=torch.Generator().manual_seed(seed), **kw)


@dataclass
class TrainBatches:
    """One rank's training batches: ``epoch(e, first)`` yields (images, labels) from global batch ``first`` on."""

    sampler: EpochBatchSampler
    n: int
    _memory: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    _loader: Optional[DataLoader] = None

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def epoch(self, epoch: int, first: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch, first)
        if self._loader is not None:
            yield from self._loader
            return
        images, labels = self._memory
        for idx in self.sampler:
            yield images[idx], labels[idx]


def train_batches(data: DataConfig, img_size: int, prepared: Path, seed: int, batch_size: int,
                  rank: int = 0, world_size: int = 1) -> TrainBatches:
    if not holds_files(prepared) and not data.augment.enabled:
        images, labels = array_split(data, prepared, "train", data.train_size).tensors()
        return TrainBatches(EpochBatchSampler(len(labels), batch_size, seed, rank, world_size), len(labels),
                            _memory=(images, labels))
    dataset = image_dataset(data, img_size, prepared, "train", data.train_size, seed, training=True)
    sampler = EpochBatchSampler(len(dataset), batch_size, seed, rank, world_size, keyed=True)
    return TrainBatches(sampler, len(dataset), _loader=_loader(dataset, data, seed, batch_sampler=sampler))


def eval_loader(data: DataConfig, img_size: int, prepared: Path, split: str, size: int,
                batch_size: int, start: int = 0, stop: Optional[int] = None) -> DataLoader:
    """The split in order (evaluation transforms), as uint8 batches: for datasets too large to hold whole.

    ``start``/``stop``: only images ``start:stop`` of that order (a resumed evaluation skips what it finished
    without decoding it); batches are cut from ``start``.
    """
    dataset = image_dataset(data, img_size, prepared, split, size, seed=0, training=False)
    if start or stop is not None:
        dataset = Subset(dataset, range(start, len(dataset) if stop is None else min(stop, len(dataset))))
    return _loader(dataset, data, 0, batch_size=batch_size, shuffle=False)


def eval_tensors(data: DataConfig, img_size: int, prepared: Path, split: str,
                 size: int, first: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """A split as (floats in [0, 1], labels), held whole: the prepared arrays as they are, or the first ``size``
    of a file dataset's class-balanced order decoded at evaluation size. ``first`` > 0 keeps only the first
    ``first`` images (a file dataset decodes no more: ImageNet's 50k validation images are 30 GB as floats).
    The evaluate and soups stages stream instead (:class:`advsoup.robust.stream.FileImages`)."""
    if not holds_files(prepared):
        x, y = array_split(data, prepared, split, size).tensors()
        return (x[:first], y[:first]) if first else (x, y)
    batches = list(eval_loader(data, img_size, prepared, split, size, batch_size=256, stop=first or None))
    return torch.cat([x for x, _ in batches]).float().div_(255.0), torch.cat([y for _, y in batches])


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device,
              channels_last: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Non-blocking copies (from pinned memory); uint8 images become floats in [0, 1] on the device."""
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y
