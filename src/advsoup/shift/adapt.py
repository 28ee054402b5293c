"""Three ways to use k labelled examples of a shifted target, and the numbers they are judged by.

Given per-example results of a model at every soup weight on a shifted set
(:func:`predict`), a draw splits the set into k labelled examples and the rest
(:func:`kshot_split`); every method sees only the k and is scored on the rest:

* k-shot soup: the soup weight with the best accuracy on the k (:func:`choose_weight`);
* adapter fine-tuning: the domain-specific parameters trained on the k;
* full fine-tuning: every parameter trained on the k (the baseline).

Clean mode (w=0), robust mode (w=1) and the oracle soup (the best weight on
the rest itself, which no method can know) are scored on the same rest.
"""
from __future__ import annotations

import zlib
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..models.adapters import AdaptedModel


@torch.no_grad()
def predict(model: AdaptedModel, x: torch.Tensor, y: torch.Tensor, weights: Sequence[float], batch_size: int,
            device: torch.device) -> Tuple[np.ndarray, np.ndarray]:
    """Per-example correctness (bool) and cross-entropy (float32), each of shape (weights, examples)."""
    correct = np.zeros((len(weights), len(y)), dtype=bool)
    loss = np.zeros((len(weights), len(y)), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            for j, w in enumerate(weights):
                logits = model(xb, w)
                correct[j, i:i + len(yb)] = (logits.argmax(1) == yb).cpu().numpy()
                loss[j, i:i + len(yb)] = F.cross_entropy(logits, yb, reduction="none").cpu().numpy()
    return correct, loss


def kshot_split(n: int, k: int, seed: int, draw: int, key: str) -> Tuple[np.ndarray, np.ndarray]:
    """(k selection indices, the n-k evaluation indices) of one draw; disjoint, together all of range(n).

    The draw depends on (seed, draw, key) only, so every run and every method
    sees the same k examples of a shift: their comparison is paired.
    """
    if not 0 < k < n:
        raise ValueError(f"shift.k={k} must be at least 1 and leave evaluation examples in a set of {n}")
    perm = np.random.default_rng([seed, draw, zlib.crc32(key.encode())]).permutation(n)
    return np.sort(perm[:k]), np.sort(perm[k:])


def choose_weight(correct: np.ndarray, loss: np.ndarray, select: np.ndarray) -> int:
    """Index of the weight with the best accuracy on the selection examples.

    Ties, common with small k, go to the lower mean cross-entropy on the same
    examples. Only the columns in ``select`` are read.
    """
    acc = correct[:, select].mean(axis=1)
    ce = loss[:, select].mean(axis=1)
    return min(range(len(acc)), key=lambda i: (-acc[i], ce[i]))


def finetune(model: AdaptedModel, params: List[torch.nn.Parameter], x: torch.Tensor, y: torch.Tensor,
             w: float, steps: int, lr: float) -> List[float]:
    """Full-batch Adam on (x, y) at soup weight w, training only ``params``; returns the losses.

    The model stays in eval mode: BatchNorm keeps the statistics of the
    training data (k examples are too few to estimate new ones). No weight
    decay, so parameters without a gradient do not move.
    """
    trainable = {id(p) for p in params}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(id(p) in trainable)
    opt = torch.optim.Adam(params, lr=lr)
    model.eval()
    losses = []
    try:
        for _ in range(steps):
            loss = F.cross_entropy(model(x, w), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
    return losses

