"""Domain-specific parameters of every adapter, counted from the modules.

Nothing here is hard-coded: each adapter is added to a freshly built timm
network (on PyTorch's ``meta`` device, so even ViT-B16 costs no memory and
nothing is downloaded) and the adversarial copies it creates are counted.
"Domain-specific parameters" are the trainable parameters one domain adds,
i.e. the adversarial copies; dual BatchNorm also keeps adversarial running
statistics, which are counted apart (buffers, not trained by the optimiser).

The paper states that the class-token adapter "uses 49x fewer" domain-specific
parameters than dual normalisation. For ViT-B16 our count is 768 for the
token and 38,400 for dual LayerNorm (25 LayerNorms: two per block in 12
blocks plus the final one, 2 x 768 affine parameters each), a ratio of 50.
The difference between the two counts is exactly 49 tokens' worth
(38,400 - 768 = 49 x 768), which is the likely reading of "49x fewer";
leaving the final LayerNorm out would give 48x instead. :func:`paper_check`
reports both numbers next to the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

import pandas as pd
import torch
from torch import nn

from ..atomic import write_csv, write_json
from ..config import RESNET_ADAPTERS, VIT_ADAPTERS, ModelConfig
from .adapters import AdaptedModel
from .resnet import create_resnet, create_resnet50
from .vit import create_vit, create_vit_b16

PAPER_TOKEN_VS_DUAL_NORM = 49  # "49x fewer domain-specific parameters than dual normalisation layers"


@dataclass(frozen=True)
class Network:
    name: str
    family: str
    build: Callable[[], nn.Module]
    what: str  # one line for the table: which network this is


def networks(model: ModelConfig) -> List[Network]:
    """The study's two networks (sized by ``model``) and their paper-scale counterparts."""
    return [
        Network("demo_vit", "vit", lambda: create_vit(model),
                f"timm ViT, embed {model.vit.embed_dim}, depth {model.vit.depth}, patch {model.vit.patch_size}, "
                f"{model.img_size} px"),
        Network("demo_resnet", "resnet", lambda: create_resnet(model),
                f"timm ResNet (BasicBlock), layers {list(model.resnet.layers)}, "
                f"channels {list(model.resnet.channels)}, {model.img_size} px"),
        Network("vit_b16", "vit", create_vit_b16, "timm vit_base_patch16_224 (the paper's ViT-B16)"),
        Network("resnet50", "resnet", create_resnet50,
                "timm resnet50 (AdvProp's dual BN at ImageNet scale)"),
    ]


def count(net: Network, adapter: str) -> Dict[str, object]:
    """One row: what ``adapter`` adds to ``net``, counted on an unallocated (meta) copy."""
    with torch.device("meta"):
        model = AdaptedModel(net.build(), adapter, [0.0], [1.0])  # input normalisation: irrelevant to counts
    domain = model.num_domain_parameters()
    network = sum(p.numel() for p in model.net.parameters()) - domain
    # Adversarial running statistics of dual BN: copied buffers (num_batches_tracked is a counter, not a statistic).
    stats = sum(b.numel() for n, b in model.named_buffers()
                if n.rsplit(".", 1)[-1].startswith("adv_") and b.is_floating_point())
    return {"network": net.name, "family": net.family, "adapter": adapter, "domain_parameters": domain,
            "domain_statistics": stats, "network_parameters": network,
            "percent_of_network": round(100 * domain / network, 5), "description": net.what}


def parameter_table(model: ModelConfig) -> List[Dict[str, object]]:
    """Every adapter of each network's family; ``times_token``: domain parameters per class-token parameter."""
    rows = []
    for net in networks(model):
        adapters = VIT_ADAPTERS if net.family == "vit" else RESNET_ADAPTERS
        mine = [count(net, a) for a in adapters]
        token = next((r["domain_parameters"] for r in mine if r["adapter"] == "token"), None)
        for r in mine:
            r["times_token"] = round(r["domain_parameters"] / token, 3) if token else None
        rows += mine
    return rows


def paper_check(rows: List[Dict[str, object]]) -> Dict[str, object]:
    """ViT-B16: dual LayerNorm against the class token, next to the paper's 49x."""
    b16 = {r["adapter"]: r for r in rows if r["network"] == "vit_b16"}
    token, dual_ln = b16["token"]["domain_parameters"], b16["layernorm"]["domain_parameters"]
    with torch.device("meta"):
        norms = {n: m for n, m in create_vit_b16().named_modules() if isinstance(m, nn.LayerNorm)}
    outside_blocks = sum(m.weight.numel() + m.bias.numel() for n, m in norms.items() if not n.startswith("blocks."))
    return {
        "paper_token_vs_dual_norm": PAPER_TOKEN_VS_DUAL_NORM,
        "vit_b16_token": token, "vit_b16_dual_layernorm": dual_ln, "vit_b16_layernorms": len(norms),
        "ratio": round(dual_ln / token, 3),
        "difference_in_tokens": round((dual_ln - token) / token, 3),
        "ratio_blocks_only": round((dual_ln - outside_blocks) / token, 3),
        "reading": "dual LayerNorm holds `ratio` times the token's parameters; the paper's '49x fewer' matches "
                   "`difference_in_tokens` (dual LN minus token, counted in tokens); leaving the final "
                   "LayerNorm out gives `ratio_blocks_only`",
    }


def write_accounting(model: ModelConfig, table: Path, summary: Path) -> Dict[str, object]:
    """The CSV of every (network, adapter) and a JSON with the same rows, keyed '<network> <adapter>' (DVC's
    metrics drop lists), and the paper check."""
    rows = parameter_table(model)
    check = paper_check(rows)
    write_csv(table, pd.DataFrame(rows))
    write_json(summary, {"adapters": {f"{r['network']} {r['adapter']}": r for r in rows}, "paper_check": check})
    return check
