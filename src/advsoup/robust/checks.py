"""Checks against gradient masking, per run, written to robustness.json.

A masked or obfuscated gradient makes PGD weak and the robust accuracy too
high. The classic symptoms (Athalye et al. 2018; Carlini et al. 2019, "On
evaluating adversarial robustness") are tested on the first
``evaluate.robustness.subset`` test images, at each soup weight of
``evaluate.robustness.weights``. "PGD" in the check names and below is the
sweep attack, ``evaluate.attack``, whichever it is (PGD, or APGD attacks as
in the demo and the study):

* ``eps_non_increasing``: robust accuracy does not rise as eps grows (eps as
  multiples of ``evaluate.attack.eps``; the step size scales with eps, the
  number of steps stays);
* ``large_eps_near_zero``: at the largest eps it falls to at most
  ``large_eps_max_acc``;
* ``steps_non_increasing``: more PGD steps (same step size) do not raise it;
* ``autoattack_not_above_pgd``: AutoAttack, measured by the evaluate stage in
  clean and robust mode, is not above PGD on the same images;
* ``pgd_near_autoattack``: PGD is not above AutoAttack on the same images by
  more than ``autoattack_max_gap``. A larger gap means PGD, the attack of the
  soup sweeps, is too weak for this model (gradient masking, or a step size or
  loss scale that does not suit it): every robust number it gives is too high.

Each comparison forgives ``tolerance`` (random-start noise). A check is
``pass``, ``fail`` or ``skipped`` (with the reason); the run's status is
``fail`` as soon as one check fails. All PGD runs share one seed, so a
repeated configuration gives the same number and is measured once.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..atomic import write_json
from ..config import EvaluateConfig
from ..data.loaders import eval_tensors, order_record
from .evaluate import RunJob, load_run, pgd_record, robust_accuracy
from ..logs import setup_logging
from ..models.adapters import AdaptedModel
from ..runtime import runtime_from_env

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"


@dataclass
class RobustnessJob(RunJob):
    eval_file: Path
    out_file: Path


def _check(name: str, ok: Optional[bool], detail: str, **where: Any) -> Dict[str, Any]:
    return {"name": name, **where, "status": SKIPPED if ok is None else PASS if ok else FAIL, "detail": detail}


def _rises(points: List[Dict[str, Any]], key: str, tol: float) -> List[str]:
    """Every step along ``points`` where robust accuracy rises by more than ``tol``."""
    return [f"{key} {a[key]:g} -> {b[key]:g}: {100 * a['robust_acc']:.2f}% -> {100 * b['robust_acc']:.2f}%"
            for a, b in zip(points, points[1:]) if b["robust_acc"] > a["robust_acc"] + tol]


class Curves:
    """PGD robust accuracy of one model on fixed images, measured once per attack configuration."""

    def __init__(self, model: AdaptedModel, x: torch.Tensor, y: torch.Tensor, ev: EvaluateConfig,
                 device: torch.device, log=None) -> None:
        self.model, self.x, self.y, self.ev, self.device, self.log = model, x, y, ev, device, log
        self._cache: Dict[Tuple, float] = {}

    def accuracy(self, w: float, eps: float, steps: int, step_size: float) -> float:
        key = (w, round(eps, 10), steps, round(step_size, 10))
        if key not in self._cache:
            attack = replace(self.ev.attack, eps=eps, steps=steps, step_size=step_size)
            acc = robust_accuracy(self.model, self.x, self.y, w, replace(self.ev, attack=attack), self.device,
                                  desc=f"PGD-{steps} eps={eps:g} at w={w:.2f}")
            self._cache[key] = round(acc, 5)
            if self.log:
                self.log.info("w=%.2f PGD-%d eps=%g step %g: %.2f%%", w, steps, eps, step_size, 100 * acc)
        return self._cache[key]

    def eps_grid(self, w: float) -> List[Dict[str, Any]]:
        a, mults = self.ev.attack, self.ev.robustness.eps_multiples
        return [{"eps": round(m * a.eps, 10), "steps": a.steps, "step_size": round(m * a.step_size, 10),
                 "robust_acc": self.accuracy(w, m * a.eps, a.steps, m * a.step_size)} for m in mults]

    def steps_grid(self, w: float) -> List[Dict[str, Any]]:
        a, mults = self.ev.attack, self.ev.robustness.steps_multiples
        return [{"eps": a.eps, "steps": m * a.steps, "step_size": a.step_size,
                 "robust_acc": self.accuracy(w, a.eps, m * a.steps, a.step_size)} for m in mults]


def masking_checks(curves: Curves, weights: List[float]) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The eps-grid and steps-grid curves per weight, and the checks on them."""
    r = curves.ev.robustness
    tol, out, checks = r.tolerance, {}, []
    for w in weights:
        eps, steps = curves.eps_grid(w), curves.steps_grid(w)
        out[f"{w:.2f}"] = {"eps_grid": eps, "steps_grid": steps}
        rises = _rises(eps, "eps", tol)
        checks.append(_check("eps_non_increasing", not rises, "; ".join(rises) or
                             f"robust accuracy never rises along eps {[p['eps'] for p in eps]}", w=w))
        top = eps[-1]
        checks.append(_check("large_eps_near_zero", top["robust_acc"] <= r.large_eps_max_acc,
                             f"{100 * top['robust_acc']:.2f}% at eps {top['eps']:g} "
                             f"(at most {100 * r.large_eps_max_acc:.2f}% expected)", w=w))
        rises = _rises(steps, "steps", tol)
        checks.append(_check("steps_non_increasing", not rises, "; ".join(rises) or
                             f"robust accuracy never rises along steps {[p['steps'] for p in steps]}", w=w))
    return out, checks


def autoattack_checks(evaluation: Dict[str, Any], tol: float, max_gap: float) -> List[Dict[str, Any]]:
    """AutoAttack never above PGD, and PGD never far above AutoAttack, on the same images, per mode (eval.json)."""
    aa = evaluation.get("autoattack")
    if aa is None:
        return [_check(name, None, "AutoAttack was not run (evaluate.autoattack.enabled: false)")
                for name in ("autoattack_not_above_pgd", "pgd_near_autoattack")]
    checks = []
    # Without an adapter the robust mode is a copy of the clean one: check it once.
    for mode in ("clean_mode",) if evaluation.get("adapter") == "none" else ("clean_mode", "robust_mode"):
        m = aa[mode]
        versus = (f"{aa['attack']['name']} {100 * m['robust_acc']:.2f}% vs {aa['pgd_attack']['name']} "
                  f"{100 * m['pgd_robust_acc']:.2f}% on {aa['attack']['subset']} images")
        checks.append(_check("autoattack_not_above_pgd", m["robust_acc"] <= m["pgd_robust_acc"] + tol, versus,
                             w=m["w"]))
        checks.append(_check("pgd_near_autoattack", m["pgd_robust_acc"] - m["robust_acc"] <= max_gap,
                             f"{versus}: PGD may be at most {100 * max_gap:.2f} points above", w=m["w"]))
    return checks


def status(checks: List[Dict[str, Any]]) -> Dict[str, Any]:
    """A run's verdict: fail if any check failed; the failed and skipped checks by name and weight."""
    def names(s: str) -> List[str]:
        return [f"{c['name']} (w={c['w']:.2f})" if "w" in c else c["name"] for c in checks if c["status"] == s]

    failed = names(FAIL)
    return {"status": FAIL if failed else PASS, "failed": failed, "skipped": names(SKIPPED),
            "n_passed": len(names(PASS)), "n_checks": len(checks)}


def run_robustness(job: RobustnessJob) -> Dict[str, Any]:
    rt = runtime_from_env(job.evaluate.threads)
    log = setup_logging(job.run_dir / f"{job.out_file.stem}.log")
    if not job.eval_file.is_file():
        raise FileNotFoundError(f"'{job.eval_file}' is missing: run `advsoup evaluate --run {job.run_id}` first "
                                f"(the AutoAttack check reads it)")
    evaluation = json.loads(job.eval_file.read_text())
    model = load_run(job.run_dir, job.model, rt.device)
    # only the images checked are decoded (a file dataset: never the whole split)
    x, y = eval_tensors(job.data, job.model.img_size, job.prepared, "test", job.data.test_size,
                        first=job.evaluate.robustness.subset)
    n = min(job.evaluate.robustness.subset or len(y), len(y))
    # Without an adapter every weight is the same network: check it once.
    weights = [0.0] if job.run.adapter == "none" else sorted(set(job.evaluate.robustness.weights))
    curves = Curves(model, x[:n], y[:n], job.evaluate, rt.device, log)
    grids, checks = masking_checks(curves, weights)
    r = job.evaluate.robustness
    checks += autoattack_checks(evaluation, r.tolerance, r.autoattack_max_gap)
    out = {"run": job.run_id, **asdict(job.run), "seed": job.seed, "attack": pgd_record(job.evaluate.attack, n),
           **order_record(job.data),
           "settings": asdict(job.evaluate.robustness), "curves": grids, "checks": checks, **status(checks)}
    for c in checks:
        where = f" (w={c['w']:.2f})" if "w" in c else ""
        (log.warning if c["status"] != PASS else log.info)("%s %s%s: %s", c["status"].upper(), c["name"], where,
                                                           c["detail"])
    write_json(job.out_file, out)
    log.info("wrote %s: %s", job.out_file, out["status"])
    return out
