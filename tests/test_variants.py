"""Every training variant of the study trains through train.py; dual BN routes each half to its own BN."""
import copy
import dataclasses

import pandas as pd
import pytest
import torch

from advsoup.models.accounting import parameter_table
from advsoup.robust.attacks import pgd
from advsoup.checkpoint import load_model_meta
from advsoup.config import EXPERIMENTS_DIR, RESNET_ADAPTERS, VIT_ADAPTERS, RunConfig, load_config
from advsoup.data.prepared import load_split
from advsoup.robust.evaluate import load_run
from advsoup.models import FAMILIES, build_model
from advsoup.models.adapters import DualParams, plain_key
from advsoup.train import TrainJob, _loss, train

VARIANTS = [(family, training, "none") for family in ("vit", "resnet") for training in ("nominal", "adversarial")] + \
    [("vit", "cotrain", a) for a in VIT_ADAPTERS] + [("resnet", "cotrain", a) for a in RESNET_ADAPTERS]


def _job(cfg, family, training, adapter, tmp_path):
    run = RunConfig(training=training, adapter=adapter, family=family, seeds=[0])
    # Two steps of 16 images: enough to see which parameters each half of a batch trains.
    t = dataclasses.replace(cfg.train, batch_size=16, warmup_epochs=0.0, log_every=1)
    data = dataclasses.replace(cfg.data, train_size=32)
    run_dir = tmp_path / f"{family}-{training}-{adapter}"
    return TrainJob(run_dir.name, run, 0, data, cfg.model, t, tmp_path / "unused", run_dir, run_dir / "log.csv")


@pytest.fixture(scope="module")
def counts():
    """The accounting's domain-parameter counts of the tiny experiment's networks, by (network, adapter)."""
    model = load_config([EXPERIMENTS_DIR / "tiny.yaml"]).model
    return {(r["network"], r["adapter"]): r["domain_parameters"] for r in parameter_table(model)}


@pytest.mark.parametrize("family, training, adapter", VARIANTS)
def test_every_variant_trains(tiny_cfg, prepared, counts, tmp_path, family, training, adapter):
    job = dataclasses.replace(_job(tiny_cfg, family, training, adapter, tmp_path), prepared=prepared)
    train(job)
    history = pd.read_csv(job.history_file)
    logged = {c for c in history.columns if c in ("train_clean_acc", "train_adv_acc")}
    assert logged == {"nominal": {"train_clean_acc"}, "adversarial": {"train_adv_acc"},
                      "cotrain": {"train_clean_acc", "train_adv_acc"}}[training]
    assert history["train_loss"].notna().all()
    assert load_model_meta(job.run_dir)["domain_parameters"] == counts[f"demo_{family}", adapter]

    model = load_run(job.run_dir, tiny_cfg.model, torch.device("cpu"))
    clean, robust = model.plain_state_dict(0.0), model.plain_state_dict(1.0)
    differ = {k for k in clean if not torch.equal(clean[k], robust[k])}
    # Both copies started equal: after co-training exactly the adapter's copies differ (each half
    # trained its own), every other tensor is shared.
    adapted = {plain_key(n.removeprefix("net.")) for n, _ in model.adversarial_parameters()}
    if adapter == "batchnorm":
        adapted |= {k.replace(".weight", s) for k in adapted if k.endswith(".weight")
                    for s in (".running_mean", ".running_var")}
    assert differ == adapted
    assert bool(adapted) == (adapter != "none")


def test_dual_bn_statistics_come_from_their_own_half_only(tiny_cfg, prepared, tmp_path):
    """A co-training step: the attack (eval mode) leaves the statistics alone, then the main BN
    learns the clean half's statistics and the auxiliary BN the adversarial half's."""
    job = _job(tiny_cfg, "resnet", "cotrain", "batchnorm", tmp_path)
    torch.manual_seed(0)
    model = build_model(tiny_cfg.model, "resnet", "batchnorm").train()
    before = copy.deepcopy(model)
    x, y = load_split(prepared, "train", 32).tensors()
    _loss(job, model, x, y, torch.Generator().manual_seed(5))

    # Replay each half alone through a copy of the untrained model, with the step's adversarial examples.
    x_adv = pgd(before, x, y, job.train.attack, w=1.0, generator=torch.Generator().manual_seed(5))
    assert (x_adv - x).abs().max() > 0.05
    clean_only, adv_only = copy.deepcopy(before), copy.deepcopy(before)
    clean_only(x, 0.0)
    adv_only(x_adv, 1.0)
    bns = [n for n, m in model.named_modules() if isinstance(m, DualParams)]
    assert len(bns) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in FAMILIES["resnet"](tiny_cfg.model).modules())
    for n in bns:
        got, c, a = model.get_submodule(n), clean_only.get_submodule(n), adv_only.get_submodule(n)
        assert int(got.clean.num_batches_tracked) == 1 and int(got.adv_num_batches_tracked) == 1, n
        for stat in ("running_mean", "running_var"):
            assert torch.allclose(getattr(got.clean, stat), getattr(c.clean, stat), atol=1e-5), (n, stat)
            assert torch.allclose(getattr(got, f"adv_{stat}"), getattr(a, f"adv_{stat}"), atol=1e-5), (n, stat)
        assert not torch.allclose(got.clean.running_mean, got.adv_running_mean, atol=1e-4), n
