"""Projected gradient descent (l-inf and l2) on inputs in [0, 1].

The attack always runs through the soup weight it evaluates: ``model(x, w)``.
It asks autograd for the input gradient only, so no parameter gradient is
computed or accumulated, and it runs the model in eval mode (no BN statistic
updates, no dropout) and restores the previous mode afterwards.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import AttackConfig
from .models.adapters import Weight


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _l2_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.ndim - 1)))


def _random_start(x: torch.Tensor, a: AttackConfig, gen: Optional[torch.Generator]) -> torch.Tensor:
    if a.norm == "linf":
        delta = (torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * a.eps
    else:
        direction = torch.randn(x.shape, generator=gen, device=x.device)
        radius = torch.rand((len(x),) + (1,) * (x.ndim - 1), generator=gen, device=x.device) * a.eps
        delta = direction / _l2_norm(direction) * radius
    return (x + delta).clamp(0, 1) - x


def _project(delta: torch.Tensor, x: torch.Tensor, a: AttackConfig) -> torch.Tensor:
    if a.norm == "linf":
        delta = delta.clamp(-a.eps, a.eps)
    else:
        delta = delta * torch.clamp(a.eps / _l2_norm(delta), max=1.0)
    return (x + delta).clamp(0, 1) - x


def _pgd_once(model: nn.Module, x: torch.Tensor, y: torch.Tensor, a: AttackConfig, w: Weight,
              gen: Optional[torch.Generator]) -> torch.Tensor:
    delta = _random_start(x, a, gen) if a.random_start else torch.zeros_like(x)
    for _ in range(a.steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta, w), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            step = grad.sign() if a.norm == "linf" else grad / _l2_norm(grad)
            delta = _project(delta + a.step_size * step, x, a)
    return (x + delta).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig, w: Weight = 1.0,
        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Adversarial examples for ``model(., w)``; with restarts, per sample the first that fools it."""
    if attack.eps == 0 or attack.steps == 0 and not attack.random_start:
        return x.detach().clone()
    with eval_mode(model):
        best = _pgd_once(model, x, y, attack, w, generator)
        if attack.restarts > 1:
            with torch.no_grad():
                fooled = model(best, w).argmax(1) != y
            for _ in range(attack.restarts - 1):
                if bool(fooled.all()):
                    break
                cand = _pgd_once(model, x, y, attack, w, generator)
                with torch.no_grad():
                    now = (model(cand, w).argmax(1) != y) & ~fooled
                best[now] = cand[now]
                fooled |= now
    return best
