"""Evaluation costs: clean and PGD images/s, the soup sweep per weight, AutoAttack per image.

All on the demo's ViT (random weights: the cost of a pass does not depend on
them), in CPU seconds. AutoAttack's cost depends on how many images stay
robust, since each attack only runs on the images the previous ones did not
break; it is measured per robust image, the worst case: labels are the model's
own predictions (every image starts correct) and eps is tiny (none is broken),
so every attack spends its whole budget on every image. The cost per image
falls with the batch (the demo's model is small enough that per-call overhead
shows): the figure is for a batch of ``aa_images``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, List

import torch

from advsoup.models import FAMILIES, build_model
from advsoup.robust import autoattack
from advsoup.robust.evaluate import clean_accuracy, robust_flags

from common import Table, cpu_seconds, demo_config, interleaved, ratio

CPU = torch.device("cpu")


def run(table: Table, rounds: int, aa_images: int, aa_attacks: List[str]) -> Dict[str, float]:
    cfg = demo_config()
    m, ev = cfg.model, cfg.evaluate
    torch.manual_seed(0)
    model = build_model(m, "vit", "token").eval()
    n = 2 * ev.batch_size
    x = torch.rand(n, m.in_chans, m.img_size, m.img_size)
    y = torch.randint(0, m.num_classes, (n,))
    sec = f"evaluation (demo ViT, {torch.get_num_threads()} thread(s))"

    clean_s = cpu_seconds(lambda: clean_accuracy(model, x, y, 0.5, ev.batch_size * 4, CPU), 3) / n
    pgd_s = cpu_seconds(lambda: robust_flags(model, x, y, 0.5, ev, CPU, desc="bench PGD"), 1) / n
    k = ev.attack.steps
    table.add(sec, "clean accuracy, images/s of CPU", f"{1 / clean_s:.0f}")
    table.add(sec, f"PGD-{k} robust accuracy, images/s of CPU", f"{1 / pgd_s:.0f}",
              f"{pgd_s / clean_s:.0f}x a clean image (cost model {2 * k + 1} passes)")
    test_n = cfg.data.test_size or 10000
    rob_n = min(ev.robust_subset or test_n, test_n)
    per_w = test_n * clean_s + rob_n * pgd_s
    table.add(sec, f"soup sweep: CPU s per soup weight ({test_n} clean + {rob_n} PGD images)",
              f"{per_w:.1f} s ({len(ev.soup_weights)} weights: {per_w * len(ev.soup_weights):.0f} s)",
              f"{100 * rob_n * pgd_s / per_w:.0f}% of it PGD")

    # The soup sweep passes the weight to one model; the alternative rebuilds a plain timm model per weight.
    xe = x[:500]

    def by_argument() -> None:
        with torch.inference_mode():
            for w in ev.soup_weights:
                model(xe, w)

    def by_rebuild() -> None:
        with torch.inference_mode():
            for w in ev.soup_weights:
                plain = FAMILIES["vit"](m).eval()
                plain.load_state_dict(model.plain_state_dict(w))
                plain((xe - model.mean) / model.std)

    t = interleaved({"arg": by_argument, "rebuild": by_rebuild}, rounds=rounds, calls=1, warmup=1)
    table.add(sec, "soup sweep, weight as argument / rebuilt timm model per weight, cost",
              f"{ratio(t, 'arg', 'rebuild'):.2f}", "< 1: one model serves every weight")

    b = cfg.train.batch_size
    for adapter in ("token", "layernorm", "bias"):
        net = build_model(m, "vit", adapter).eval()
        x2 = torch.rand(2 * b, m.in_chans, m.img_size, m.img_size)
        w2 = torch.cat([torch.zeros(b), torch.ones(b)])

        def fused() -> None:
            with torch.no_grad():
                net(x2, w2)

        def split() -> None:
            with torch.no_grad():
                net(x2[:b], 0.0), net(x2[b:], 1.0)

        t = interleaved({"fused": fused, "split": split}, rounds=rounds, calls=5)
        table.add(sec, f"{adapter} adapter, forward of {2 * b} images at weights 0|1: fused / two passes, cost",
                  f"{ratio(t, 'fused', 'split'):.2f}", "< 1: fusing pays")

    # AutoAttack per robust image, attack by attack (see the module docstring).
    xa = x[:aa_images]
    with torch.no_grad():
        ya = model(xa, 1.0).argmax(1)
    tiny = replace(ev.attack, eps=1e-5)
    per_image = {}
    for name in aa_attacks:
        aa_cfg = replace(ev.autoattack, version="custom", attacks=[name])
        per_image[name] = cpu_seconds(lambda: autoattack.robust_flags(
            model, xa, ya, 1.0, tiny, aa_cfg, ev.batch_size, CPU), 1) / aa_images
    table.add(sec, f"AutoAttack, CPU s per robust image (batch {aa_images}): {' / '.join(per_image)}",
              " / ".join(f"{per_image[a]:.2f}" for a in per_image) + f" (together: {sum(per_image.values()):.2f})",
              f"a PGD-{k} image: {pgd_s:.4f} s")
    return {"clean_s": clean_s, "pgd_s": pgd_s, **{f"aa_{a}": s for a, s in per_image.items()}}
