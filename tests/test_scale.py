"""The paper's scale on CPU: ImageNet folder and CIFAR binary datasets, the DataLoader path, timm models by
name, gradient accumulation, bf16 autocast, exact resumption mid-epoch. Small generated data, seconds each."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advsoup import scale
from advsoup.config import EXPERIMENTS_DIR, ConfigError, Paths, load_config, split_run_id
from advsoup.data.loaders import eval_loader, eval_tensors, train_batches
from advsoup.data.prepared import load_split, prepare
from advsoup.data.sources import DataMissingError
from advsoup.models import build_model
from advsoup.train import TrainJob, _loss, train

TINY = EXPERIMENTS_DIR / "tiny.yaml"
CLASSES, PER_CLASS = 10, 20


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """10 classes x 20 JPEGs of varied sizes in train/, 10 x 4 in val/: ImageNet's layout, each class its colour."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", PER_CLASS), ("val", 4)):
        for c in range(CLASSES):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for k in range(per_class):
                h, w = rng.integers(40, 64, size=2)
                img = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
                img[..., c % 3] += np.uint8(40 + 15 * c)
                Image.fromarray(img).save(folder / f"img_{k}.JPEG", quality=90)
    return root


def _cfg(tmp: Path, source: Path, name: str, *overrides: str):
    return load_config([TINY], [f"results_dir={tmp}/results", f"data.prepared_dir={tmp}/prepared",
                                f"data.name={name}", f"data.source_dir={source}", "data.val_size=0",
                                "launcher.executor=inline", *overrides])


def _job(cfg, run_id: str) -> TrainJob:
    _, run, seed = split_run_id(cfg, run_id)
    paths = Paths(cfg)
    return TrainJob(run_id, run, seed, cfg.data, cfg.model, cfg.train, paths.prepared, paths.run_dir(run_id),
                    paths.history_file(run_id))


IMAGENET = ["model.img_size=32", "model.in_chans=3", "model.num_classes=10", "model.mean=[0.5,0.5,0.5]",
            "model.std=[0.25,0.25,0.25]", "model.vit.patch_size=8", "model.vit.depth=2", "data.workers=2", "data.augment.enabled=true",
            "data.augment.scale=[0.35,1.0]", "data.augment.auto_augment=rand-m9-mstd0.5-inc1",
            "train.batch_size=20", "train.epochs=1", "train.attack.eps=0.0157", "train.attack.step_size=0.0157",
            "train.attack.steps=1"]


def _weights_digest(run_dir: Path) -> str:
    return hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest()


def test_imagenet_folder_prepares_a_file_list_and_trains_a_vit_b16_shape(tmp_path, image_folder):
    cfg = _cfg(tmp_path, image_folder, "imagenet", *IMAGENET, "model.vit.name=vit_base_patch16_224",
               "model.vit.kwargs={depth: 1}", "data.train_size=40",
               "train.batch_size=10")  # bf16 on CPU is 12x slower: tested below
    manifest = prepare(cfg.data, Paths(cfg).prepared)
    assert manifest["kind"] == "files" and manifest["files"]["train_files.tsv"]["images"] == CLASSES * PER_CLASS
    assert manifest["train_class_counts"] == [PER_CLASS] * CLASSES and manifest["test_class_counts"] == [4] * CLASSES
    assert not list(Paths(cfg).prepared.glob("*.npy"))  # a list, never a copy
    job = _job(cfg, "token-s0")
    train(job)
    assert (job.run_dir / "model.safetensors").is_file()
    model = build_model(cfg.model, "vit", "token")
    assert model.net.embed_dim == 768 and model.net.patch_embed.patch_size == (16, 16) and len(model.net.blocks) == 1
    x, y = next(iter(eval_loader(cfg.data, 32, Paths(cfg).prepared, "test", 0, 16)))
    assert x.dtype == torch.uint8 and x.shape == (16, 3, 32, 32) and y.shape == (16,)
    x, y = eval_tensors(cfg.data, 32, Paths(cfg).prepared, "test", 20)
    assert x.shape == (20, 3, 32, 32) and 0 <= x.min() and x.max() <= 1 and torch.bincount(y).tolist() == [2] * 10


def test_imagenet_refuses_a_wrong_layout_saying_what_it_expected(tmp_path, image_folder):
    flat = tmp_path / "flat"
    (flat / "train" / "n0").mkdir(parents=True)
    (flat / "val").mkdir()
    Image.new("RGB", (8, 8)).save(flat / "val" / "ILSVRC2012_val_00000001.JPEG")
    cfg = _cfg(tmp_path, flat, "imagenet")
    with pytest.raises(ValueError, match="val/ flat.*valprep"):
        prepare(cfg.data, tmp_path / "out")
    with pytest.raises(DataMissingError, match=r"train/<class>/<image>"):
        prepare(_cfg(tmp_path, tmp_path / "nowhere", "imagenet").data, tmp_path / "out")
    # a file changed after prepare is refused when read
    cfg = _cfg(tmp_path, image_folder, "imagenet", *IMAGENET)
    prepare(cfg.data, Paths(cfg).prepared)
    loader = eval_loader(dataclasses.replace(cfg.data, workers=0), 32, Paths(cfg).prepared, "test", 0, 4)
    read = loader.dataset.read
    victim = read.root / read.paths[0]  # in the first batch (the test split is read in class-balanced order)
    original = victim.read_bytes()
    try:
        victim.write_bytes(original + b"\0")
        with pytest.raises(ValueError, match="prepare it again"):
            next(iter(loader))
    finally:
        victim.write_bytes(original)


def _cifar_records(n: int, label_bytes: int, classes: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=(n, label_bytes), dtype=np.uint8)
    return np.concatenate([labels, rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)], axis=1).tobytes()


def test_cifar10_binary_format_from_the_archive_with_checksums(tmp_path):
    members = {f"cifar-10-batches-bin/data_batch_{i}.bin": _cifar_records(8, 1, 10, i) for i in range(1, 6)}
    members["cifar-10-batches-bin/test_batch.bin"] = _cifar_records(10, 1, 10, 9)
    members["cifar-10-batches-bin/batches.meta.txt"] = "\n".join(
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]).encode() + b"\n\n"
    with tarfile.open(tmp_path / "cifar-10-binary.tar.gz", "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    cfg = _cfg(tmp_path, tmp_path, "cifar10")
    with pytest.raises(ValueError, match="not the published c32a1d4ab5d03f1284b67883e8d87530"):
        prepare(cfg.data, tmp_path / "refused")
    cfg = _cfg(tmp_path, tmp_path, "cifar10", "data.checksum=false", "model.img_size=32", "model.in_chans=3",
               "model.mean=[0.5,0.5,0.5]", "model.std=[0.25,0.25,0.25]", "model.vit.patch_size=8",
               "train.batch_size=8", "data.train_size=0")
    manifest = prepare(cfg.data, Paths(cfg).prepared)
    assert manifest["classes"][9] == "truck" and manifest["archive_md5"] is None
    train_split = load_split(Paths(cfg).prepared, "train")
    assert train_split.images.shape == (40, 3, 32, 32)
    raw = np.frombuffer(members["cifar-10-batches-bin/data_batch_1.bin"], np.uint8).reshape(-1, 3073)
    assert np.array_equal(train_split.images[0].reshape(-1), raw[0, 1:]) and train_split.labels[0] == raw[0, 0]
    job = _job(cfg, "token-s0")
    train(job)
    assert (job.run_dir / "model.safetensors").is_file()


def test_cifar100_reads_the_fine_label_and_refuses_a_torn_file(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    (folder / "train.bin").write_bytes(_cifar_records(6, 2, 100, 0))
    (folder / "test.bin").write_bytes(_cifar_records(4, 2, 100, 1))
    cfg = _cfg(tmp_path, tmp_path, "cifar100", "data.checksum=false")
    prepare(cfg.data, tmp_path / "ok")
    raw = np.frombuffer((folder / "train.bin").read_bytes(), np.uint8).reshape(-1, 3074)
    assert np.array_equal(load_split(tmp_path / "ok", "train").labels, raw[:, 1])
    with pytest.raises(ValueError, match="split sizes|50000"):  # with checksums: not the published sizes
        prepare(_cfg(tmp_path, tmp_path, "cifar100").data, tmp_path / "refused")
    (folder / "test.bin").write_bytes(_cifar_records(4, 2, 100, 1)[:-5])
    with pytest.raises(ValueError, match="not a whole number of 3074-byte records"):
        prepare(cfg.data, tmp_path / "torn")


def test_a_run_interrupted_mid_epoch_in_the_dataloader_path_resumes_bitwise(tmp_path, image_folder):
    extra = [*IMAGENET, "model.vit.drop_path_rate=0.1", "train.epochs=2", "data.train_size=40", "train.batch_size=10",
             "train.mixup.mixup_alpha=0.8", "train.mixup.cutmix_alpha=1.0", "train.label_smoothing=0.1",
             "train.ema=true", "train.clip_grad=1.0"]
    digests = []
    for stop in (None, 6):  # 4 steps per epoch: stop in the middle of the second
        cfg = _cfg(tmp_path / str(stop), image_folder, "imagenet", *extra)
        prepare(cfg.data, Paths(cfg).prepared)
        job = _job(cfg, "token-s0")
        if stop:
            assert train(job, stop_after_steps=stop) == {"stopped_at": stop}
        train(job)
        digests.append(_weights_digest(job.run_dir))
    assert digests[0] == digests[1]


def test_sampler_order_is_a_function_of_seed_and_epoch_and_splits_over_ranks(tmp_path, image_folder):
    cfg = _cfg(tmp_path, image_folder, "imagenet", *IMAGENET, "data.workers=0")
    prepare(cfg.data, Paths(cfg).prepared)
    one = train_batches(cfg.data, 32, Paths(cfg).prepared, 0, 20)
    ranks = [train_batches(cfg.data, 32, Paths(cfg).prepared, 0, 20, r, 2) for r in range(2)]
    whole = [y for _, y in one.epoch(1)]
    halves = [[y for _, y in b.epoch(1)] for b in ranks]
    assert all(torch.equal(w, torch.cat([a, b])) for w, a, b in zip(whole, *halves))
    late = [y for _, y in one.epoch(1, first=7)]
    assert all(torch.equal(a, b) for a, b in zip(whole[7:], late)) and len(late) == 3


def _vit_and_batch(*overrides: str):
    cfg = load_config([TINY], ["data.val_size=0", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model, "vit", "token")
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    return cfg, model, x, y


def test_gradient_accumulation_equals_one_large_batch():
    cfg, model, x, y = _vit_and_batch()
    _, run, seed = split_run_id(cfg, "nominal-s0")
    job = TrainJob("nominal-s0", run, seed, cfg.data, cfg.model, cfg.train, Path("."), Path("."), Path("."))
    grads = []
    for steps in (1, 4):
        model.zero_grad(set_to_none=True)
        stats = scale.accumulate(lambda a, b: _loss(job, model, a, b, None), x, y, steps,
                                 lambda: scale.autocast(torch.device("cpu"), "none"))
        grads.append(([p.grad for p in model.parameters()], stats["loss"]))  # None: the unused adversarial token
    assert sum(g is not None for g in grads[0][0]) > 10
    for g1, g4 in zip(grads[0][0], grads[1][0]):
        assert (g1 is None) == (g4 is None)
        if g1 is not None:
            torch.testing.assert_close(g1, g4, rtol=1e-4, atol=1e-6)
    assert grads[0][1] == pytest.approx(grads[1][1], rel=1e-5)
    with pytest.raises(ValueError, match="accum_steps=3"):
        scale.accumulate(lambda a, b: _loss(job, model, a, b, None), x, y, 3, lambda: scale.autocast(x.device, "none"))


def test_bf16_autocast_runs_the_cotraining_step_on_cpu():
    cfg, model, x, y = _vit_and_batch()
    _, run, seed = split_run_id(cfg, "token-s0")
    job = TrainJob("token-s0", run, seed, cfg.data, cfg.model, cfg.train, Path("."), Path("."), Path("."))
    dtypes = []
    model.net.head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    stats = scale.accumulate(lambda a, b: _loss(job, model, a, b, torch.Generator().manual_seed(0)), x, y, 2,
                             lambda: scale.autocast(torch.device("cpu"), "bf16"))
    assert torch.bfloat16 in dtypes and np.isfinite(stats["loss"]) and stats["adv_acc"] >= 0
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_timm_names_and_bottleneck_resnets_take_every_adapter():
    cfg = load_config([TINY], ["model.img_size=32", "model.in_chans=3", "model.mean=[0.5,0.5,0.5]",
                               "model.std=[0.25,0.25,0.25]", "model.vit.name=vit_small_patch16_224",
                               "model.vit.kwargs={depth: 1}", "model.resnet.block=bottleneck"])
    x, w = torch.rand(4, 3, 32, 32), torch.tensor([0.0, 0.0, 1.0, 1.0])
    for family, adapter in (("vit", "token"), ("vit", "layernorm"), ("vit", "bias"), ("vit", "head"),
                            ("resnet", "batchnorm")):
        model = build_model(cfg.model, family, adapter).eval()
        plain = build_model(cfg.model, family, "none").eval()
        plain.net.load_state_dict(model.plain_state_dict(0.0))
        # both copies equal: the adapted model computes what the plain timm model computes
        torch.testing.assert_close(model(x, w), plain(x), rtol=1e-4, atol=1e-5)
        assert model.num_domain_parameters() > 0
        if family == "resnet":  # channels-last (train.channels_last) through dual BN's per-sample groups
            last = model.to(memory_format=torch.channels_last)
            torch.testing.assert_close(last(x.contiguous(memory_format=torch.channels_last), w), plain(x),
                                       rtol=1e-4, atol=1e-5)
    bad = dataclasses.replace(cfg.model, resnet=dataclasses.replace(cfg.model.resnet, name="vit_tiny_patch16_224"))
    with pytest.raises(ValueError, match="model.resnet.name: 'vit_tiny_patch16_224' is a VisionTransformer"):
        build_model(bad, "resnet", "batchnorm")
    bad = dataclasses.replace(cfg.model, vit=dataclasses.replace(cfg.model.vit, name="vit_base_patch16_244"))
    with pytest.raises(ValueError, match="model.vit.name: timm has no model 'vit_base_patch16_244'"):
        build_model(bad, "vit", "token")
    with pytest.raises(ConfigError, match="model.resnet.block"):
        load_config([TINY], ["model.resnet.block=wide"])


def test_train_log_is_written_as_training_goes(tmp_path, image_folder):
    cfg = _cfg(tmp_path, image_folder, "imagenet", *IMAGENET, "data.workers=0", "data.train_size=20",
               "train.batch_size=10", "train.epochs=2")
    prepare(cfg.data, Paths(cfg).prepared)
    job = _job(cfg, "nominal-s0")
    train(job, stop_after_steps=3)  # into the second epoch: the first is logged
    assert job.history_file.read_text().splitlines()[1].startswith("1,")


@pytest.mark.slow
def test_imagenet_path_end_to_end_through_the_stages(tmp_path, image_folder):
    """prepare -> train -> evaluate -> soups -> robustness -> aggregate on the generated ImageFolder, DataLoader
    with 2 workers (about 2 min on a loaded 2-core machine)."""
    from advsoup.cli import main

    over = [f"results_dir={tmp_path}/results", f"data.prepared_dir={tmp_path}/prepared", "data.name=imagenet",
            f"data.source_dir={image_folder}", "data.val_size=0", "launcher.executor=inline", *IMAGENET,
            "data.train_size=40", "train.batch_size=10", "evaluate.autoattack.subset=8", "evaluate.robust_subset=20"]
    tiny = str(TINY)
    assert main(["prepare", "--config", tiny, *over]) == 0
    for run in ("nominal-s0", "token-s0"):
        assert main(["train", "--config", tiny, "--run", run, *over]) == 0
        assert main(["evaluate", "--config", tiny, "--run", run, *over]) == 0
        assert main(["robustness", "--config", tiny, "--run", run, *over]) == 0
    assert main(["soups", "--config", tiny, "--run", "token-s0", *over]) == 0
    assert main(["aggregate", "--config", tiny, *over]) == 0
    assert list((tmp_path / "results").rglob("soups.json")) and list((tmp_path / "results").rglob("*.csv"))


def test_a_safetensors_file_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    from advsoup.checkpoint import load_tensors, save_tensors

    for pad in range(256):  # one header length in 256 has 0x80 as its first byte
        path = tmp_path / f"w{pad}.safetensors"
        save_tensors(path, {"w": torch.ones(2)}, {"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            assert torch.equal(load_tensors(path)["w"], torch.ones(2))
            return
    pytest.fail("no padding gave a header length starting with 0x80")


def test_validation_pass_every_n_epochs_goes_to_the_train_log(tiny_cfg):
    cfg = load_config([TINY], [f"results_dir={tiny_cfg.results_dir}", f"data.prepared_dir={tiny_cfg.data.prepared_dir}",
                               "data.train_size=256", "data.val_size=100", "train.epochs=2", "train.val_every=2"])
    job = _job(cfg, "token-s0")
    train(job)
    header, first, second = job.history_file.read_text().splitlines()
    assert "val_acc_w0" in header and "val_acc_w1" in header
    assert first.endswith(",,") and 0 <= float(second.split(",")[-1]) <= 1
    with pytest.raises(ConfigError, match="train.val_every"):
        load_config([TINY], ["data.val_size=0", "train.val_every=1"])
