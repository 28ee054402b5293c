"""Clean and robust accuracy of a trained run, at any soup weight.

Clean accuracy runs under ``torch.inference_mode`` in large batches; robust
accuracy attacks the model at the very weight it reports (PGD through
``model(., w)``), on the first ``evaluate.robust_subset`` test images. The
final numbers of a run (clean and robust mode) add AutoAttack on the first
``evaluate.autoattack.subset`` images, with PGD on those same images beside it.
The soup sweep runs on the validation split too (``data.val_size`` training
images the run did not train on), where a soup weight may be chosen.
Every robust number is stored with the attack that produced it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from . import autoattack
from .. import checkpoint as ckpt
from ..atomic import write_json
from .attacks import pgd
from ..config import AttackConfig, DataConfig, EvaluateConfig, ModelConfig, RunConfig
from ..data.loaders import eval_tensors
from ..data.prepared import load_validation
from ..logs import progress, setup_logging
from ..models import build_model
from ..models.adapters import AdaptedModel
from ..runtime import runtime_from_env


@dataclass
class RunJob:
    """What every job that measures a trained run reads."""
    run_id: str
    run: RunConfig
    seed: int
    data: DataConfig
    model: ModelConfig
    evaluate: EvaluateConfig
    prepared: Path
    run_dir: Path


@dataclass
class EvalJob(RunJob):
    out_file: Path
    soup_weights: Optional[List[float]] = None  # None: clean and robust mode only


def load_run(run_dir: Path, model_cfg: ModelConfig, device: torch.device) -> AdaptedModel:
    meta = ckpt.load_model_meta(run_dir)
    model = build_model(model_cfg, meta["family"], meta["adapter"])
    ckpt.load_weights(run_dir, model)
    return model.to(device).eval()


def attack_record(ev: EvaluateConfig, n_robust: int) -> Dict[str, Any]:
    """What a robust number was measured with: written beside every such number."""
    return pgd_record(ev.attack, n_robust)


def pgd_record(a: AttackConfig, n_robust: int) -> Dict[str, Any]:
    return {"name": f"{a.method.upper()}-{a.steps}", "norm": a.norm, "eps": a.eps, "steps": a.steps,
            "step_size": a.step_size, "restarts": a.restarts, "random_start": a.random_start,
            "subset": n_robust}


@torch.no_grad()
def clean_accuracy(model: AdaptedModel, x: torch.Tensor, y: torch.Tensor, w: float, batch_size: int,
                   device: torch.device) -> float:
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            correct += int((model(xb, w).argmax(1) == yb).sum())
    return correct / len(y)


def robust_flags(model: AdaptedModel, x: torch.Tensor, y: torch.Tensor, w: float, ev: EvaluateConfig,
                 device: torch.device, seed: int = 0, desc: str = "PGD") -> torch.Tensor:
    """Per image, whether ``model(., w)`` classifies it correctly both clean and under ``ev.attack``.

    Both, as AutoAttack and RobustBench count: an image the model gets wrong
    clean is never robust, even if the attack's point happens to be classified
    correctly. PGD keeps, per image, the first iterate that fools the model;
    ``evaluate.attack.method: apgd-ce | apgd-dlr`` runs APGD instead (adaptive step, best point kept).
    """
    flags = []
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)  # the same random starts for every weight and run
    for i in progress(range(0, len(y), ev.batch_size), desc=desc, total=-(-len(y) // ev.batch_size)):
        xb, yb = x[i:i + ev.batch_size].to(device), y[i:i + ev.batch_size].to(device)
        if ev.attack.method != "pgd":
            flags.append(autoattack.apgd_flags(model, xb, yb, w, ev.attack, device, seed))
            continue
        x_adv = pgd(model, xb, yb, ev.attack, w=w, generator=gen, keep_fooling=True)
        with torch.no_grad():
            flags.append(((model(xb, w).argmax(1) == yb) & (model(x_adv, w).argmax(1) == yb)).cpu())
    return torch.cat(flags)


def robust_accuracy(model: AdaptedModel, x: torch.Tensor, y: torch.Tensor, w: float, ev: EvaluateConfig,
                    device: torch.device, seed: int = 0, desc: str = "PGD") -> float:
    return int(robust_flags(model, x, y, w, ev, device, seed, desc).sum()) / len(y)


def accuracies(model: AdaptedModel, x: torch.Tensor, y: torch.Tensor, weights: Sequence[float],
               ev: EvaluateConfig, device: torch.device, log=None) -> List[Dict[str, float]]:
    """Clean accuracy on all of x and robust accuracy on the subset, per soup weight.

    One model serves every weight: the weight is an argument of the forward pass.
    """
    n_rob = ev.robust_subset or len(y)
    rows = []
    for w in weights:
        clean = clean_accuracy(model, x, y, w, ev.batch_size * 4, device)
        robust = robust_accuracy(model, x[:n_rob], y[:n_rob], w, ev, device, desc=f"PGD at w={w:.2f}")
        rows.append({"w": float(w), "clean_acc": round(clean, 5), "robust_acc": round(robust, 5)})
        if log:
            log.info("w=%.2f clean %.2f%% robust %.2f%%", w, 100 * clean, 100 * robust)
    return rows


def autoattack_vs_pgd(model: AdaptedModel, x: torch.Tensor, y: torch.Tensor, weights: Sequence[float],
                      ev: EvaluateConfig, device: torch.device, log=None) -> Dict[str, Any]:
    """AutoAttack and PGD robust accuracy on the same first ``ev.autoattack.subset`` images, per mode.

    PGD runs here again on exactly AutoAttack's images (same seed as the
    main evaluation) so the two numbers compare like for like.
    """
    n = min(ev.autoattack.subset or len(y), len(y))
    out: Dict[str, Any] = {"pgd_attack": pgd_record(ev.attack, n)}
    for w, mode in zip(weights, ("clean_mode", "robust_mode")):
        pgd_ok = robust_flags(model, x[:n], y[:n], w, ev, device, desc=f"PGD at w={w:.2f} (AutoAttack's images)")
        aa_ok, out["attack"] = autoattack.robust_flags(model, x[:n], y[:n], w, ev.attack, ev.autoattack,
                                                       ev.batch_size, device)
        out[mode] = {"w": float(w), "robust_acc": round(float(aa_ok.float().mean()), 5),
                     "pgd_robust_acc": round(float(pgd_ok.float().mean()), 5),
                     # images PGD broke but AutoAttack did not: AutoAttack is not a superset of PGD
                     "pgd_only_broken": int((~pgd_ok & aa_ok).sum())}
        if log:
            log.info("w=%.2f %s %.2f%% vs %s %.2f%% on %d images", w, out["attack"]["name"],
                     100 * out[mode]["robust_acc"], out["pgd_attack"]["name"], 100 * out[mode]["pgd_robust_acc"], n)
    if len(weights) == 1:  # no adapter: one network serves both modes
        out["robust_mode"] = {**out["clean_mode"], "w": 1.0}
    return out


def train_images_measured(train_size: int, subset: int) -> int:
    """How many training images ``evaluate.train_subset`` measures (0 = every one; the size load_split takes).

    ``train_size`` is the run's data.train_size (0 = the whole split). The images are the first N of the same
    class-balanced order training takes its first ``train_size`` from, so they are always training images.
    """
    if train_size == 0:
        return subset
    return min(subset, train_size) if subset else train_size


def train_accuracy(job: RunJob, model: AdaptedModel, weights: Sequence[float], device: torch.device,
                   log=None) -> Dict[str, Any]:
    """Clean accuracy on the run's own training images (eval mode, evaluation transforms, no augmentation),
    per mode: beside the test accuracy, the train-test gap (how much the run overfits)."""
    size = train_images_measured(job.data.train_size, job.evaluate.train_subset)
    x, y = eval_tensors(job.data, job.model.img_size, job.prepared, "train", size)
    out: Dict[str, Any] = {"images": len(y), "images_of": "the first N of the run's training images (the class-"
                           "balanced order training takes them from); eval mode, no augmentation"}
    for w, mode in zip(weights, ("clean_mode", "robust_mode")):
        out[mode] = {"w": float(w), "clean_acc": round(clean_accuracy(model, x, y, w, job.evaluate.batch_size * 4,
                                                                      device), 5)}
        if log:
            log.info("w=%.2f clean accuracy on %d training images %.2f%%", w, len(y), 100 * out[mode]["clean_acc"])
    if len(weights) == 1:  # no adapter: one network serves both modes
        out["robust_mode"] = {**out["clean_mode"], "w": 1.0}
    return out


def run_evaluation(job: EvalJob) -> Dict[str, Any]:
    rt = runtime_from_env(job.evaluate.threads)
    # The log sits with the run (DVC cache), not with the metric files (git).
    log = setup_logging(job.run_dir / f"{job.out_file.stem}.log")
    model = load_run(job.run_dir, job.model, rt.device)
    x, y = eval_tensors(job.data, job.model.img_size, job.prepared, "test", job.data.test_size)
    n_rob = job.evaluate.robust_subset or len(y)
    n_rob = min(n_rob, len(y))
    meta = ckpt.load_model_meta(job.run_dir)
    base = {"run": job.run_id, **{k: v for k, v in asdict(job.run).items() if v is not None}, "seed": job.seed,
            "domain_parameters": model.num_domain_parameters(), "test_images": len(y),
            # what the checkpoint was trained on and for (its model.json): the x axes of a training-regime study
            "train_images": meta.get("train_images"), "epochs": meta.get("epochs"),
            "attack": attack_record(job.evaluate, n_rob)}
    if job.soup_weights is None:
        # Without an adapter both modes are the same network: measure it once.
        weights = [0.0] if job.run.adapter == "none" else [0.0, 1.0]
        rows = accuracies(model, x, y, weights, job.evaluate, rt.device, log)
        out = {**base, "clean_mode": rows[0], "robust_mode": {**rows[-1], "w": 1.0}}
        if job.evaluate.autoattack.enabled:
            out["autoattack"] = autoattack_vs_pgd(model, x, y, weights, job.evaluate, rt.device, log)
        if job.evaluate.train_subset is not None:
            out["train_accuracy"] = train_accuracy(job, model, weights, rt.device, log)
    else:
        out = {**base, "soup": accuracies(model, x, y, job.soup_weights, job.evaluate, rt.device, log)}
        if job.data.val_size:
            # The same sweep on held-out training images: a soup weight is chosen there, never on test.
            xv, yv = load_validation(job.prepared, job.data.train_size, job.data.val_size).tensors()
            log.info("validation split (%d held-out training images):", len(yv))
            out.update(validation_images=len(yv),
                       validation=accuracies(model, xv, yv, job.soup_weights, job.evaluate, rt.device, log))
    write_json(job.out_file, out)
    log.info("wrote %s", job.out_file)
    return out
