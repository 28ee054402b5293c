"""AutoAttack (Croce & Hein, ICML 2020) through the maintained package ``pyautoattack``.

The final robust numbers of a run come from here, PGD (advsoup.robust.attacks) being
the attack of the soup sweeps. AutoAttack runs through the soup weight it
evaluates, on the model in eval mode, with the threat model (norm, eps) of
``evaluate.attack``. The package seeds the global torch RNG; it runs inside
``torch.random.fork_rng`` so the caller's random stream is left as it was.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Tuple

import torch
from torch import nn

from .attacks import eval_mode
from ..config import AttackConfig, AutoAttackConfig
from ..logs import LOGGER
from ..models.adapters import AdaptedModel

PACKAGE_NORMS = {"linf": "Linf", "l2": "L2"}


class AtWeight(nn.Module):
    """``model(., w)`` as a one-argument module, the interface attack packages call."""

    def __init__(self, model: AdaptedModel, w: float) -> None:
        super().__init__()
        self.model, self.w = model, float(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.w)


def build(model: nn.Module, attack: AttackConfig, cfg: AutoAttackConfig, device: torch.device, seed: int = 0):
    from pyautoattack import AutoAttack

    extra = {"attacks": list(cfg.attacks)} if cfg.version == "custom" else {}
    return AutoAttack(model, norm=PACKAGE_NORMS[attack.norm], eps=attack.eps, version=cfg.version, seed=seed,
                      device=device, **extra)


def record(aa: Any, cfg: AutoAttackConfig, attack: AttackConfig, subset: int) -> Dict[str, Any]:
    """What an AutoAttack number was measured with, read from the configured attack object itself."""
    iterations = {
        "apgd-ce": aa.apgd.n_iter, "apgd-dlr": aa.apgd.n_iter, "apgd-t": aa.apgd_targeted.n_iter,
        "fab": aa.fab.n_iter, "fab-t": aa.fab.n_iter, "square": aa.square.n_queries,
    }
    # FAB-T always runs one restart per target class: the package sets it when it runs FAB-T.
    restarts = {"apgd-ce": aa.apgd.n_restarts, "apgd-dlr": aa.apgd.n_restarts, "apgd-t": aa.apgd_targeted.n_restarts,
                "fab": aa.fab.n_restarts, "fab-t": 1, "square": aa.square.n_restarts}
    from pyautoattack import __version__

    return {"name": f"AutoAttack-{cfg.version}", "package": f"pyautoattack {__version__}",
            "attacks": list(aa.attacks_to_run), "norm": attack.norm, "eps": attack.eps,
            # iterations per attack (Square: queries); APGD-T and FAB-T run them for each target class
            "steps": {a: iterations[a] for a in aa.attacks_to_run},
            "restarts": {a: restarts[a] for a in aa.attacks_to_run},
            "target_classes": {a: n for a, n in (("apgd-t", aa.apgd_targeted.n_target_classes),
                                                 ("fab-t", aa.fab.n_target_classes)) if a in aa.attacks_to_run},
            "subset": subset}


def apgd_flags(model: AdaptedModel, x: torch.Tensor, y: torch.Tensor, w: float, attack: AttackConfig,
               device: torch.device, seed: int = 0) -> torch.Tensor:
    """Per image, correct clean and under APGD (``attack.method``: apgd-ce, AutoAttack's first attack; apgd-dlr,
    the same on the scale-free DLR margin loss; or apgd-t, AutoAttack's second: APGD on the targeted DLR loss
    towards each of ``attack.target_classes`` runner-up classes in turn) with ``attack.steps`` iterations and
    ``attack.restarts`` restarts: the sweep attacks other than PGD.

    Its step size adapts (from 2 eps, halved when the loss stalls) and it keeps
    each image's best point, so it needs no step size tuned per model.
    """
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    x, y = x.to(device), y.to(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), eval_mode(model):  # the package seeds the global RNG
        common = dict(n_iter=attack.steps, norm=PACKAGE_NORMS[attack.norm], eps=attack.eps,
                      n_restarts=attack.restarts, seed=seed, device=device)
        if attack.method == "apgd-t":
            with torch.no_grad():
                classes = model(x[:1], w).shape[1]
            apgd = APGDAttack_targeted(AtWeight(model, w), n_target_classes=target_classes(attack, classes),
                                       **common)
        else:
            apgd = APGDAttack(AtWeight(model, w), loss=attack.method.removeprefix("apgd-"), **common)
        x_adv = apgd.perturb(x, y)
        with torch.no_grad():
            return ((model(x, w).argmax(1) == y) & (model(x_adv, w).argmax(1) == y)).cpu()


AUTOATTACK_TARGETS = 9  # APGD-T's target classes in AutoAttack's standard version


def target_classes(attack: AttackConfig, classes: int) -> int:
    """APGD-T's target classes: ``attack.target_classes`` or AutoAttack's 9, at most every other class."""
    return min(attack.target_classes or AUTOATTACK_TARGETS, classes - 1)


def robust_flags(model: AdaptedModel, x: torch.Tensor, y: torch.Tensor, w: float, attack: AttackConfig,
                 cfg: AutoAttackConfig, batch_size: int, device: torch.device,
                 seed: int = 0) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Per image, whether ``model(., w)`` still classifies it correctly under AutoAttack; and the attack record."""
    x, y = x.to(device), y.to(device)
    aa_log = logging.getLogger("auto-attack")  # the package's per-attack progress goes to the run's log
    handlers = logging.getLogger(LOGGER).handlers
    previous = (aa_log.level, aa_log.propagate)
    aa_log.setLevel(logging.DEBUG)
    aa_log.propagate = False
    for h in handlers:
        aa_log.addHandler(h)
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), eval_mode(model):
            aa = build(AtWeight(model, w), attack, cfg, device, seed)
            rec = record(aa, cfg, attack, len(y))  # before the run, which changes some settings (FAB-T's restarts)
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size)
            with torch.no_grad():
                # correct clean and under attack (the package leaves wrongly classified images as they are)
                flags = torch.cat([(model(x[i:i + batch_size], w).argmax(1) == y[i:i + batch_size])
                                   & (model(x_adv[i:i + batch_size], w).argmax(1) == y[i:i + batch_size])
                                   for i in range(0, len(y), batch_size)])
    finally:
        for h in handlers:
            aa_log.removeHandler(h)
        aa_log.setLevel(previous[0])
        aa_log.propagate = previous[1]
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if attack.norm == "linf" else delta.norm(dim=1)
    if float(size.max()) > attack.eps * (1 + 1e-4) + 1e-6 or float(x_adv.min()) < 0 or float(x_adv.max()) > 1:
        raise RuntimeError(f"AutoAttack returned a perturbation of {attack.norm} size {float(size.max()):.5f} "
                           f"(eps {attack.eps}) or left [0, 1]: its numbers cannot be trusted")
    return flags.cpu(), rec
