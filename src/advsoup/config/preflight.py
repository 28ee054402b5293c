"""Checks the whole config decides but the schema cannot, run before any job starts.

:func:`validate` checks each value on its own, layer by layer. These checks
need the complete config (which runs attack, how many images there are) or
the machine (can the output folders be written): without them the mistake
shows up inside a job, minutes or a queue wait later, as a traceback that
names no key, or never (co-training on a zero-step attack trains the
adversarial half on noise).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from ..data.sources import TRAIN_IMAGES
from .schema import Config, ConfigError, _check

ATTACKED = ("adversarial", "cotrain")  # trainings whose batches go through train.attack


def _check_attack(cfg: Config, source: str) -> None:
    attacked = [name for name, run in cfg.runs.items() if run.training in ATTACKED]
    if not attacked:
        return
    a, who = cfg.train.attack, f"runs.{attacked[0]} ({cfg.runs[attacked[0]].training})"
    _check(a.steps >= 1, source, "train.attack.steps",
           f"0 steps: {who} would train its adversarial half on random noise; set train.attack.steps >= 1")
    _check(a.eps > 0, source, "train.attack.eps",
           f"eps 0: {who} would train on unperturbed images as if they were adversarial; set train.attack.eps > 0")
    _check(a.steps * a.step_size >= a.eps, source, "train.attack.step_size",
           f"steps * step_size = {a.steps * a.step_size:g} < eps = {a.eps:g}: the attack {who} trains on cannot "
           f"reach the edge of the eps-ball; raise train.attack.steps or train.attack.step_size")


def _check_sizes(cfg: Config, source: str) -> None:
    d, t = cfg.data, cfg.train
    total = TRAIN_IMAGES.get(d.name)  # None: a dataset whose size is known only once read
    _check(total is None or d.train_size + d.val_size <= total, source, "data.train_size",
           f"data.train_size={d.train_size} + data.val_size={d.val_size} exceed the {total} training images of "
           f"{d.name}; lower them")
    # train_size 0 with a validation split (a file dataset's; the schema refuses it for arrays): all but the split
    _check(total is None or d.train_size or d.val_size < total, source, "data.val_size",
           f"{d.val_size} would hold out all the {total} training images of {d.name} (data.train_size: 0 trains on "
           f"the others); lower data.val_size")
    images = d.train_size or (total and total - d.val_size)
    held_out = not d.train_size and d.val_size
    of = ("data.train_size" if d.train_size else
          f"{d.name}'s {total} minus data.val_size={d.val_size}" if held_out else d.name)
    _check(images is None or t.batch_size <= images, source, "train.batch_size",
           f"{t.batch_size} exceeds the {images} training images ({of}): not one batch per epoch; lower "
           f"train.batch_size" + (" or data.val_size" if held_out else ""))
    for name, run in cfg.runs.items():  # a run's own training set (runs.<name>.train_size) obeys the same limits
        if run.train_size is None:
            continue
        key = f"runs.{name}.train_size"
        _check(total is None or run.train_size + d.val_size <= total, source, key,
               f"{run.train_size} + data.val_size={d.val_size} exceed the {total} training images of {d.name} (the "
               f"validation split is held out of the same order); lower it to at most {(total or 0) - d.val_size}")
        _check(t.batch_size <= run.train_size, source, key,
               f"{run.train_size} images are fewer than train.batch_size={t.batch_size}: not one batch per epoch; "
               f"raise it or lower train.batch_size")


def _unwritable(folder: Path) -> Optional[str]:
    """Why files cannot be made in ``folder`` (created as needed later), or None. Makes nothing that stays."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"'{probe}' is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=probe):  # an unnamed file on Linux: nothing to clean up if killed
            pass
    except OSError as exc:
        return f"cannot write in '{probe}' ({exc.strerror})"
    return None


def _check_folders(cfg: Config, source: str) -> None:
    for key, value in (("results_dir", cfg.results_dir), ("launcher.log_dir", cfg.launcher.log_dir),
                       ("data.prepared_dir", cfg.data.prepared_dir)):
        if not value:  # empty: the default place under results_dir, checked with it
            continue
        why = _unwritable(Path(value))
        _check(why is None, source, key, f"'{value}': {why}; choose a folder you can write or fix its permissions")


def preflight(cfg: Config, source: str) -> None:
    """Every check the config alone decides; ConfigError naming the key and ``source`` (the experiment file).

    (An unknown data.name is refused earlier, by the schema's validate.)
    """
    _check_attack(cfg, source)
    _check_sizes(cfg, source)
    _check_folders(cfg, source)
    _check_real_shifts(cfg, source)


def _check_real_shifts(cfg: Config, source: str) -> None:
    """A configured real shift set (ImageNet-C/-A/-R/-Sketch) must be where the config says, in its layout."""
    from ..shift.layout import RealShiftMissing, check_real_sets

    try:
        folders = check_real_sets(cfg.shift)
    except RealShiftMissing as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _check(not folders or cfg.model.num_classes == 1000, source, "model.num_classes",
           f"{cfg.model.num_classes}: the published shifted ImageNet sets configured ({', '.join(folders)}) score "
           f"1000-way ImageNet models; leave them out (shift.imagenet_root: '' and no shift.real.<set>.root) for "
           f"an experiment on another dataset")
