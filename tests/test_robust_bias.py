"""Faults that bias robust numbers, each with a case where the fault would change the number (issue 14).

A hard-subset reference that is a run of the grid; an image counted robust
although the model gets it wrong clean; PGD reporting its last iterate when an
earlier one fooled the model; dual BatchNorm halves updating each other's
statistics; the k-shot examples scored with the rest.
"""
import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

from advsoup.config import EXPERIMENTS_DIR, AttackConfig, ConfigError, ShiftConfig, load_config
from advsoup.data.prepared import balanced_subset, load_split, load_training_split, training_indices
from advsoup.models import build_model
from advsoup.models.adapters import DualParams
from advsoup.robust.attacks import pgd
from advsoup.robust.evaluate import robust_flags
from advsoup.shift.adapt import kshot_split
from advsoup.shift.evaluate import _adapt

CPU = torch.device("cpu")


# ---- 1. the hard subset's reference is never a run of the grid ------------------------------

@pytest.mark.parametrize("experiment", ["demo", "study", "tiny"])
def test_no_experiment_trains_its_hard_reference_as_a_run_of_its_grid(experiment):
    cfg = load_config([EXPERIMENTS_DIR / f"{experiment}.yaml"])
    h = cfg.shift.hard
    assert not [name for name, run in cfg.runs.items() if run.family == h.family and h.seed in run.seeds]


def test_a_hard_reference_that_collides_with_a_run_is_refused():
    # The study's former default: a nominal ResNet of seed 1 is exactly its run resnet_nominal-s1.
    with pytest.raises(ConfigError, match=re.escape("'shift.hard.seed'") + ".*runs.resnet_nominal"):
        load_config([EXPERIMENTS_DIR / "study.yaml"], ["shift.hard.seed=1"])
    load_config([EXPERIMENTS_DIR / "study.yaml"], ["shift.hard.seed=1", "shift.hard.family=vit",
                                                   "runs.nominal.seeds=[0,2]", "runs.adversarial.seeds=[0,2]",
                                                   "runs.cotrain.seeds=[0,2]", "runs.token.seeds=[0,2]",
                                                   "runs.layernorm.seeds=[0,2]", "runs.bias.seeds=[0,2]",
                                                   "runs.head.seeds=[0,2]"])


# ---- 2. robust = correct clean AND under attack; PGD keeps any fooling iterate -------------

class WrongOnTheGrid(nn.Module):
    """Class 1 for images on the uint8 grid (every clean test image), class 0 anywhere else; no gradient."""

    def forward(self, x, w=0.0):
        on_grid = (torch.round(x * 255) / 255 == x).flatten(1).all(1).float()
        logits = torch.stack([1 - on_grid, on_grid], 1) * 10
        return logits + 0 * x.flatten(1).sum(1, keepdim=True)  # an input gradient (zero) for PGD


def test_an_image_wrong_clean_is_never_robust(prepared):
    """PGD's random start leaves the uint8 grid, where this model is right: counting the attacked point
    alone would call every image robust although the model gets each one wrong clean."""
    x, _ = load_split(prepared, "test", 50).tensors()
    y = torch.zeros(len(x), dtype=torch.long)
    ev = load_config([EXPERIMENTS_DIR / "tiny.yaml"]).evaluate
    assert ev.attack.random_start
    x_adv = pgd(WrongOnTheGrid(), x, y, ev.attack, generator=torch.Generator().manual_seed(0))
    assert (WrongOnTheGrid()(x_adv).argmax(1) == y).all()  # the attacked points are all classified right
    assert not robust_flags(WrongOnTheGrid(), x, y, 0.0, ev, CPU).any()


class FooledInABand(nn.Module):
    """Three classes on the mean pixel offset m from 0.5: the loss rises with m (class 2's logit), but only
    0.03 < m < 0.07 is misclassified (class 1, whose logit carries no gradient)."""

    def forward(self, x, w=0.0):
        m = x.flatten(1).mean(1) - 0.5
        band = ((m.detach() > 0.03) & (m.detach() < 0.07)).float()
        return torch.stack([torch.zeros_like(m), 5 * band, 20 * m - 5], 1)


def test_pgd_keeps_the_iterate_that_fooled_the_model_for_evaluation():
    x = torch.full((4, 1, 8, 8), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    a = AttackConfig(eps=0.1, steps=4, step_size=0.025, random_start=False)  # m: 0, .025, .05 (fooled), .075, .1
    model = FooledInABand()
    last = pgd(model, x, y, a)  # training: Madry's last iterate, back out of the band
    assert (model(last).argmax(1) == 0).all()
    kept = pgd(model, x, y, a, keep_fooling=True)
    assert (model(kept).argmax(1) == 1).all() and torch.allclose(kept - x, torch.full_like(x, 0.05))
    ev = load_config([EXPERIMENTS_DIR / "tiny.yaml"], ["evaluate.attack.steps=4", "evaluate.attack.step_size=0.025",
                                                      "evaluate.attack.random_start=false"]).evaluate
    assert not robust_flags(model, x, y, 0.0, ev, CPU).any()


# ---- 4. a validation split the runs never train on ------------------------------------------

def test_the_validation_split_is_held_out_of_training(prepared):
    val = load_training_split(prepared, "validation", 0, 20000, 1000)
    labels = load_split(prepared, "train").labels
    train_idx = set(balanced_subset(labels, 20000).tolist())
    images = load_split(prepared, "train").images
    val_idx = [i for i in range(len(labels)) if i not in train_idx]
    assert len(val) == 1000 and np.bincount(val.labels).tolist() == [100] * 10
    # none of the validation images is a training image of the run
    train_set = {images[i].tobytes() for i in train_idx}
    assert not any(img.tobytes() in train_set for img in val.images)
    assert len(val_idx) == len(labels) - 20000
    with pytest.raises(ValueError, match="data.val_size"):
        load_training_split(prepared, "validation", 0, 59500, 1000)
    # train_size 0 with a validation split: every training image but it
    rest = training_indices(labels, "train", 0, 0, 1000, "fashion_mnist")
    assert len(rest) == len(labels) - 1000 and not set(rest) & set(training_indices(labels, "validation", 0, 0, 1000,
                                                                                    "fashion_mnist"))
    assert len(load_training_split(prepared, "train", 0, 0, 1000)) == len(labels) - 1000


# ---- 6/7. dual BatchNorm: each half updates only its own statistics -------------------------

def _bn_buffers(model):
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, DualParams) and m.buffer_names:
            out[name] = (m.clean.running_mean.clone(), m.clean.running_var.clone(),
                         m.adv_running_mean.clone(), m.adv_running_var.clone())
    return out


def test_each_half_of_a_cotraining_batch_updates_only_its_own_batchnorm_statistics(tiny_cfg, prepared):
    torch.manual_seed(0)
    model = build_model(tiny_cfg.model, "resnet", "batchnorm").train()
    x, _ = load_split(prepared, "train", 64).tensors()
    clean, adv = x[:32], (x[32:] * 0.5 + 0.4)  # two halves with different statistics
    alone_clean, alone_adv, fused = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        alone_clean(clean, 0.0)
        alone_adv(adv, 1.0)
        fused(torch.cat([clean, adv]), torch.cat([torch.zeros(32), torch.ones(32)]))
    before, c, a, f = _bn_buffers(model), _bn_buffers(alone_clean), _bn_buffers(alone_adv), _bn_buffers(fused)
    assert len(f) == len(before) > 5
    for name in f:
        # clean BN: what the clean half alone gives; adversarial BN: what the adversarial half alone gives
        assert torch.allclose(f[name][0], c[name][0], atol=1e-6) and torch.allclose(f[name][1], c[name][1], atol=1e-6)
        assert torch.allclose(f[name][2], a[name][2], atol=1e-6) and torch.allclose(f[name][3], a[name][3], atol=1e-6)
        # and both moved: the halves' statistics differ, so a mixed-up routing would not match
        assert not torch.allclose(f[name][0], before[name][0]) and not torch.allclose(f[name][2], before[name][2])
    assert not torch.allclose(c[next(iter(c))][0], a[next(iter(a))][2])


# ---- 7. the k-shot examples never count in the score ----------------------------------------

def test_the_kshot_examples_are_kept_out_of_the_score(prepared):
    """The k-shot soup picks the weight right on all k examples and wrong on every other: scored on the
    rest it is 0%; scored with the k leaked in it would be k/n."""
    x, y = load_split(prepared, "test", 60).tensors()
    shift = ShiftConfig(k=10, draws=2, seed=0)
    shift.finetune.steps = 1
    weights = [0.0, 0.5, 1.0]
    correct = np.zeros((3, len(y)), dtype=bool)
    loss = np.ones((3, len(y)), dtype=np.float32)
    correct[0] = np.arange(len(y)) % 2 == 0  # clean mode: half right everywhere
    for d in range(shift.draws):
        select, _ = kshot_split(len(y), shift.k, shift.seed, d, "fog-3")
        assert not correct[1, select].any()
    select, rest = kshot_split(len(y), shift.k, shift.seed, 0, "fog-3")
    correct[1, select] = True  # the soup at w=0.5 is right on draw 0's k examples only
    torch.manual_seed(0)
    model = build_model(load_config([EXPERIMENTS_DIR / "tiny.yaml"]).model, "vit", "token").eval()
    draws = _adapt(model, x, y, correct, loss, weights, "fog-3", shift, 100, CPU)
    assert draws[0]["kshot_w"] == 0.5 and draws[0]["kshot_soup"] == 0.0
    assert draws[0]["clean_mode"] == pytest.approx(correct[0, rest].mean(), abs=1e-5)
    assert draws[0]["oracle_soup"] == pytest.approx(correct[0, rest].mean(), abs=1e-5)
