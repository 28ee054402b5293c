"""Training step costs: ours against a plain PyTorch loop, co-training against the cost model.

The cost model counts a forward pass as 1 and a backward pass as 2 (input and
parameter gradients): a nominal step is 3, a K-step PGD attack that asks for
the input gradient only is K * 2, and the co-training update on the clean and
adversarial halves is 6, so co-training / nominal = (2K + 6) / 3.

"Ours" is advsoup's own step (train._loss, train._param_groups, AdamW, token
adapter); "plain" is a minimal loop on the same timm VisionTransformer with
the same batch, written here from scratch.
"""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Callable, Dict

import torch
import torch.nn.functional as F

from advsoup.models import build_model
from advsoup.models.vit import create_vit
from advsoup.robust.attacks import pgd
from advsoup.train import _loss, _param_groups

from common import Table, demo_batch, demo_config, interleaved, median, ratio


def _plain_pgd(net, x, y, eps, step_size, steps, gen):
    # Minimal PGD: random start, sign steps, input gradient only.
    delta = ((torch.rand(x.shape, generator=gen) * 2 - 1) * eps + x).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(net(x + delta), y), delta)
        delta = ((delta.detach() + step_size * g.sign()).clamp(-eps, eps) + x).clamp(0, 1) - x
    return (x + delta).detach()


def run(table: Table, rounds: int, fused_only_k: int = 2) -> Dict[str, float]:
    cfg = demo_config()
    m, t = cfg.model, cfg.train
    b = t.batch_size
    x, y = demo_batch(cfg)
    gen = torch.Generator()
    mean, std = torch.tensor(m.mean).view(1, -1, 1, 1), torch.tensor(m.std).view(1, -1, 1, 1)

    ours = build_model(m, "vit", "token").train()
    opt = torch.optim.AdamW(_param_groups(ours, t.weight_decay), lr=t.lr, betas=tuple(t.betas))
    plain = create_vit(m).train()
    popt = torch.optim.AdamW(plain.parameters(), lr=t.lr, betas=tuple(t.betas))

    def job(training: str, k: int) -> SimpleNamespace:
        return SimpleNamespace(train=replace(t, attack=replace(t.attack, steps=k)),
                               run=SimpleNamespace(training=training))

    def ours_step(training: str, k: int = 0) -> Callable[[], None]:
        j = job(training, k)

        def step() -> None:
            loss, _ = _loss(j, ours, x, y, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def ours_two_pass(k: int) -> Callable[[], None]:
        a = replace(t.attack, steps=k)

        def step() -> None:
            x_adv = pgd(ours, x, y, a, w=1.0, generator=gen)
            loss = F.cross_entropy(ours(x, 0.0), y) + F.cross_entropy(ours(x_adv, 1.0), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def plain_step(k: int = 0, fused: bool = False) -> Callable[[], None]:
        a = t.attack

        def step() -> None:
            if k == 0:
                loss = F.cross_entropy(plain((x - mean) / std), y)
            else:
                plain.eval()
                x_adv = _plain_pgd(lambda v: plain((v - mean) / std), x, y, a.eps, a.step_size, k, gen)
                plain.train()
                if fused:
                    logits = plain((torch.cat([x, x_adv]) - mean) / std)
                    loss = F.cross_entropy(logits[:b], y) + F.cross_entropy(logits[b:], y)
                else:
                    loss = F.cross_entropy(plain((x - mean) / std), y) + \
                        F.cross_entropy(plain((x_adv - mean) / std), y)
            popt.zero_grad(set_to_none=True)
            loss.backward()
            popt.step()
        return step

    # The parts of a co-training step, to see where a gap to the cost model goes.
    a2 = replace(t.attack, steps=fused_only_k)
    x2, y2 = torch.cat([x, x]), torch.cat([y, y])
    w2 = torch.cat([torch.zeros(b), torch.ones(b)])

    def fwd_bwd(xx, yy, w) -> Callable[[], None]:
        def f() -> None:
            ours.zero_grad(set_to_none=True)
            F.cross_entropy(ours(xx, w), yy).backward()
        return f

    def forward_only() -> None:
        with torch.no_grad():
            ours(x, 0.0)

    def forward_graph() -> None:
        F.cross_entropy(ours(x, 0.0), y)  # the graph is built, then dropped

    def input_grad_step() -> None:
        ours.eval()
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(ours(xi, 1.0), y), xi)
        ours.train()

    def attack_frozen() -> None:
        # The same attack with the parameters frozen: does autograd's parameter bookkeeping cost anything?
        for p in ours.parameters():
            p.requires_grad_(False)
        pgd(ours, x, y, a2, w=1.0, generator=gen)
        for p in ours.parameters():
            p.requires_grad_(True)

    # fill the gradients once so that AdamW's step alone can be timed
    fwd_bwd(x, y, 0.0)()
    variants = {
        "plain nominal": plain_step(),
        "ours nominal": ours_step("nominal"),
        **{f"ours cotrain K={k}": ours_step("cotrain", k) for k in (1, 2, 5)},
        **{f"plain two-pass K={k}": plain_step(k) for k in (1, 2, 5)},
        f"plain fused K={fused_only_k}": plain_step(fused_only_k, fused=True),
        f"ours two-pass K={fused_only_k}": ours_two_pass(fused_only_k),
        "fwd (no grad)": forward_only,
        "fwd (graph)": forward_graph,
        "fwd+input grad": input_grad_step,
        "fwd+bwd B": fwd_bwd(x, y, 0.0),
        "fwd+bwd 2B fused": fwd_bwd(x2, y2, w2),
        "AdamW step": opt.step,
        f"PGD-{fused_only_k} attack": lambda: pgd(ours, x, y, a2, w=1.0, generator=gen),
        f"PGD-{fused_only_k} frozen params": attack_frozen,
    }
    times = interleaved(variants, rounds=rounds, calls=3)
    med = {k: median(v) for k, v in times.items()}
    sec = f"train step (batch {b}, ViT {m.vit.embed_dim}x{m.vit.depth}, {torch.get_num_threads()} thread(s))"
    table.add(sec, "ours nominal: img/s of CPU time", f"{b / med['ours nominal']:.0f}")
    table.add(sec, "ours nominal / plain loop, throughput", f"{ratio(times, 'plain nominal', 'ours nominal'):.3f}x",
              "target >= 0.97x")
    for k in (1, 2, 5):
        model = (2 * k + 6) / 3
        r = ratio(times, f"ours cotrain K={k}", "ours nominal")
        rp = ratio(times, f"plain two-pass K={k}", "plain nominal")
        table.add(sec, f"co-training PGD-{k} / nominal, cost", f"ours {r:.2f}, plain two-pass loop {rp:.2f}",
                  f"cost model {model:.2f}; ours {100 * (r / model - 1):+.0f}% (target within 10%)")
    k = fused_only_k
    table.add(sec, f"PGD-{k} co-training, fused pass / two passes, cost",
              f"ours {ratio(times, f'ours cotrain K={k}', f'ours two-pass K={k}'):.3f}, "
              f"plain {ratio(times, f'plain fused K={k}', f'plain two-pass K={k}'):.3f}", "< 1: fusing pays")
    # Where the time goes: each part in units of one forward pass with autograd's graph.
    f = med["fwd (graph)"]
    table.add(sec, "units of a forward (graph built): fwd no-grad / fwd+input-grad / fwd+bwd / fwd+bwd 2B",
              f"{med['fwd (no grad)'] / f:.2f} / {med['fwd+input grad'] / f:.2f} / {med['fwd+bwd B'] / f:.2f} / "
              f"{med['fwd+bwd 2B fused'] / f:.2f}", "cost model 1 / 2 / 3 / 6")
    table.add(sec, "AdamW step + zero_grad, share of a nominal step",
              f"{100 * med['AdamW step'] / med['ours nominal']:.1f}%", "cost model 0")
    predicted = (med[f"PGD-{k} attack"] + med["fwd+bwd 2B fused"] + med["AdamW step"]) / med["ours nominal"]
    table.add(sec, f"PGD-{k} co-training from its measured parts (attack + fused fwd+bwd + AdamW) / nominal",
              f"{predicted:.2f} = {med[f'PGD-{k} attack'] / med['ours nominal']:.2f} + "
              f"{med['fwd+bwd 2B fused'] / med['ours nominal']:.2f} + {med['AdamW step'] / med['ours nominal']:.2f}",
              f"cost model {2 * k / 3:.2f} + 2.00 + 0")
    table.add(sec, f"PGD-{k} attack with parameters frozen / as run",
              f"{ratio(times, f'PGD-{k} frozen params', f'PGD-{k} attack'):.3f}",
              "< 1: autograd's parameter bookkeeping costs the attack")
    return med
