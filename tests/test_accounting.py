"""Parameter accounting: domain-specific parameters counted from the modules, ViT-B16 included."""
import json

import pandas as pd
import pytest
from torch import nn

from advsoup.models.accounting import paper_check, parameter_table
from advsoup.cli import main
from advsoup.config import EXPERIMENTS_DIR, ModelConfig
from advsoup.models import FAMILIES


@pytest.fixture(scope="module")
def table():
    return {(r["network"], r["adapter"]): r for r in parameter_table(ModelConfig())}


def test_demo_vit_counts_follow_from_its_shape(table):
    m = ModelConfig()
    d, depth, c, hidden = m.vit.embed_dim, m.vit.depth, m.num_classes, int(m.vit.embed_dim * m.vit.mlp_ratio)
    expected = {
        "none": 0,
        "token": d,
        "layernorm": (2 * depth + 1) * 2 * d,             # norm1, norm2 per block and the final norm
        "bias": depth * (3 * d + d + hidden + d) + c,      # qkv, proj, fc1, fc2 per block and the head
        "head": d * c + c,
    }
    assert {a: table["demo_vit", a]["domain_parameters"] for a in expected} == expected
    assert table["demo_vit", "layernorm"]["times_token"] == 2 * (2 * depth + 1)


def test_dual_batchnorm_copies_every_bn_affine_parameter_and_statistic(table):
    plain = FAMILIES["resnet"](ModelConfig())
    channels = sum(bn.num_features for bn in plain.modules() if isinstance(bn, nn.BatchNorm2d))
    row = table["demo_resnet", "batchnorm"]
    assert row["domain_parameters"] == 2 * channels  # weight and bias
    assert row["domain_statistics"] == 2 * channels  # running mean and variance
    assert row["network_parameters"] == sum(p.numel() for p in plain.parameters())


def test_paper_scale_counts(table):
    # ViT-B16: 768-wide token; 25 LayerNorms x 2 x 768; biases of 12 blocks (2304 + 768 + 3072 + 768) + 1000;
    # a second 768 x 1000 head. ResNet-50: 53 BatchNorms with 26,560 channels in all.
    assert {a: table["vit_b16", a]["domain_parameters"] for a in ("token", "layernorm", "bias", "head")} == \
        {"token": 768, "layernorm": 38_400, "bias": 83_944, "head": 769_000}
    assert table["vit_b16", "token"]["network_parameters"] == 86_567_656
    r50 = table["resnet50", "batchnorm"]
    assert (r50["domain_parameters"], r50["domain_statistics"], r50["network_parameters"]) == \
        (53_120, 53_120, 25_557_032)


def test_paper_check_explains_49x():
    check = paper_check(parameter_table(ModelConfig()))
    assert check["paper_token_vs_dual_norm"] == 49
    assert (check["ratio"], check["difference_in_tokens"], check["ratio_blocks_only"]) == (50.0, 49.0, 48.0)
    assert check["vit_b16_layernorms"] == 25


def test_cli_stage_writes_the_table_and_summary(tmp_path, capsys):
    assert main(["adapters", "--config", str(EXPERIMENTS_DIR / "tiny.yaml"), f"results_dir={tmp_path}",
                 "model.vit.embed_dim=32"]) == 0
    report = tmp_path / "tiny" / "report"  # everything under the experiment's name
    rows = pd.read_csv(report / "tables" / "adapter_parameters.csv")
    assert len(rows) == 5 + 2 + 5 + 2  # every adapter of each network's family
    token = rows[(rows.network == "demo_vit") & (rows.adapter == "token")].iloc[0]
    assert token.domain_parameters == 32  # the config's network, not a fixed one
    summary = json.loads((report / "summaries" / "adapter_parameters.json").read_text())
    assert summary["provenance"]["stage"] == "adapters"  # what it was computed from
    assert summary["paper_check"]["ratio"] == 50.0 and len(summary["adapters"]) == len(rows)
    assert "50x as many" in capsys.readouterr().out
