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
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..models.adapters import AdaptedModel


def restrict_logits(logits: torch.Tensor, class_indices: Optional[Sequence[int]]) -> torch.Tensor:
    """Logits with every class outside ``class_indices`` set to -inf (unchanged for None).

    ImageNet-A and -R cover 200 of ImageNet's 1000 classes: the argmax is then
    one of them and the cross-entropy a softmax over them only.
    """
    if class_indices is None:
        return logits
    keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
    keep[torch.as_tensor(list(class_indices), device=logits.device)] = True
    return logits.masked_fill(~keep, float("-inf"))


def predict_batches(model: Callable, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], weights: Sequence[float],
                    device: torch.device, class_indices: Optional[Sequence[int]] = None,
                    bf16: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Per-example correctness (bool) and cross-entropy (float32), each of shape (weights, examples).

    Each batch is moved to the device once and scored at every weight; the
    logits are restricted to ``class_indices`` first (:func:`restrict_logits`).
    ``bf16`` autocasts the forward pass; the loss is taken in float32.
    """
    correct: List[np.ndarray] = [np.zeros((len(weights), 0), dtype=bool)]
    loss: List[np.ndarray] = [np.zeros((len(weights), 0), dtype=np.float32)]
    if isinstance(model, torch.nn.Module):
        model.eval()
    with torch.inference_mode():
        for xb, yb in batches:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            c = np.zeros((len(weights), len(yb)), dtype=bool)
            l = np.zeros((len(weights), len(yb)), dtype=np.float32)
            for j, w in enumerate(weights):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(xb, w)
                logits = restrict_logits(logits.float(), class_indices)
                c[j] = (logits.argmax(1) == yb).cpu().numpy()
                l[j] = F.cross_entropy(logits, yb, reduction="none").cpu().numpy()
            correct.append(c)
            loss.append(l)
    return np.concatenate(correct, axis=1), np.concatenate(loss, axis=1)


def predict(model: AdaptedModel, x: torch.Tensor, y: torch.Tensor, weights: Sequence[float], batch_size: int,
            device: torch.device) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`predict_batches` over in-memory tensors."""
    return predict_batches(model, ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)),
                           weights, device)


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


def soup_draw(correct: np.ndarray, loss: np.ndarray, weights: Sequence[float], select: np.ndarray,
              rest: np.ndarray) -> Dict[str, float]:
    """One draw's soups scored on ``rest``: clean mode, robust mode, the k-shot soup (chosen on ``select``)
    and the oracle soup (the best weight on ``rest`` itself), with the two chosen weights."""
    acc_rest = correct[:, rest].mean(axis=1)
    chosen, best = choose_weight(correct, loss, select), int(np.argmax(acc_rest))
    return {"clean_mode": acc_rest[list(weights).index(0.0)], "robust_mode": acc_rest[list(weights).index(1.0)],
            "kshot_soup": acc_rest[chosen], "kshot_w": weights[chosen],
            "oracle_soup": acc_rest[best], "oracle_w": weights[best]}


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

