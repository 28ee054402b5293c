"""Evaluation at scale: a file dataset streamed batch by batch gives the numbers of the same images held in
memory, and an interrupted evaluation continues from its partial file to the numbers of an uninterrupted one,
recomputing no finished batch (seconds each, small generated or prepared data)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from advsoup import checkpoint as ckpt
from advsoup.config import EXPERIMENTS_DIR, Paths, load_config
from advsoup.data.loaders import eval_tensors
from advsoup.data.prepared import prepare
from advsoup.models import build_model
from advsoup.robust import stream
from advsoup.robust.evaluate import EvalJob, accuracies, autoattack_vs_pgd, partial_key, run_evaluation
from advsoup.stages import config_digest, config_slice

TINY = EXPERIMENTS_DIR / "tiny.yaml"
CPU = torch.device("cpu")


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights with the clean and adversarial copies apart, so the soup weight changes the predictions."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


# ---- a file dataset streamed equals the same images in memory -------------------------------------------------

@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """A generated ImageFolder (10 classes; 3 train and 4 val JPEGs each), prepared as a file list."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(1)
    for split, per_class in (("train", 3), ("val", 4)):
        for c in range(10):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for k in range(per_class):
                h, w = rng.integers(36, 60, size=2)
                img = rng.integers(0, 120, size=(h, w, 3), dtype=np.uint8)
                img[..., c % 3] += np.uint8(10 * c)
                Image.fromarray(img).save(folder / f"img_{k}.JPEG", quality=90)
    tmp = tmp_path_factory.mktemp("imagenet_eval")
    cfg = load_config([TINY], [f"results_dir={tmp}/results", f"data.prepared_dir={tmp}/prepared",
                               "data.name=imagenet", f"data.source_dir={root}", "data.val_size=0", "data.workers=2",
                               "model.img_size=32", "model.in_chans=3", "model.num_classes=10",
                               "model.mean=[0.5,0.5,0.5]", "model.std=[0.25,0.25,0.25]", "model.vit.patch_size=8",
                               "model.vit.depth=1", "evaluate.batch_size=6", "evaluate.robust_subset=20",
                               "evaluate.attack.eps=0.004", "evaluate.attack.step_size=0.002",
                               "evaluate.attack.steps=2", "evaluate.autoattack.subset=10",
                               "evaluate.autoattack.chunk=4"])
    prepare(cfg.data, Paths(cfg).prepared)
    return cfg


def test_a_file_dataset_streamed_batch_by_batch_gives_the_numbers_of_the_split_held_in_memory(imagenet):
    cfg = imagenet
    prepared = Paths(cfg).prepared
    # what prepare wrote for the file dataset: the lists, not images (those stay under data.source_dir)
    assert sorted(p.name for p in prepared.iterdir()) == ["manifest.json", "test_files.tsv", "train_files.tsv"]
    files = stream.open_images(cfg.data, cfg.model.img_size, prepared, "test", 0)
    assert isinstance(files, stream.FileImages) and len(files) == 40
    x, y = eval_tensors(cfg.data, cfg.model.img_size, prepared, "test", 0)
    memory = stream.TensorImages(x, y)
    # the same images in the same batches, from any start (a resumed evaluation starts mid-split)
    for bs, start, stop in ((6, 0, None), (6, 12, 20), (16, 5, 37)):
        got, want = list(files.batches(bs, start, stop)), list(memory.batches(bs, start, stop))
        assert [len(b[1]) for b in got] == [len(b[1]) for b in want] and len(got) > 1
        for (xf, yf), (xm, ym) in zip(got, want):
            assert xf.dtype == torch.float32 and torch.equal(xf, xm) and torch.equal(yf, ym)
    xf, yf = eval_tensors(cfg.data, cfg.model.img_size, prepared, "test", 0, first=12)  # decodes no more
    assert torch.equal(xf, x[:12]) and torch.equal(yf, y[:12])

    model = _perturbed(build_model(cfg.model, "vit", "token"), 0)
    results = []
    for images in (files, memory):
        measure = stream.Measure(model, cfg.evaluate, CPU)
        rows = accuracies(measure, images, "test", [0.0, 1.0])
        aa = autoattack_vs_pgd(measure, images, [0.0, 1.0])
        results.append((rows, aa, dict(measure.partial.units)))
    assert results[0] == results[1]
    rows, aa, units = results[0]
    with torch.no_grad():  # the soup weight changes predictions: a mixed-up weight would show
        assert not torch.equal(model(x, 0.0).argmax(1), model(x, 1.0).argmax(1))
    assert 0 < sum(r["clean_acc"] for r in rows) and aa["attack"]["subset"] == 10 and aa["attack"]["chunk"] == 4
    assert len([u for u in units if "/autoattack10/" in u]) == 2 * 3  # 3 chunks of at most 4 images per weight


# ---- an interrupted evaluation resumes from its partial file --------------------------------------------------

RESUME = ["data.test_size=120", "data.val_size=40", "evaluate.batch_size=20", "evaluate.robust_subset=60"]
# per soup weight: test 2 clean batches (of 80) and 3 attacked (of 20); validation 1 clean and 2 attacked
ROBUST_UNITS, CLEAN_UNITS = 3 * (3 + 2), 3 * (2 + 1)


@pytest.fixture
def soups(tmp_path, prepared):
    """The tiny experiment's soups job on 120 test and 40 validation images, with an untrained token ViT saved
    as the run's checkpoint (no training: what is under test is the bookkeeping)."""
    def make(*overrides: str, out: str = "soups.json"):
        cfg = load_config([TINY], [f"results_dir={tmp_path}/results", f"data.prepared_dir={prepared.parent}",
                                   "launcher.executor=inline", *RESUME, *overrides])
        s = SimpleNamespace(**config_slice(cfg, "soups", "token-s0"))
        paths = Paths(cfg)
        return EvalJob("token-s0", s.run, s.seed, s.data, s.model, s.evaluate, paths.prepared,
                       paths.run_dir("token-s0"), paths.metrics_dir("token-s0") / out, list(s.evaluate.soup_weights))

    def save_checkpoint(seed: int) -> None:
        job = make()
        model = _perturbed(build_model(job.model, "vit", "token"), seed)
        job.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.save_model(job.run_dir, model, {"family": "vit", "adapter": "token"})

    save_checkpoint(0)
    return SimpleNamespace(make=make, save_checkpoint=save_checkpoint)


class Counted:
    """stream's unit functions, counted, with an exception injected before call number ``fail_at``.

    The attack is replaced by draws from the attack's generator (cheap, and as sensitive to a generator state
    restored wrongly as PGD's random starts are)."""

    def __init__(self, monkeypatch, fail_at: int = 0) -> None:
        self.robust = self.clean = 0
        self.fail_at = fail_at
        clean = stream.clean_batch

        def clean_batch(*args):
            self.clean += 1
            return clean(*args)

        def attack_batch(model, xb, yb, w, ev, device, gen, seed):
            if self.fail_at and self.robust + 1 == self.fail_at:
                raise RuntimeError("preempted (injected)")
            self.robust += 1
            return torch.rand(len(yb), generator=gen, device=device) < 0.3 + 0.4 * w

        monkeypatch.setattr(stream, "clean_batch", clean_batch)
        monkeypatch.setattr(stream, "attack_batch", attack_batch)


def _numbers(out: dict) -> dict:
    return {k: out[k] for k in ("soup", "validation", "validation_images", "test_images")}


def test_an_interrupted_evaluation_continues_from_its_partial_file_to_the_uninterrupted_numbers(soups, monkeypatch):
    reference = soups.make(out="reference.json")
    full = Counted(monkeypatch)
    want = run_evaluation(reference)
    assert (full.robust, full.clean) == (ROBUST_UNITS, CLEAN_UNITS)
    assert not stream.partial_path(reference.out_file).exists()  # removed once the output is written
    assert len({r["robust_acc"] for r in want["soup"]}) > 1

    job = soups.make()
    Counted(monkeypatch, fail_at=5)  # 4 attacked batches finished: w=0's 3, then the first of w=0.5
    with pytest.raises(RuntimeError, match="injected"):
        run_evaluation(job)
    partial = json.loads(stream.partial_path(job.out_file).read_text())
    assert not job.out_file.exists()
    assert partial["key"] == partial_key(job)
    assert sorted(u for u in partial["units"] if "robust" in u) == [
        "test/w=0.0/robust60/0", "test/w=0.0/robust60/1", "test/w=0.0/robust60/2", "test/w=0.5/robust60/0"]
    assert partial["rng"]["test/w=0.5/robust60"]["after"] == 0

    again = Counted(monkeypatch)
    got = run_evaluation(job)
    assert (again.robust, again.clean) == (ROBUST_UNITS - 4, CLEAN_UNITS - 4)  # w=0's and w=0.5's clean batches
    assert _numbers(got) == _numbers(want)
    assert not stream.partial_path(job.out_file).exists()


def test_a_partial_file_of_another_config_or_checkpoint_is_discarded_not_mixed_in(soups, monkeypatch):
    want = {}
    for name, change in (("config", lambda: None), ("checkpoint", lambda: soups.save_checkpoint(1))):
        Counted(monkeypatch, fail_at=5)
        with pytest.raises(RuntimeError, match="injected"):
            run_evaluation(soups.make())
        change()
        # the other config: another attack step size (the counted attack ignores it: same numbers expected)
        job = soups.make(*(["evaluate.attack.step_size=0.06"] if name == "config" else []))
        assert stream.partial_path(job.out_file).exists()
        counted = Counted(monkeypatch)
        got = run_evaluation(job)
        assert (counted.robust, counted.clean) == (ROBUST_UNITS, CLEAN_UNITS), name  # everything recomputed
        fresh = soups.make(*(["evaluate.attack.step_size=0.06"] if name == "config" else []), out="fresh.json")
        Counted(monkeypatch)
        assert _numbers(got) == _numbers(run_evaluation(fresh)), name
        want[name] = _numbers(got)
    assert want["config"] != want["checkpoint"]  # the checkpoint change is seen in the numbers


def test_the_partial_file_is_keyed_by_the_stages_config_digest_and_the_checkpoint(soups):
    for stage, out in (("soups", "soups.json"), ("evaluate", "eval.json")):
        cfg = load_config([TINY], [f"data.prepared_dir={soups.make().prepared.parent}", *RESUME])
        job = soups.make(out=out)
        if stage == "evaluate":
            s = SimpleNamespace(**config_slice(cfg, "evaluate", "token-s0"))
            job = dataclasses.replace(job, data=s.data, evaluate=s.evaluate, soup_weights=None)
        key = partial_key(job)
        assert key["config_digest"] == config_digest(cfg, stage, "token-s0"), stage
        assert key["checkpoint_sha256"] == ckpt.load_model_meta(job.run_dir)["weights_sha256"]


def test_pgd_resumed_mid_sequence_continues_the_generator_exactly():
    """The real PGD with random starts and restarts: a sequence interrupted after 2 of its 4 batches and resumed
    gives the uninterrupted flags and ends in the uninterrupted generator state (a resumption from the seed
    would end 2 batches of draws behind)."""
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))

    class AtWeight(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = linear

        def forward(self, x, w=0.0):
            return self.net(x)

    net = AtWeight().eval()
    x, y = torch.rand(32, 3, 2, 2), torch.randint(0, 3, (32,))
    cfg = load_config([TINY], ["evaluate.batch_size=8", "evaluate.attack.eps=0.3", "evaluate.attack.step_size=0.1",
                               "evaluate.attack.restarts=2"])
    images, seq = stream.TensorImages(x, y), "t/w=0.0/robust32"
    uninterrupted = stream.Measure(net, cfg.evaluate, CPU)
    whole = uninterrupted.robust(images, "t", 0.0, 32)
    assert 0 < int(whole.sum()) < 32

    calls = []
    original = stream.attack_batch

    def counted(*args):
        if len(calls) == 2 and not resuming:
            raise RuntimeError("preempted")
        calls.append(1)
        return original(*args)

    half, resuming = stream.Partial(None, {}), False
    stream.attack_batch = counted
    try:
        with pytest.raises(RuntimeError):
            stream.Measure(net, cfg.evaluate, CPU, half).robust(images, "t", 0.0, 32)
        assert sorted(u for u in half.units) == [f"{seq}/0", f"{seq}/1"]
        assert half.rng[seq]["state"] != uninterrupted.partial.rng[seq]["state"]
        resuming = True
        resumed = stream.Measure(net, cfg.evaluate, CPU, half).robust(images, "t", 0.0, 32)
        assert len(calls) == 4  # 2 before the interruption, 2 after
        assert torch.equal(resumed, whole) and half.rng[seq] == uninterrupted.partial.rng[seq]
        # a sequence whose generator state is missing is redone from its start, never continued from the seed
        del half.units[f"{seq}/3"]
        half.rng.pop(seq)
        assert torch.equal(stream.Measure(net, cfg.evaluate, CPU, half).robust(images, "t", 0.0, 32), whole)
        assert len(calls) == 8
    finally:
        stream.attack_batch = original
