"""A file dataset's test split (ImageNet's val/, listed sorted by class) is read in the class-balanced order: every
first N the evaluation attacks (evaluate.robust_subset, AutoAttack's subset, the robustness checks', data.test_size)
spans the classes, the whole split's clean accuracy is that of the list order, and an interrupted evaluation resumes
in that order. Generated ImageFolder (test_scale's fixture: 10 classes x 4 val JPEGs), seconds each."""
from __future__ import annotations

import json
import os
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from advsoup import checkpoint as ckpt
from advsoup.config import Paths, load_config
from advsoup.data import imagefolder
from advsoup.data.loaders import eval_tensors
from advsoup.data.prepared import balanced_subset, prepare
from advsoup.models import build_model
from advsoup.robust import stream
from advsoup.robust.evaluate import EvalJob, load_run, partial_key, run_evaluation
from advsoup.stages import config_slice
from test_eval_stream import _perturbed
from test_scale import CLASSES, IMAGENET, TINY, image_folder  # noqa: F401  (image_folder is a fixture)

N_TEST = CLASSES * 4
CPU = torch.device("cpu")


def _cfg(tmp_path, source, *overrides: str):
    return load_config([TINY], [f"results_dir={tmp_path}/results", f"data.prepared_dir={tmp_path}/prepared",
                                "data.name=imagenet", f"data.source_dir={source}", "launcher.executor=inline",
                                *IMAGENET, "data.val_size=0", "data.test_size=0", "data.workers=0",
                                "evaluate.batch_size=4", f"evaluate.robust_subset={CLASSES}",
                                f"evaluate.autoattack.subset={CLASSES}", "evaluate.autoattack.chunk=4",
                                "evaluate.attack.steps=1", "evaluate.attack.eps=0.004",
                                "evaluate.attack.step_size=0.004", *overrides])


def _listed(prepared):
    """The test list's paths and labels, in its (class-sorted) order."""
    rows = [line.split("\t") for line in (prepared / "test_files.tsv").read_text().splitlines()[1:]]
    return [r[0] for r in rows], np.array([int(r[2]) for r in rows])


def _evaluate_job(cfg, out: str = "eval.json") -> EvalJob:
    s = SimpleNamespace(**config_slice(cfg, "evaluate", "token-s0"))
    paths = Paths(cfg)
    job = EvalJob("token-s0", s.run, s.seed, s.data, s.model, s.evaluate, paths.prepared, paths.run_dir("token-s0"),
                  paths.metrics_dir("token-s0") / out)
    if not job.run_dir.exists():
        job.run_dir.mkdir(parents=True)
        ckpt.save_model(job.run_dir, _perturbed(build_model(job.model, "vit", "token"), 0),
                        {"family": "vit", "adapter": "token"})
    return job


class Attacked:
    """The attack and AutoAttack replaced by cheap stand-ins that note the labels they are given; an exception
    before attacked batch number ``fail_at``."""

    def __init__(self, monkeypatch, fail_at: int = 0) -> None:
        self.pgd, self.autoattack, self.fail_at = [], [], fail_at

        def attack_batch(model, xb, yb, w, ev, device, gen, seed):
            if self.fail_at and len(self.pgd) + 1 == self.fail_at:
                raise RuntimeError("preempted (injected)")
            self.pgd.append(yb.tolist())
            return torch.rand(len(yb), generator=gen, device=device) < 0.3 + 0.4 * w

        def robust_flags(model, x, y, w, attack, cfg, batch_size, device):
            self.autoattack.append(y.tolist())
            return torch.ones(len(y), dtype=torch.bool), {"name": "stand-in"}

        monkeypatch.setattr(stream, "attack_batch", attack_batch)
        monkeypatch.setattr(stream.autoattack, "robust_flags", robust_flags)


def test_every_first_k_test_images_of_a_class_sorted_folder_span_the_classes(tmp_path, image_folder, monkeypatch):
    cfg = _cfg(tmp_path, image_folder)
    prepare(cfg.data, Paths(cfg).prepared)
    paths, labels = _listed(Paths(cfg).prepared)
    assert (np.diff(labels) >= 0).all() and len(set(labels[:CLASSES])) < CLASSES  # the list is sorted by class
    images = stream.open_images(cfg.data, 32, Paths(cfg).prepared, "test", 0)
    order = images.dataset.labels
    assert sorted(images.dataset.read.paths) == sorted(paths) and len(order) == N_TEST  # every image, once
    for k in range(1, N_TEST + 1):  # round-robin: each class in every prefix as often as any other, up to one
        counts = Counter(order[:k])
        assert max(counts.values()) - min(counts.get(c, 0) for c in range(CLASSES)) <= 1, k
    _, y = eval_tensors(cfg.data, 32, Paths(cfg).prepared, "test", 0, first=CLASSES)  # the robustness checks' read
    assert sorted(y.tolist()) == list(range(CLASSES))

    # data.test_size: the same class-balanced images as before, now in that order
    sized = stream.open_images(cfg.data, 32, Paths(cfg).prepared, "test", 2 * CLASSES)
    assert sorted(sized.dataset.read.paths) == sorted(paths[i] for i in balanced_subset(labels, 2 * CLASSES))
    assert sorted(sized.dataset.labels[:CLASSES]) == list(range(CLASSES))

    # a function of the list, not of the order the file system lists a folder in
    reversed_listing = SimpleNamespace(scandir=lambda p: iter(sorted(os.scandir(p), key=lambda e: e.name)[::-1]))
    monkeypatch.setattr(imagefolder, "os", reversed_listing)
    again = _cfg(tmp_path / "again", image_folder)
    prepare(again.data, Paths(again).prepared)
    assert stream.open_images(again.data, 32, Paths(again).prepared, "test", 0).dataset.read.paths \
        == images.dataset.read.paths


def test_the_evaluate_stage_attacks_every_class_and_its_clean_accuracy_is_the_list_orders(tmp_path, image_folder,
                                                                                          monkeypatch):
    cfg = _cfg(tmp_path, image_folder)
    prepare(cfg.data, Paths(cfg).prepared)
    job = _evaluate_job(cfg)
    attacked = Attacked(monkeypatch)
    out = run_evaluation(job)
    # 2 weights x (10 robust_subset images + AutoAttack's 10, whose PGD is the main sequence's again)
    pgd = [y for batch in attacked.pgd for y in batch]
    assert len(pgd) == 2 * CLASSES and set(pgd) == set(range(CLASSES))
    assert sorted(pgd[:CLASSES]) == list(range(CLASSES))  # the robust subset at w=0: one image of every class
    assert [sorted(y for c in attacked.autoattack[i:i + 3] for y in c) for i in (0, 3)] == [list(range(CLASSES))] * 2
    assert out["attack"]["subset"] == out["autoattack"]["attack"]["subset"] == CLASSES
    assert out["test_images"] == N_TEST and "class-balanced" in out["test_order"]

    # clean accuracy on the whole split: the list order (class-sorted, as read before) gives the same number
    x, y = eval_tensors(cfg.data, 32, Paths(cfg).prepared, "test", 0)
    read = stream.open_images(cfg.data, 32, Paths(cfg).prepared, "test", 0).dataset.read.paths
    paths, labels = _listed(Paths(cfg).prepared)
    as_listed = [read.index(p) for p in paths]
    assert torch.equal(y[as_listed], torch.from_numpy(labels))
    model = load_run(job.run_dir, job.model, CPU)
    for w, mode in ((0.0, "clean_mode"), (1.0, "robust_mode")):
        listed = stream.Measure(model, job.evaluate, CPU).clean(stream.TensorImages(x[as_listed], y[as_listed]),
                                                                "listed", w, 4 * job.evaluate.batch_size)
        assert out[mode]["clean_acc"] == round(listed, 5), mode
    with torch.no_grad():  # predictions that differ between images: a changed set of images would show
        assert len(set(model(x, 0.0).argmax(1).tolist())) > 1


def test_an_interrupted_evaluation_resumes_in_the_balanced_order_and_a_list_order_partial_is_discarded(
        tmp_path, image_folder, monkeypatch):
    cfg = _cfg(tmp_path, image_folder, "evaluate.autoattack.enabled=false")
    prepare(cfg.data, Paths(cfg).prepared)
    Attacked(monkeypatch)
    want = run_evaluation(_evaluate_job(cfg, "reference.json"))

    job = _evaluate_job(cfg)
    Attacked(monkeypatch, fail_at=2)  # one attacked batch of the balanced order finished
    with pytest.raises(RuntimeError, match="injected"):
        run_evaluation(job)
    partial = json.loads(stream.partial_path(job.out_file).read_text())
    assert partial["key"] == partial_key(job) and "test_order" in partial["key"]
    resumed = Attacked(monkeypatch)
    got = run_evaluation(job)
    assert len(resumed.pgd) == 2 * 3 - 1  # 3 batches of 4 (robust_subset 10) per weight, one of them done
    assert {k: got[k] for k in ("clean_mode", "robust_mode")} == {k: want[k] for k in ("clean_mode", "robust_mode")}

    # a partial file keyed as before the test split was reordered (its batches are the list order's): not resumed
    Attacked(monkeypatch, fail_at=2)
    with pytest.raises(RuntimeError, match="injected"):
        run_evaluation(job)
    path = stream.partial_path(job.out_file)
    old = json.loads(path.read_text())
    old["key"].pop("test_order")
    path.write_text(json.dumps(old))
    again = Attacked(monkeypatch)
    got = run_evaluation(job)
    assert {k: got[k] for k in ("clean_mode", "robust_mode")} == {k: want[k] for k in ("clean_mode", "robust_mode")}
    assert len(again.pgd) == 2 * 3  # everything recomputed
