"""Peak memory of training and evaluation, and FLOPs per image.

Demo size: measured, as the peak resident set of a fresh process running a few
steps (``python memory.py train|pgd``), minus that process's resident set just
before the first step (torch, the model and the batch). ViT-B16 at 224 px:
counted on the meta device (no memory is allocated): parameters, gradients and
AdamW's two moments, plus the activations autograd saves for the backward
pass (every tensor its saved-tensor hook sees, bytes summed: a tensor that
several operations save is counted once per operation, so this errs high;
the demo size, counted and measured, shows by how much), and FLOPs from
torch.utils.flop_counter.
"""
from __future__ import annotations

import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
GB = 1024 ** 3


def _peak_rss_bytes(reset: bool = False) -> int:
    """Peak resident set (VmHWM); ``reset`` first lowers the mark to the current RSS (Linux's clear_refs 5), so a
    transient peak of the imports cannot hide the rise of the steps measured after it."""
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: the mark since start


def _measure(kind: str) -> None:
    """In a fresh process: peak RSS of co-training steps or of a PGD evaluation batch, at the demo size."""
    from advsoup.models import build_model
    from advsoup.robust.evaluate import robust_flags
    from advsoup.train import _loss, _param_groups
    from types import SimpleNamespace
    from common import demo_config

    torch.set_num_threads(1)
    cfg = demo_config()
    m = cfg.model
    model = build_model(m, "vit", "token")
    b = cfg.train.batch_size if kind == "train" else cfg.evaluate.batch_size
    x = torch.rand(b, m.in_chans, m.img_size, m.img_size)
    y = torch.randint(0, m.num_classes, (b,))
    opt = torch.optim.AdamW(_param_groups(model, 0.05))
    job = SimpleNamespace(train=cfg.train, run=SimpleNamespace(training="cotrain"))
    before = _peak_rss_bytes(reset=True)
    for _ in range(3):
        if kind == "train":
            model.train()
            loss, _ = _loss(job, model, x, y, torch.Generator())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            robust_flags(model.eval(), x, y, 1.0, cfg.evaluate, torch.device("cpu"), desc="bench")
    print(before, _peak_rss_bytes())


def measured(kind: str) -> Tuple[int, int]:
    out = subprocess.run([sys.executable, str(Path(__file__)), kind], capture_output=True, text=True, check=True,
                         cwd=HERE).stdout.split()
    return int(out[0]), int(out[1])


def counted(net: torch.nn.Module, shape: Tuple[int, ...], train: bool) -> Dict[str, float]:
    """Bytes of parameters (+ gradients and AdamW moments when training) and of saved activations; FLOPs."""
    net = net.to("meta")
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    x = torch.empty(shape, device="meta")
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    counter = FlopCounterMode(display=False)
    # An evaluation attack needs the input gradient only: parameters frozen, the input requires grad.
    net.requires_grad_(train)
    x.requires_grad_(not train)
    with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x).sum().backward()
    return {"params": params, "state": params * (4 if train else 1), "saved": saved,
            "flops": counter.get_total_flops()}


def run(table) -> None:
    from advsoup.models.vit import create_vit, create_vit_b16
    from common import demo_config

    cfg = demo_config()
    b_train, b_eval = cfg.train.batch_size, cfg.evaluate.batch_size
    sec = "memory and FLOPs"
    for kind, what, b in (("train", f"co-training step, batch {b_train}+{b_train}", b_train),
                          ("pgd", f"PGD evaluation, batch {b_eval}", b_eval)):
        before, peak = measured(kind)
        table.add(sec, f"demo ViT, {what}: peak RSS (and its rise over model+batch)",
                  f"{peak / GB:.2f} GB (+{(peak - before) / GB:.2f} GB)")
    m = cfg.model
    shape = (1, m.in_chans, m.img_size, m.img_size)
    for name, build, shp in (("demo ViT", lambda: create_vit(m), shape),
                             ("ViT-B16 224 px", create_vit_b16, (1, 3, 224, 224))):
        tr = counted(build(), shp, train=True)
        ev = counted(build(), shp, train=False)
        fused = 2 * b_train
        table.add(sec, f"{name}: training, counted (params+grads+AdamW, saved activations per image; "
                       f"at a fused batch of {fused})",
                  f"{tr['state'] / GB:.3f} GB + {tr['saved'] / 2**20:.1f} MiB/image; "
                  f"{(tr['state'] + fused * tr['saved']) / GB:.1f} GB",
                  f"{tr['flops'] / 1e9:.3f} GFLOP per image fwd+bwd")
        table.add(sec, f"{name}: PGD evaluation, counted (params, saved activations per image; at batch {b_eval})",
                  f"{ev['state'] / GB:.3f} GB + {ev['saved'] / 2**20:.1f} MiB/image; "
                  f"{(ev['state'] + b_eval * ev['saved']) / GB:.1f} GB",
                  f"{ev['flops'] / 1e9:.3f} GFLOP per image per PGD step")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    _measure(sys.argv[1])
