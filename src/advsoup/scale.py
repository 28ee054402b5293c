"""Training at scale, one job each: bf16 autocast, MixUp/CutMix, gradient accumulation and clipping, EMA, RNG state.

Everything here is a no-op at its default (amp none, accum_steps 1, no
clipping, no EMA, no MixUp): the demo's training computes what it always did.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch import nn

from .config import TrainConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, Dict[str, float]]]


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for the training step and its attack (bf16 needs no loss scaling); off for amp none."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def create_mixup(t: TrainConfig, num_classes: int) -> Optional[Mixup]:
    m = t.mixup
    if not (m.mixup_alpha or m.cutmix_alpha):
        return None
    return Mixup(mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha, prob=m.prob, switch_prob=m.switch_prob,
                 label_smoothing=t.label_smoothing, num_classes=num_classes)


def mix(mixup: Optional[Mixup], x: torch.Tensor, y: torch.Tensor, seed: int, epoch: int,
        step: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """MixUp/CutMix of a batch into soft targets; its numpy/python draws are seeded from (seed, epoch, step)."""
    if mixup is None:
        return x, y
    saved = random.getstate(), np.random.get_state()
    a, b = np.random.SeedSequence([seed, epoch, step, 1]).generate_state(2)
    random.seed(int(a))
    np.random.seed(int(b))
    try:
        return mixup(x.clone(), y)  # timm mixes in place
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def accumulate(loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, steps: int,
               precision: Callable[[], contextlib.AbstractContextManager]) -> Dict[str, float]:
    """Forward and backward over ``steps`` equal micro-batches: the gradient of the mean loss of the batch."""
    if len(x) % steps:
        raise ValueError(f"a batch of {len(x)} per process does not split into train.accum_steps={steps} equal "
                         f"micro-batches: make train.batch_size a multiple of processes x accum_steps")
    totals: Dict[str, float] = {}
    for xm, ym in zip(x.chunk(steps), y.chunk(steps)):
        with precision():
            loss, stats = loss_fn(xm, ym)
        (loss / steps if steps > 1 else loss).backward()
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + v / steps
    return totals


def clip(model: nn.Module, max_norm: float) -> None:
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def create_ema(model: nn.Module, t: TrainConfig) -> Optional[ModelEmaV3]:
    return ModelEmaV3(model, decay=t.ema_decay) if t.ema else None


def state_module(model: nn.Module, ema: Optional[ModelEmaV3]) -> nn.Module:
    """What the training state saves: the model, and with EMA the model and its average side by side."""
    return model if ema is None else nn.ModuleDict({"model": model, "ema": ema.module})


def rng_state(device: torch.device) -> Dict[str, torch.Tensor]:
    """The global generators a resumed run must continue: CPU (dropout, drop-path on CPU) and this GPU's."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
