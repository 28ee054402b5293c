"""torch.compile on and off for our nominal training step on the demo ViT.

Compilation is paid once per process (the first steps); the steady-state gain
is the ratio of CPU time per step after it. Both are reported, with the run
length at which compiling starts to pay.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from advsoup.models import build_model
from advsoup.train import _loss, _param_groups

from common import demo_batch, demo_config, interleaved, ratio


def run(table, rounds: int) -> None:
    cfg = demo_config()
    m, t = cfg.model, cfg.train
    b = t.batch_size
    x, y = demo_batch(cfg)
    job = SimpleNamespace(train=t, run=SimpleNamespace(training="nominal"))

    def make(compiled: bool):
        model = build_model(m, "vit", "token").train()
        opt = torch.optim.AdamW(_param_groups(model, t.weight_decay), lr=t.lr)
        net = torch.compile(model) if compiled else model

        def step() -> None:
            loss, _ = _loss(job, net, x, y, torch.Generator())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    eager, comp = make(False), make(True)
    t0, c0 = time.perf_counter(), time.process_time()
    comp()  # compiles forward and backward
    compile_wall, compile_cpu = time.perf_counter() - t0, time.process_time() - c0
    times = interleaved({"eager": eager, "compiled": comp}, rounds=rounds, calls=3)
    gain = ratio(times, "eager", "compiled")
    step_eager = sorted(times["eager"])[len(times["eager"]) // 2]
    saved_per_step = step_eager * (1 - 1 / gain)
    sec = "torch.compile (nominal step, demo ViT)"
    table.add(sec, "compiled / eager throughput", f"{gain:.2f}x",
              f"compile: {compile_cpu:.0f} s CPU ({compile_wall:.0f} s wall)")
    if saved_per_step > 0:
        table.add(sec, "steps before compiling pays", f"{compile_cpu / saved_per_step:.0f} "
                  f"(the demo's nominal run: {cfg.data.train_size // b * t.epochs})")
