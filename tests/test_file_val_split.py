"""A held-out validation split for a file dataset (ImageNet read from folders): data.val_size: N holds out the last
N/classes images of every class of the training list (for equal classes the last N of its class-balanced order),
training never reads them (data.train_size: 0 = all but them), and the training validation pass and the soups sweep
stream them with the evaluation transforms. Generated ImageFolder (test_scale's fixture: 10 classes x 20 training
JPEGs), seconds each; the split on unequal classes (ImageNet's 732 to 1300) on label arrays."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from advsoup import checkpoint as ckpt
from advsoup.config import ConfigError, Paths, load_config
from advsoup.config.preflight import preflight
from advsoup.data import loaders
from advsoup.data.prepared import balanced_order, prepare, split_training
from advsoup.models import build_model
from advsoup.report.aggregate import _soup_choices
from advsoup.robust import stream
from advsoup.robust.evaluate import EvalJob, run_evaluation
from advsoup.stages import config_digest, config_slice
from advsoup.train import TrainJob, train
from test_eval_stream import _perturbed
from test_scale import CLASSES, IMAGENET, PER_CLASS, TINY, image_folder  # noqa: F401  (image_folder is a fixture)

N_TRAIN = CLASSES * PER_CLASS
VAL = 30


def _cfg(tmp_path, source, *overrides: str):
    return load_config([TINY], [f"results_dir={tmp_path}/results", f"data.prepared_dir={tmp_path}/prepared",
                                "data.name=imagenet", f"data.source_dir={source}", "launcher.executor=inline",
                                *IMAGENET, "data.train_size=0", f"data.val_size={VAL}", *overrides])


def _prepared(cfg):
    prepare(cfg.data, Paths(cfg).prepared)
    return Paths(cfg).prepared


def _listed(prepared):
    """The training list's paths and labels, in its order."""
    rows = [line.split("\t") for line in (prepared / "train_files.tsv").read_text().splitlines()[1:]]
    return [r[0] for r in rows], np.array([int(r[2]) for r in rows])


def _held_out(prepared, n: int = VAL):
    """The last n of the training list's class-balanced order, in that order (the fixture's classes are equal in
    size: for unequal ones, the last n/classes of each, see split_training)."""
    paths, labels = _listed(prepared)
    return [paths[i] for i in balanced_order(labels)[len(labels) - n:]]


def _slice(cfg, stage: str, run_id: str = "token-s0"):
    return SimpleNamespace(**config_slice(cfg, stage, run_id))


def test_training_never_reads_a_held_out_file_and_train_size_0_is_all_the_others(tmp_path, image_folder,
                                                                                 monkeypatch):
    cfg = _cfg(tmp_path, image_folder, "data.workers=0")  # loading in this process: every read is seen
    prepared = _prepared(cfg)
    held = set(_held_out(prepared))
    read = []
    files_call = loaders._Files.__call__

    def reading(self, i):
        read.append(self.paths[i])
        return files_call(self, i)

    monkeypatch.setattr(loaders._Files, "__call__", reading)
    s = _slice(cfg, "train")
    paths = Paths(cfg)
    train(TrainJob("token-s0", s.run, s.seed, s.data, s.model, s.train, prepared, paths.run_dir("token-s0"),
                   paths.history_file("token-s0")))
    # one epoch of 170 images in batches of 20 (the last 10 dropped, as every epoch drops its incomplete batch)
    assert len(read) == (N_TRAIN - VAL) // 20 * 20 and len(set(read)) == len(read)
    assert not held & set(read)
    assert ckpt.load_model_meta(paths.run_dir("token-s0"))["train_images"] == N_TRAIN - VAL

    # every epoch's samples, whatever data.train_size: the training set and the validation split never meet
    for train_size, n in ((0, N_TRAIN - VAL), (100, 100), (N_TRAIN - VAL, N_TRAIN - VAL)):
        data = dataclasses.replace(cfg.data, train_size=train_size)
        batches = loaders.train_batches(data, 32, prepared, seed=0, batch_size=10)
        dataset = batches._loader.dataset
        assert batches.n == len(dataset.read.paths) == n
        for epoch in range(2):
            batches.sampler.set_epoch(epoch)
            seen = {dataset.read.paths[j] for batch in batches.sampler for _, j in batch}
            assert len(seen) == n // 10 * 10 and not held & seen
        assert not held & set(dataset.read.paths)
        assert train_size or set(dataset.read.paths) | held == set(_listed(prepared)[0])


def test_the_validation_split_is_the_last_n_of_the_balanced_order_streamed_with_the_eval_transform(tmp_path,
                                                                                                   image_folder):
    cfg = _cfg(tmp_path, image_folder)
    prepared = _prepared(cfg)
    for train_size in (0, 100):  # the same images whatever the training set takes from the front of the order
        data = dataclasses.replace(cfg.data, train_size=train_size)
        val = stream.open_images(data, 32, prepared, "validation")
        assert isinstance(val, stream.FileImages) and len(val) == VAL
        assert val.dataset.read.paths == _held_out(prepared)
    _, labels = _listed(prepared)
    assert val.dataset.labels == labels[balanced_order(labels)[-VAL:]].tolist()
    assert len(set(val.dataset.labels[:CLASSES])) == CLASSES  # a prefix (the attacked robust_subset) spans the classes
    # batch by batch, evaluation size (resize + centre crop), floats in [0, 1]
    batches = list(val.batches(8))
    assert [len(y) for _, y in batches] == [8, 8, 8, 6]
    assert all(x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
               for x, _ in batches)
    assert torch.equal(torch.cat([y for _, y in batches]), torch.tensor(val.dataset.labels))

    # evaluate.train_subset measures training images only, never reaching the validation split
    for size, n in ((0, N_TRAIN - VAL), (N_TRAIN, N_TRAIN - VAL), (50, 50)):
        measured = loaders.image_dataset(cfg.data, 32, prepared, "train", size, seed=0, training=False)
        assert len(measured) == n and not set(_held_out(prepared)) & set(measured.read.paths)

    # val_size is in the training stage's digest only where it picks the training images (a file dataset's
    # train_size 0)
    more = _cfg(tmp_path, image_folder, f"data.val_size={VAL + 10}")
    assert config_digest(cfg, "train", "token-s0") != config_digest(more, "train", "token-s0")
    fixed = [_cfg(tmp_path, image_folder, "data.train_size=100", f"data.val_size={v}") for v in (VAL, VAL + 10)]
    assert config_digest(fixed[0], "train", "token-s0") == config_digest(fixed[1], "train", "token-s0")


def test_the_training_validation_pass_streams_the_held_out_files(tmp_path, image_folder):
    cfg = _cfg(tmp_path, image_folder, "train.val_every=1", "data.workers=0")
    prepared = _prepared(cfg)
    s = _slice(cfg, "train")
    paths = Paths(cfg)
    train(TrainJob("token-s0", s.run, s.seed, s.data, s.model, s.train, prepared, paths.run_dir("token-s0"),
                   paths.history_file("token-s0")))
    header, row = paths.history_file("token-s0").read_text().splitlines()
    values = dict(zip(header.split(","), row.split(",")))
    assert all(0 <= float(values[k]) <= 1 for k in ("val_acc_w0", "val_acc_w1"))


def test_the_soups_sweep_on_the_file_validation_split_chooses_a_soup_that_is_not_an_oracle(tmp_path, image_folder):
    cfg = _cfg(tmp_path, image_folder, "data.workers=2", "evaluate.batch_size=8", "evaluate.robust_subset=16",
               "evaluate.attack.steps=1", "evaluate.attack.eps=0.004", "evaluate.attack.step_size=0.004")
    prepared = _prepared(cfg)
    s = _slice(cfg, "soups")
    paths = Paths(cfg)
    job = EvalJob("token-s0", s.run, s.seed, s.data, s.model, s.evaluate, prepared, paths.run_dir("token-s0"),
                  paths.soup_file("token-s0"), list(s.evaluate.soup_weights))
    model = _perturbed(build_model(job.model, "vit", "token"), 0)  # the soup weight changes the predictions
    job.run_dir.mkdir(parents=True)
    ckpt.save_model(job.run_dir, model, {"family": "vit", "adapter": "token"})
    out = run_evaluation(job)
    assert out["validation_images"] == VAL and out["test_images"] == CLASSES * 4
    assert [r["w"] for r in out["validation"]] == [0.0, 0.5, 1.0]
    assert all(0 <= r[k] <= 1 for r in out["validation"] for k in ("clean_acc", "robust_acc"))
    assert json.loads(job.out_file.read_text())["validation"] == out["validation"]
    choices = _soup_choices(out)
    assert choices["val_soup"]["chosen_on"] == f"validation ({VAL} held-out training images)"
    assert choices["val_soup"]["w"] in (0.0, 0.5, 1.0) and "oracle" not in choices["val_soup"]["chosen_on"]


def test_an_impossible_val_size_is_refused_naming_data_val_size(tmp_path, image_folder):
    cfg = _cfg(tmp_path, image_folder, f"data.val_size={N_TRAIN}")  # nothing left to train on
    prepared = _prepared(cfg)
    with pytest.raises(ValueError, match=r"data\.val_size=200.*200 training images.*lower data\.val_size"):
        loaders.train_batches(cfg.data, 32, prepared, seed=0, batch_size=10)
    with pytest.raises(ValueError, match=r"data\.val_size"):
        stream.open_images(cfg.data, 32, prepared, "validation")
    beside = dataclasses.replace(cfg.data, train_size=180, val_size=VAL)  # 180 + 30 > 200
    with pytest.raises(ValueError, match=r"data\.val_size=30.*data\.train_size=180"):
        stream.open_images(beside, 32, prepared, "validation")
    # before any job: more than ImageNet's 1,281,167 training images, or not one batch left beside them
    for val_size, names in ((1_281_167, r"'data\.val_size'.*lower data\.val_size"),
                            (1_281_167 - 10, r"'train\.batch_size'.*10 training images.*or data\.val_size")):
        with pytest.raises(ConfigError, match=names):
            preflight(_cfg(tmp_path, image_folder, f"data.val_size={val_size}"), "exp.yaml")


def _unequal_labels():
    """ImageNet's shape in small: classes of unequal size (here 12 to 40 images), listed shuffled."""
    sizes = [12, 17, 25, 33, 40]
    return np.random.default_rng(3).permutation(np.concatenate([np.full(s, c) for c, s in enumerate(sizes)])), sizes


def test_the_validation_split_holds_every_class_when_the_classes_differ_in_size():
    labels, sizes = _unequal_labels()
    for train_size in (0, 40):
        train, val = split_training(labels, train_size, 23, "imagenet train/")
        # 23 over 5 classes: 4 of each, the 3 left over to the last classes; the last 23 of the round-robin order
        # held only the two largest classes
        assert np.bincount(labels[val], minlength=5).tolist() == [4, 4, 5, 5, 5]
        assert np.bincount(labels[balanced_order(labels)[-23:]], minlength=5).tolist() == [0, 0, 0, 8, 15]
        assert not set(train) & set(val)
        assert len(train) == (train_size or len(labels) - 23)
        # training's prefix spans the classes while they last (round-robin over the non-held images)
        assert sorted(np.bincount(labels[train[:35]], minlength=5)) == [7] * 5
    # train_size N is the first N of the balanced order whatever val_size (a val_size edit retrains nothing), and
    # refused where those reach into the held-out images: class 0 keeps 12 - 4 = 8 images, so 8 rounds of 5 fit
    for val_size in (5, 23):
        assert np.array_equal(split_training(labels, 40, val_size, "x")[0], balanced_order(labels)[:40])
    with pytest.raises(ValueError, match=r"data\.train_size=41: .*reach into the data\.val_size=23 validation split"
                                         r".*12 to 40 images.*lower data\.train_size to at most 40, or set it to 0"):
        split_training(labels, 41, 23, "imagenet train/")
    # the file datasets' reader gives training any prefix of that order, never a held-out image
    data = SimpleNamespace(val_size=23, train_size=0)
    for size in (0, 30, len(labels) - 23):
        read = loaders._listed(data, Path("prepared"), "train", labels, size)
        assert len(read) == (size or len(labels) - 23) and not set(read) & set(val)
    assert list(loaders._listed(data, Path("prepared"), "validation", labels, 0)) == list(val)


def test_with_equal_classes_the_split_is_the_ends_of_the_balanced_order():
    # Fashion-MNIST's and CIFAR's case (and the study's 20,000 + 1,000): the same images as before ImageNet's fix
    labels = np.random.default_rng(4).permutation(np.repeat(np.arange(10), 600))
    for train_size, val_size in ((2000, 100), (0, 100), (2000, 103), (5900, 100)):
        train, val = split_training(labels, train_size, val_size, "x")
        order = balanced_order(labels)
        assert np.array_equal(val, order[len(order) - val_size:])
        assert np.array_equal(train, order[:train_size or len(order) - val_size])


def test_a_class_too_small_to_keep_a_training_image_is_refused_naming_data_val_size():
    labels, sizes = _unequal_labels()
    with pytest.raises(ValueError, match=r"data\.val_size=60: class 0 .* has 12 training images.*lower data\.val_size "
                                         r"to below 60"):
        split_training(labels, 0, 60, "imagenet train/")


def test_an_array_dataset_with_unequal_classes_trains_beside_its_validation_split(tmp_path, monkeypatch):
    # arrays and files take the same images (advsoup.data.prepared.training_indices): training never reads the
    # held-out images, whatever the class sizes, and train_size 0 is every image but them
    from advsoup.data import prepared as prepared_module

    labels, _ = _unequal_labels()
    images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1).repeat(4, axis=2)  # pixel = index
    raw = {"train_images": images, "train_labels": labels, "test_images": images[:10], "test_labels": labels[:10]}
    monkeypatch.setattr(prepared_module, "raw_arrays", lambda data: (raw, list("abcde"), {}))
    cfg = load_config([TINY], [f"data.prepared_dir={tmp_path}/prepared", "data.train_size=0", "data.val_size=23"])
    prepared = Paths(cfg).prepared
    prepare(cfg.data, prepared)
    _, held = split_training(labels, 0, 23, str(prepared))
    val = stream.open_images(cfg.data, 28, prepared, "validation")
    val_index = sorted(int(v) for x, _ in val.batches(100) for v in (x[:, 0, 0, 0] * 255).round())
    assert val_index == sorted(held) and np.bincount(labels[val_index], minlength=5).tolist() == [4, 4, 5, 5, 5]
    for train_size in (0, 40):
        data = dataclasses.replace(cfg.data, train_size=train_size)
        trained = loaders.train_batches(data, 28, prepared, seed=0, batch_size=8)
        read = {int(v) for x, _ in trained.epoch(0) for v in (x[:, 0, 0, 0] * 255).round()}
        assert len(read) == trained.n == (train_size or len(labels) - 23) and not read & set(held)
    with pytest.raises(ValueError, match=r"data\.train_size=41: .*lower data\.train_size to at most 40"):
        loaders.train_batches(dataclasses.replace(cfg.data, train_size=41), 28, prepared, seed=0, batch_size=8)
    # val_size decides an array dataset's training images where train_size is 0, and only there
    more = load_config([TINY], ["data.train_size=0", "data.val_size=24"])
    assert config_digest(cfg, "train", "token-s0") != config_digest(more, "train", "token-s0")
    fixed = [load_config([TINY], ["data.train_size=40", f"data.val_size={v}"]) for v in (23, 24)]
    assert config_digest(fixed[0], "train", "token-s0") == config_digest(fixed[1], "train", "token-s0")
