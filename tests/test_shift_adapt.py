"""Adaptation from k labelled target examples: no leak from the evaluation examples, adapter-only tuning."""
import numpy as np
import pytest
import torch

from advsoup.shift.adapt import choose_weight, finetune, kshot_split
from advsoup.config import RESNET_ADAPTERS, VIT_ADAPTERS, ModelConfig
from advsoup.models import build_model

ADAPTED = [("vit", a) for a in VIT_ADAPTERS if a != "none"] + [("resnet", a) for a in RESNET_ADAPTERS if a != "none"]


@pytest.mark.parametrize("n, k", [(100, 1), (100, 32), (61, 60), (1000, 32)])
def test_kshot_split_is_a_partition_fixed_by_seed_draw_and_shift(n, k):
    for draw in range(3):
        select, rest = kshot_split(n, k, seed=0, draw=draw, key="fog-3")
        assert len(select) == k and len(rest) == n - k
        assert not set(select) & set(rest) and set(select) | set(rest) == set(range(n))
        again, _ = kshot_split(n, k, seed=0, draw=draw, key="fog-3")
        assert np.array_equal(select, again)
    if n - k > 1 and k > 1:
        others = [kshot_split(n, k, 0, 0, "fog-3")[0], kshot_split(n, k, 0, 1, "fog-3")[0],
                  kshot_split(n, k, 1, 0, "fog-3")[0], kshot_split(n, k, 0, 0, "hard")[0]]
        assert len({tuple(o) for o in others}) == 4
    with pytest.raises(ValueError, match="shift.k"):
        kshot_split(10, 10, 0, 0, "fog-3")


def test_weight_choice_reads_only_the_selection_examples():
    rng = np.random.default_rng(0)
    n, weights = 200, 5
    select, rest = kshot_split(n, 20, 0, 0, "x")
    correct = rng.random((weights, n)) < 0.5
    loss = rng.random((weights, n)).astype(np.float32)
    correct[:, select] = False
    correct[3, select] = True  # weight 3 is best on the k examples
    correct[1, rest] = True  # weight 1 is best on the evaluation examples
    assert choose_weight(correct, loss, select) == 3
    # whatever the evaluation examples hold, the choice stays
    for _ in range(20):
        correct[:, rest] = rng.random((weights, len(rest))) < 0.5
        loss[:, rest] = rng.random((weights, len(rest)))
        assert choose_weight(correct, loss, select) == 3
    # ties in accuracy go to the lower loss on the selection
    correct[:, select] = True
    loss[:, select] = 1.0
    loss[4, select] = 0.1
    assert choose_weight(correct, loss, select) == 4


def _model(family, adapter):
    torch.manual_seed(0)
    model = build_model(ModelConfig(), family, adapter)
    with torch.no_grad():  # distinct clean and adversarial copies, as after co-training
        for _, p in model.adversarial_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _changed(model, before):
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


@pytest.mark.parametrize("family, adapter", ADAPTED)
@pytest.mark.parametrize("w", [0.0, 0.5])
def test_adapter_finetuning_changes_only_the_adapter(family, adapter, w):
    model = _model(family, adapter)
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    before = {k: v.clone() for k, v in model.state_dict().items()}
    domain = dict(model.domain_parameters())
    losses = finetune(model, list(domain.values()), x, y, w, steps=3, lr=1e-2)
    changed = _changed(model, before)
    assert changed and changed <= set(domain), changed - set(domain)
    assert losses[-1] < losses[0]
    if w == 0.0:  # clean mode trains the clean copies only
        assert not changed & {n for n, _ in model.adversarial_parameters()}
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_full_finetuning_changes_the_shared_parameters_too():
    model = _model("vit", "token")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune(model, list(model.parameters()), torch.rand(8, 1, 28, 28), torch.arange(8), 0.0, steps=2, lr=1e-3)
    changed = _changed(model, before)
    assert changed - {n for n, _ in model.domain_parameters()}
    assert "mean" not in changed and "std" not in changed
