"""Adapters: equivalence with timm, routing of clean and adversarial inputs, fused passes, dual BN."""
import pytest
import torch

from advsoup.config import RESNET_ADAPTERS, VIT_ADAPTERS, ModelConfig, VitConfig
from advsoup.models import FAMILIES, build_model

CASES = [("vit", a) for a in VIT_ADAPTERS] + [("resnet", a) for a in RESNET_ADAPTERS]


def _perturb_adv_copies(model):
    with torch.no_grad():
        for _, p in model.adversarial_parameters():
            p.add_(torch.randn_like(p) * 0.5)


@pytest.mark.parametrize("family, adapter", CASES)
def test_equal_copies_compute_the_plain_timm_model(family, adapter):
    torch.manual_seed(0)
    cfg = ModelConfig()
    plain = FAMILIES[family](cfg).eval()
    model = build_model(cfg, family, adapter).eval()
    model.load_plain_state_dict(plain.state_dict())  # both copies from the plain timm weights
    x = torch.rand(6, 1, 28, 28)
    ref = plain((x - model.mean) / model.std)
    for w in (0.0, 0.3, 1.0, torch.tensor([0.0, 1.0, 0.5, 0.0, 1.0, 1.0])):
        assert (model(x, w) - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("family, adapter", [c for c in CASES if c[1] != "none"])
def test_modes_differ_only_through_the_adapter(family, adapter):
    torch.manual_seed(0)
    model = build_model(ModelConfig(), family, adapter).eval()
    x = torch.rand(4, 1, 28, 28)
    clean_before = model(x, 0.0)
    _perturb_adv_copies(model)
    assert torch.equal(model(x, 0.0), clean_before)  # clean mode never reads the adversarial copies
    assert not torch.allclose(model(x, 1.0), clean_before, atol=1e-4)
    # robust mode's gradient reaches only shared parameters and adversarial copies
    model.zero_grad()
    model(x, 1.0).sum().backward()
    adv = {n for n, _ in model.adversarial_parameters()}
    clean_copies = {n for n, _ in model.domain_parameters()} - adv
    for n, p in model.named_parameters():
        if n in clean_copies:
            assert p.grad is None or p.grad.abs().sum() == 0, n
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in adv)


def test_token_adapter_owns_one_token_only():
    model = build_model(ModelConfig(), "vit", "token")
    assert model.num_domain_parameters() == ModelConfig().vit.embed_dim
    assert [n for n, _ in model.adversarial_parameters()] == ["net.parametrizations.cls_token.0.adv"]


@pytest.mark.parametrize("family, adapter", [c for c in CASES if c[1] != "none"])
def test_one_fused_pass_equals_two_separate_passes(family, adapter):
    torch.manual_seed(1)
    model = build_model(ModelConfig(), family, adapter).eval()
    _perturb_adv_copies(model)
    x = torch.rand(8, 1, 28, 28)
    w = torch.tensor([0.0] * 4 + [1.0] * 4)
    fused = model(x, w)
    assert torch.allclose(fused[:4], model(x[:4], 0.0), atol=1e-5)
    assert torch.allclose(fused[4:], model(x[4:], 1.0), atol=1e-5)
    # interleaved weights route sample by sample, too
    perm = torch.randperm(8)
    assert torch.allclose(model(x[perm], w[perm]), fused[perm], atol=1e-5)


def test_soup_interpolates_the_tokens_linearly():
    torch.manual_seed(2)
    model = build_model(ModelConfig(), "vit", "token").eval()
    _perturb_adv_copies(model)
    clean, adv = model.net.parametrizations.cls_token.original, model.net.parametrizations.cls_token[0].adv
    with model.state.use(0.25):
        assert torch.allclose(model.net.cls_token, 0.75 * clean + 0.25 * adv)
    sd = model.plain_state_dict(0.25)  # a soup exports as a plain timm ViT
    plain = FAMILIES["vit"](ModelConfig()).eval()
    plain.load_state_dict(sd)
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(plain((x - model.mean) / model.std), model(x, 0.25), atol=1e-6)


def test_dual_batchnorm_normalises_each_half_with_its_own_statistics():
    torch.manual_seed(3)
    model = build_model(ModelConfig(), "resnet", "batchnorm").train()
    clean_x, adv_x = torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28) * 0.2 + 0.8
    w = torch.tensor([0.0] * 8 + [1.0] * 8)
    model(torch.cat([clean_x, adv_x]), w)
    bn = model.net.bn1
    # each copy's running mean moved towards its own half only
    assert not torch.allclose(bn.clean.running_mean, bn.adv_running_mean)
    with pytest.raises(ValueError, match="weights 0 and 1"):
        model(clean_x, 0.5)  # interpolated BN statistics are undefined while training
    model.eval()
    model(clean_x, 0.5)  # in eval mode a BN soup interpolates the running statistics


def test_bad_weights_are_refused():
    model = build_model(ModelConfig(), "vit", "token")
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        model(x, 1.5)
    with pytest.raises(ValueError, match="2 soup weights for a batch of 3"):
        model(torch.rand(3, 1, 28, 28), torch.tensor([0.0, 1.0]))


def test_dual_batchnorm_soup_interpolates_affine_parameters_and_running_statistics():
    torch.manual_seed(4)
    model = build_model(ModelConfig(), "resnet", "batchnorm").train()
    clean_x, adv_x = torch.rand(16, 1, 28, 28), torch.rand(16, 1, 28, 28) * 0.3 + 0.7
    model(torch.cat([clean_x, adv_x]), torch.tensor([0.0] * 16 + [1.0] * 16))  # each BN copy gets its statistics
    _perturb_adv_copies(model)  # and its own affine parameters
    model.eval()
    bn = model.net.bn1
    soup = model.plain_state_dict(0.3)
    for name in ("weight", "bias", "running_mean", "running_var"):
        clean = getattr(bn.clean, name)
        adv = bn.adv_params[name] if name in ("weight", "bias") else getattr(bn, f"adv_{name}")
        assert not torch.allclose(clean, adv)
        assert torch.allclose(soup[f"bn1.{name}"], 0.7 * clean + 0.3 * adv)
    plain = FAMILIES["resnet"](ModelConfig()).eval()
    plain.load_state_dict(soup)  # a dual-BN soup exports as a plain timm ResNet
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(plain((x - model.mean) / model.std), model(x, 0.3), atol=1e-5)


def test_plain_state_dict_of_another_architecture_is_refused():
    model = build_model(ModelConfig(), "vit", "layernorm")
    bigger = FAMILIES["vit"](ModelConfig(vit=VitConfig(depth=5))).state_dict()
    with pytest.raises(KeyError, match=r"12 key\(s\) this network does not have.*blocks.4.attn"):
        model.load_plain_state_dict(bigger)
    smaller = FAMILIES["vit"](ModelConfig(vit=VitConfig(depth=3))).state_dict()
    with pytest.raises(KeyError, match="has no 'blocks.3"):
        model.load_plain_state_dict(smaller)
