"""Performance measurements of advsoup (`make bench`): ratios measured in one run.

Reads the demo experiment's sizes from params/ (nothing is copied here) and
prints, on random inputs of the configured shape:
  1. co-training step cost relative to a nominal step, against the cost model
     (2K + 6) / 3 for a K-step attack that computes no parameter gradients;
  2. one fused forward pass with per-sample soup weights against two passes;
  3. a soup sweep that passes the weight to one model against rebuilding a
     plain timm model for every weight.
Absolute speeds depend on the machine and on what else runs; the ratios are
the point.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F

from advsoup.robust.attacks import pgd
from advsoup.config import EXPERIMENTS_DIR, load_config
from advsoup.models import FAMILIES, build_model


def timed(fn: Callable[[], None], repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    cfg = load_config([EXPERIMENTS_DIR / "demo.yaml"])
    torch.set_num_threads(torch.get_num_threads())
    m, t = cfg.model, cfg.train
    b = t.batch_size
    x = torch.rand(b, m.in_chans, m.img_size, m.img_size)
    y = torch.randint(0, m.num_classes, (b,))
    model = build_model(m, "vit", "token")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def nominal_step() -> None:
        loss = F.cross_entropy(model(x, 0.0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def cotrain_step() -> None:
        x_adv = pgd(model, x, y, t.attack, w=1.0)
        w = torch.cat([torch.zeros(b), torch.ones(b)])
        loss = F.cross_entropy(model(torch.cat([x, x_adv]), w), torch.cat([y, y]))
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    t_nom, t_co = timed(nominal_step, 10), timed(cotrain_step, 5)
    k = t.attack.steps
    print(f"[1] train step, batch {b}, ViT {m.vit.embed_dim}x{m.vit.depth}: nominal {b / t_nom:.0f} img/s, "
          f"co-training with PGD-{k} {b / t_co:.0f} img/s; cost ratio {t_co / t_nom:.2f} "
          f"(model (2K+6)/3 = {(2 * k + 6) / 3:.2f})")

    model.eval()
    for adapter in ("token", "layernorm", "bias"):
        net = build_model(m, "vit", adapter).eval()
        x2 = torch.rand(2 * b, m.in_chans, m.img_size, m.img_size)
        w = torch.cat([torch.zeros(b), torch.ones(b)])
        with torch.no_grad():
            fused = timed(lambda: net(x2, w), 10)
            split = timed(lambda: (net(x2[:b], 0.0), net(x2[b:], 1.0)), 10)
        print(f"[2] {adapter:9s} adapter, forward of {2 * b} images: fused pass / two passes = {fused / split:.2f}")

    weights = cfg.evaluate.soup_weights
    xe = torch.rand(1000, m.in_chans, m.img_size, m.img_size)
    soup = build_model(m, "vit", "token").eval()

    def by_argument() -> None:
        with torch.inference_mode():
            for w in weights:
                soup(xe, w)

    def by_rebuild() -> None:
        with torch.inference_mode():
            for w in weights:
                rebuilt = FAMILIES["vit"](m).eval()
                rebuilt.load_state_dict(soup.plain_state_dict(w))
                rebuilt((xe - soup.mean) / soup.std)

    arg, rebuild = timed(by_argument, 2, 1), timed(by_rebuild, 2, 1)
    print(f"[3] soup sweep of {len(weights)} weights on 1000 images: weight as argument / rebuild per weight "
          f"= {arg / rebuild:.2f}")


if __name__ == "__main__":
    main()
