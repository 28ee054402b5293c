"""PGD's guarantees and the trainer's, on a small model trained on real Fashion-MNIST."""
import dataclasses

import pytest
import torch

from advsoup.robust.attacks import pgd
from advsoup.checkpoint import load_tensors
from advsoup.config import EXPERIMENTS_DIR, AttackConfig, Paths, load_config, split_run_id
from advsoup.data.prepared import load_split
from advsoup.robust.evaluate import clean_accuracy, load_run, robust_accuracy
from advsoup.train import TrainJob, train


def _job(cfg, run_id, **train_overrides):
    _, run, seed = split_run_id(cfg, run_id)
    paths = Paths(cfg)
    return TrainJob(run_id, run, seed, cfg.data, cfg.model, dataclasses.replace(cfg.train, **train_overrides),
                    paths.prepared, paths.run_dir(run_id), paths.history_file(run_id))


@pytest.fixture(scope="module")
def nominal(tmp_path_factory, prepared):
    """A nominal ViT trained for 3 epochs on 3000 images (about 15 s)."""
    tmp = tmp_path_factory.mktemp("nominal")
    cfg = load_config([EXPERIMENTS_DIR / "tiny.yaml"], [f"results_dir={tmp}", f"data.prepared_dir={prepared.parent}",
                               "data.train_size=3000", "train.epochs=3", "train.warmup_epochs=0.2"])
    job = _job(cfg, "nominal-s0")
    train(job)
    model = load_run(job.run_dir, cfg.model, torch.device("cpu"))
    x, y = load_split(prepared, "test", 500).tensors()
    return model, x, y, cfg


def test_pgd_stays_in_the_ball_and_the_image_range(nominal):
    model, x, y, _ = nominal
    for norm, eps in (("linf", 0.1), ("l2", 1.0)):
        a = AttackConfig(norm=norm, eps=eps, steps=5, step_size=eps / 2)
        x_adv = pgd(model, x[:64], y[:64], a, w=0.0)
        delta = (x_adv - x[:64]).flatten(1)
        size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
        assert float(size.max()) <= eps + 1e-5
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_pgd_lowers_accuracy_and_is_deterministic(nominal):
    model, x, y, cfg = nominal
    ev = cfg.evaluate
    clean = clean_accuracy(model, x, y, 0.0, 250, torch.device("cpu"))
    robust = robust_accuracy(model, x, y, 0.0, ev, torch.device("cpu"))
    assert clean > 0.6  # it did learn
    assert robust < clean - 0.3  # eps 0.1 breaks a nominal model
    assert robust == robust_accuracy(model, x, y, 0.0, ev, torch.device("cpu"))  # same seed, same number


def test_pgd_computes_no_parameter_gradients_and_keeps_the_mode(nominal):
    model, x, y, cfg = nominal
    model.train()
    model.zero_grad(set_to_none=True)
    pgd(model, x[:32], y[:32], cfg.train.attack, w=1.0)
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    model.eval()


def test_training_writes_weights_log_and_resolved_config(nominal):
    _, _, _, cfg = nominal
    run_dir = Paths(cfg).run_dir("nominal-s0")
    for name in ("model.safetensors", "model.json", "config.yaml", "train.log"):
        assert (run_dir / name).is_file(), name
    rows = Paths(cfg).history_file("nominal-s0").read_text().splitlines()
    assert rows[0].startswith("epoch,") and len(rows) == 4  # header + 3 epochs
    assert "train_size: 3000" in (run_dir / "config.yaml").read_text()
    assert set(load_tensors(run_dir / "model.safetensors")) == set(load_run(run_dir, cfg.model, "cpu").state_dict())


def test_resumed_training_equals_uninterrupted(tiny_cfg):
    """Stop a co-training run mid-epoch, resume it from its saved state: same weights, bitwise."""
    whole = _job(tiny_cfg, "token-s0", checkpoint_every=3)
    train(whole)
    ref = load_tensors(whole.run_dir / "model.safetensors")

    parts = dataclasses.replace(whole, run_dir=whole.run_dir.parent / "resumed",
                                history_file=whole.run_dir.parent / "resumed" / "train_log.csv")
    assert train(parts, stop_after_steps=5) == {"stopped_at": 5}
    assert not (parts.run_dir / "model.safetensors").exists()
    train(parts)
    got = load_tensors(parts.run_dir / "model.safetensors")
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
