"""Evaluation batch by batch, resumable: memory bounded by a batch, a requeued job continues where it stopped.

* :class:`Images`: a split in a fixed order, read batch by batch. The prepared
  arrays (Fashion-MNIST, CIFAR) are held in memory as they always were
  (:class:`TensorImages`); a file dataset (ImageNet) streams through the
  DataLoader path with its workers (:class:`FileImages`), decoding only the
  batch at hand, so 50k validation images never sit in memory at once.
* :class:`Partial`: the results of every finished unit of work (one batch of
  one soup weight: a count of correct images, or per-image robust flags with
  the attack's generator state after it) in ``<output>.partial`` beside the
  output, rewritten atomically after each unit. It is keyed by what the
  results were computed from (the stage's config digest and the checkpoint's
  sha256): a partial file of another config or checkpoint is discarded, never
  mixed in. It is removed once the output is written.
* :class:`Measure`: clean accuracy, PGD/APGD flags and AutoAttack flags of one
  soup weight, unit by unit, skipping the units the partial file holds.

The numbers are those of one uninterrupted pass: the same images in the same
batches, and PGD's random starts from one generator per (split, weight, subset)
seeded with 0, whose state after each batch is saved with it (a resumed
sequence continues from that state). APGD and AutoAttack seed themselves per
call. :func:`attack_batch` and :func:`clean_batch` are the units' work (tests
patch them to interrupt an evaluation).
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from . import autoattack
from .attacks import pgd
from ..atomic import write_json
from ..config import AttackConfig, AutoAttackConfig, DataConfig, EvaluateConfig
from ..logs import progress
from ..models.adapters import AdaptedModel

Batch = Tuple[torch.Tensor, torch.Tensor]


# ---- the images ---------------------------------------------------------------------------------------------

class Images:
    """A split in a fixed order: ``batches(bs, start, stop)`` yields (floats in [0, 1] on the CPU, labels)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def batches(self, batch_size: int, start: int = 0, stop: Optional[int] = None) -> Iterator[Batch]:
        raise NotImplementedError

    def tensors(self, start: int = 0, stop: Optional[int] = None) -> Batch:
        """Images ``start:stop`` held whole (AutoAttack takes its images at once)."""
        xs, ys = zip(*self.batches(256, start, stop))
        return torch.cat(xs), torch.cat(ys)


class TensorImages(Images):
    """Images already in memory (the prepared arrays, as evaluation always held them)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int, start: int = 0, stop: Optional[int] = None) -> Iterator[Batch]:
        stop = len(self.y) if stop is None else min(stop, len(self.y))
        for i in range(start, stop, batch_size):
            j = min(i + batch_size, stop)
            yield self.x[i:j], self.y[i:j]

    def tensors(self, start: int = 0, stop: Optional[int] = None) -> Batch:
        return self.x[start:stop], self.y[start:stop]


class FileImages(Images):
    """A file dataset's split in class-balanced order (test: its first ``size``; ``validation``: the images held
    out of the training list), decoded batch by batch by DataLoader workers with the evaluation transforms; only
    images ``start:stop`` are read."""

    def __init__(self, data: DataConfig, img_size: int, prepared: Path, split: str, size: int) -> None:
        from ..data.loaders import image_dataset

        self.data = data
        self.dataset = image_dataset(data, img_size, prepared, split, size, seed=0, training=False)

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, batch_size: int, start: int = 0, stop: Optional[int] = None) -> Iterator[Batch]:
        from torch.utils.data import Subset

        from ..data.loaders import _loader

        stop = len(self) if stop is None else min(stop, len(self))
        if start >= stop:
            return
        loader = _loader(Subset(self.dataset, range(start, stop)), self.data, 0, batch_size=batch_size,
                         shuffle=False)
        for x, y in loader:
            yield x.float().div_(255.0), y


def open_images(data: DataConfig, img_size: int, prepared: Path, split: str, size: int = 0) -> Images:
    """The split to evaluate on: streamed from files for a file dataset, else the prepared arrays in memory.

    ``validation`` is the training split's held-out images (``data.val_size``, the last of every class:
    :func:`advsoup.data.prepared.split_training`), which training never reads (``size`` unused)."""
    from ..data.loaders import array_split, holds_files

    if holds_files(prepared):
        return FileImages(data, img_size, prepared, split, size)
    return TensorImages(*array_split(data, prepared, split, size).tensors())


# ---- the partial file ---------------------------------------------------------------------------------------

def partial_path(out_file: Path) -> Path:
    return out_file.with_name(out_file.name + ".partial")


def _flags_text(flags: torch.Tensor) -> str:
    return "".join("1" if f else "0" for f in flags.tolist())


def _flags(text: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


def _state_text(gen: torch.Generator) -> str:
    return base64.b64encode(gen.get_state().numpy().tobytes()).decode()


def _state(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def slice_digest(parts: Dict[str, Any]) -> str:
    """sha256 of a job's config slice (dataclasses, dicts; None values left out, as in the stage's digest)."""
    from ..stages import _plain  # torch-free

    return hashlib.sha256(json.dumps(_plain(parts), sort_keys=True).encode()).hexdigest()


class Partial:
    """Finished units of an evaluation, in ``<out_file>.partial`` (None: kept in memory only).

    ``key`` is what the results are computed from; a file with another key is discarded on opening.
    """

    def __init__(self, out_file: Optional[Path], key: Dict[str, Any], log=None) -> None:
        self.path = None if out_file is None else partial_path(out_file)
        self.key, self.log = key, log
        self.units: Dict[str, Any] = {}
        self.rng: Dict[str, Dict[str, Any]] = {}
        self.resumed = 0
        if self.path is None or not self.path.is_file():
            return
        try:
            data = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = {}
        if isinstance(data, dict) and data.get("key") == key:
            self.units, self.rng = data.get("units", {}), data.get("rng", {})
            self.resumed = len(self.units)
            self._say("resuming from %s: %d finished units are not recomputed",
                      self.path, self.resumed)
        else:
            self._say("discarding %s: computed from another config or checkpoint (%s), not %s", self.path,
                      data.get("key") if isinstance(data, dict) else "unreadable", key)
            self.path.unlink()

    def _say(self, msg: str, *args: Any) -> None:
        if self.log:
            self.log.info(msg, *args)

    def get(self, unit: str) -> Any:
        return self.units.get(unit)

    def put(self, unit: str, value: Any, rng: Optional[Tuple[str, Dict[str, Any]]] = None) -> None:
        self.units[unit] = value
        if rng is not None:
            self.rng[rng[0]] = rng[1]
        if self.path is not None:
            write_json(self.path, {"key": self.key, "units": self.units, "rng": self.rng})

    def finish(self) -> None:
        """The output is written: the partial results are not needed any more."""
        if self.path is not None and self.path.is_file():
            self.path.unlink()


# ---- the work of one unit (tests patch these) ---------------------------------------------------------------

def clean_batch(model: AdaptedModel, xb: torch.Tensor, yb: torch.Tensor, w: float) -> int:
    with torch.inference_mode():
        return int((model(xb, w).argmax(1) == yb).sum())


def attack_batch(model: AdaptedModel, xb: torch.Tensor, yb: torch.Tensor, w: float, ev: EvaluateConfig,
                 device: torch.device, gen: torch.Generator, seed: int) -> torch.Tensor:
    """Per image, correct clean and under ``ev.attack`` (PGD from ``gen``, or APGD seeded with ``seed``).

    An ensemble (``apgd-ce+apgd-dlr``) counts an image robust only if it survives every attack; each attack runs
    on the images the previous ones left robust, as AutoAttack runs its attacks (no single loss is the strongest
    for every model: on the study's shared-BN ResNet APGD-CE won, on its dual-BN ResNets APGD-DLR)."""
    methods = ev.attack.method.split("+")
    if len(methods) == 1:
        return _one_attack(model, xb, yb, w, ev.attack, device, gen, seed)
    ok = torch.ones(len(yb), dtype=torch.bool)
    for method in methods:
        left = ok.nonzero().squeeze(1)
        if len(left):
            ok[left] = _one_attack(model, xb[left.to(xb.device)], yb[left.to(yb.device)], w,
                                   replace(ev.attack, method=method), device, gen, seed)
    return ok


def _one_attack(model: AdaptedModel, xb: torch.Tensor, yb: torch.Tensor, w: float, attack: AttackConfig,
                device: torch.device, gen: torch.Generator, seed: int) -> torch.Tensor:
    if attack.method != "pgd":
        return autoattack.apgd_flags(model, xb, yb, w, attack, device, seed)
    x_adv = pgd(model, xb, yb, attack, w=w, generator=gen, keep_fooling=True)
    with torch.no_grad():
        return ((model(xb, w).argmax(1) == yb) & (model(x_adv, w).argmax(1) == yb)).cpu()


# ---- the measurements ---------------------------------------------------------------------------------------

def _done_prefix(partial: Partial, seq: str, n_units: int) -> int:
    """How many units of the sequence, from the first, the partial file holds."""
    b = 0
    while b < n_units and partial.get(f"{seq}/{b}") is not None:
        b += 1
    return b


class Measure:
    """One model's measurements unit by unit; every unit's result goes to ``partial`` as it is finished."""

    def __init__(self, model: AdaptedModel, ev: EvaluateConfig, device: torch.device,
                 partial: Optional[Partial] = None) -> None:
        self.model, self.ev, self.device = model, ev, device
        self.partial = partial if partial is not None else Partial(None, {})

    def clean(self, images: Images, tag: str, w: float, batch_size: int) -> float:
        """Clean accuracy at weight ``w`` on every image, in batches of ``batch_size``."""
        seq, n = f"{tag}/w={w!r}/clean{batch_size}", len(images)
        n_units = -(-n // batch_size)
        first = _done_prefix(self.partial, seq, n_units)
        correct = sum(int(self.partial.get(f"{seq}/{b}")) for b in range(first))
        for b, (xb, yb) in zip(range(first, n_units), images.batches(batch_size, first * batch_size)):
            c = clean_batch(self.model, xb.to(self.device), yb.to(self.device), w)
            self.partial.put(f"{seq}/{b}", c)
            correct += c
        return correct / n

    def robust(self, images: Images, tag: str, w: float, n: int, seed: int = 0, desc: str = "PGD") -> torch.Tensor:
        """Per image of the first ``n``, correct clean and under ``evaluate.attack`` at weight ``w``."""
        bs = self.ev.batch_size
        seq, n_units = f"{tag}/w={w!r}/robust{n}", -(-n // bs)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)  # the same random starts for every weight and run
        first = _done_prefix(self.partial, seq, n_units)
        if 0 < first < n_units:  # continue the generator where the last finished batch left it
            saved = self.partial.rng.get(seq, {})
            if saved.get("after") == first - 1:
                gen.set_state(_state(saved["state"]))
            else:
                first = 0  # no state for that point (cannot happen with files this module wrote): redo
        flags: List[torch.Tensor] = [_flags(self.partial.get(f"{seq}/{b}")) for b in range(first)]
        todo = progress(range(first, n_units), desc=desc, total=n_units - first)
        for b, (xb, yb) in zip(todo, images.batches(bs, first * bs, n)):
            ok = attack_batch(self.model, xb.to(self.device), yb.to(self.device), w, self.ev, self.device, gen,
                              seed)
            self.partial.put(f"{seq}/{b}", _flags_text(ok), rng=(seq, {"after": b, "state": _state_text(gen)}))
            flags.append(ok)
        return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)

    def autoattack(self, images: Images, tag: str, w: float, n: int,
                   cfg: AutoAttackConfig) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """AutoAttack's flags on the first ``n`` images at weight ``w``, and its record: the ``n`` images at once,
        or ``evaluate.autoattack.chunk`` at a time (memory bounded by the chunk; a requeue loses one chunk)."""
        chunk = getattr(cfg, "chunk", None) or n
        seq = f"{tag}/w={w!r}/autoattack{n}/chunk{chunk}"
        flags, rec = [], None
        for c, start in enumerate(range(0, n, chunk)):
            unit = f"{seq}/{c}"
            got = self.partial.get(unit)
            if got is None:
                x, y = images.tensors(start, min(start + chunk, n))
                ok, attack = autoattack.robust_flags(self.model, x, y, w, self.ev.attack, cfg, self.ev.batch_size,
                                                     self.device)
                got = {"flags": _flags_text(ok), "attack": attack}
                self.partial.put(unit, got)
            flags.append(_flags(got["flags"]))
            rec = got["attack"]
        rec = {**rec, "subset": n}
        if getattr(cfg, "chunk", None):
            rec["chunk"] = cfg.chunk
        return torch.cat(flags), rec
