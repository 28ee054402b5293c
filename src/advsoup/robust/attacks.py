"""Projected gradient descent (l-inf and l2) on inputs in [0, 1].

The attack always runs through the soup weight it evaluates: ``model(x, w)``.
It asks autograd for the input gradient only, so no parameter gradient is
computed or accumulated. ``model_mode`` says which network it attacks:

* ``eval`` (the default, and always for evaluation): BN running statistics,
  no dropout / drop-path. The attack sees the deterministic network that is
  reported, and its iterates never touch BN statistics.
* ``train``: the network as it trains (BN batch statistics, dropout and
  drop-path drawn from the global RNG). Every buffer, BN running statistics
  included, is restored afterwards: the attack's iterates are not training
  data, so they must not move the statistics.

The model's own train/eval flag is restored afterwards in both modes.

Semantics a robustness number depends on:

* random start: l-inf uniform in the eps-box; l2 a uniform direction with a
  radius uniform in [0, eps]; then clipped to [0, 1].
* each step: l-inf ``step_size * sign(grad)``, l2 ``step_size * grad/||grad||``,
  then projection onto the eps-ball and clipping to [0, 1] (clipping moves
  every coordinate towards x, so the point stays in the ball).
* the result: with ``keep_fooling`` (evaluation), per sample the first
  iterate that fools the model (random start included), else the last one,
  so an image PGD broke on the way never counts as robust because a later
  step oscillated back (AutoAttack's APGD keeps its best point the same way);
  without it (training), the last iterate (Madry et al.). With ``restarts`` > 1
  the points still classified correctly are attacked again from a new random
  start, and per sample the first restart that fools the model is kept.
* all randomness comes from ``generator``: the same generator state gives the
  same adversarial examples.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ATTACK_MODEL_MODES, AttackConfig
from ..models.adapters import Weight

@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def attack_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Run the attack on the model in ``mode``; restore its flag and, in train mode, its buffers."""
    if mode not in ATTACK_MODEL_MODES:
        raise ValueError(f"attack model mode '{mode}' is not one of {ATTACK_MODEL_MODES}")
    if mode == "eval":
        with eval_mode(model):
            yield
        return
    was_training = model.training
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    model.train()
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
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
              gen: Optional[torch.Generator], keep_fooling: bool) -> torch.Tensor:
    delta = _random_start(x, a, gen) if a.random_start else torch.zeros_like(x)
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    kept = torch.empty_like(x)
    for _ in range(a.steps):
        delta.requires_grad_(True)
        logits = model(x + delta, w)
        loss = F.cross_entropy(logits, y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if keep_fooling:  # the logits of this iterate are at hand: no extra forward pass
                new = (logits.argmax(1) != y) & ~fooled
                kept[new] = (x + delta)[new]
                fooled |= new
            step = grad.sign() if a.norm == "linf" else grad / _l2_norm(grad)
            delta = _project(delta + a.step_size * step, x, a)
    return torch.where(fooled.view(-1, *([1] * (x.ndim - 1))), kept, x + delta).detach()


def _select(w: Weight, keep: torch.Tensor) -> Weight:
    return w[keep] if isinstance(w, torch.Tensor) and w.ndim > 0 else w


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig, w: Weight = 1.0,
        generator: Optional[torch.Generator] = None, model_mode: str = "eval",
        keep_fooling: bool = False) -> torch.Tensor:
    """Adversarial examples for ``model(., w)``; with restarts, per sample the first that fools it.

    ``keep_fooling``: per sample the first fooling iterate rather than the last one (for evaluation).
    """
    if attack.eps == 0 or attack.steps == 0 and not attack.random_start:
        return x.detach().clone()
    with attack_mode(model, model_mode):
        best = _pgd_once(model, x, y, attack, w, generator, keep_fooling)
        if attack.restarts > 1:
            with torch.no_grad():
                fooled = model(best, w).argmax(1) != y
            for _ in range(attack.restarts - 1):
                left = torch.nonzero(~fooled).flatten()
                if len(left) == 0:
                    break
                cand = _pgd_once(model, x[left], y[left], attack, _select(w, left), generator, keep_fooling)
                with torch.no_grad():
                    now = model(cand, _select(w, left)).argmax(1) != y[left]
                best[left[now]] = cand[now]
                fooled[left[now]] = True
    return best
