"""Clean and robust accuracy of a trained run, at any soup weight.

Clean accuracy runs under ``torch.inference_mode`` in large batches; robust
accuracy attacks the model at the very weight it reports (PGD through
``model(., w)``), on the first ``evaluate.robust_subset`` test images. The
final numbers of a run (clean and robust mode) add AutoAttack on the first
``evaluate.autoattack.subset`` images, with PGD on those same images beside it.
A file dataset's test split is read in class-balanced order (its list is sorted
by class), so these first images span the classes; the output says so (``test_order``).
The soup sweep runs on the validation split too (``data.val_size`` training
images the run did not train on), where a soup weight may be chosen.
Every robust number is stored with the attack that produced it.

The evaluate and soups stages read a file dataset (ImageNet) batch by batch through the DataLoader
(memory bounded by a batch, never the split) and keep every finished batch in ``<output>.partial``: a
requeued or rerun job continues from there with the numbers of an uninterrupted run (advsoup.robust.stream).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .. import checkpoint as ckpt
from ..atomic import write_json
from ..config import AttackConfig, DataConfig, EvaluateConfig, ModelConfig, RunConfig
from ..data.loaders import eval_tensors, order_record
from ..logs import setup_logging
from ..models import build_model
from ..models.adapters import AdaptedModel
from ..runtime import runtime_from_env
from .autoattack import AUTOATTACK_TARGETS
from .stream import Images, Measure, Partial, TensorImages, open_images, slice_digest


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
    """The sweep attack's record; APGD-T's target classes only where it runs (records of the other attacks stay
    as they were): the configured number, AutoAttack's 9 when unset (the attack caps it at classes - 1)."""
    targeted = {"target_classes": a.target_classes or AUTOATTACK_TARGETS} if "apgd-t" in a.method.split("+") else {}
    return {"name": "+".join(f"{m.upper()}-{a.steps}" for m in a.method.split("+")), "norm": a.norm,
            "eps": a.eps, "steps": a.steps, "step_size": a.step_size, "restarts": a.restarts,
            "random_start": a.random_start, "subset": n_robust, **targeted}


def clean_accuracy(model: AdaptedModel, x: torch.Tensor, y: torch.Tensor, w: float, batch_size: int,
                   device: torch.device) -> float:
    return Measure(model, None, device).clean(TensorImages(x, y), "x", w, batch_size)


def robust_flags(model: AdaptedModel, x: torch.Tensor, y: torch.Tensor, w: float, ev: EvaluateConfig,
                 device: torch.device, seed: int = 0, desc: str = "PGD") -> torch.Tensor:
    """Per image, whether ``model(., w)`` classifies it correctly both clean and under ``ev.attack``.

    Both, as AutoAttack and RobustBench count: an image the model gets wrong
    clean is never robust, even if the attack's point happens to be classified
    correctly. PGD keeps, per image, the first iterate that fools the model;
    ``evaluate.attack.method: apgd-ce | apgd-dlr`` runs APGD instead (adaptive step, best point kept).
    Batches of ``ev.batch_size``; PGD's random starts come from one generator seeded with ``seed`` (the same
    random starts for every weight and run). See :meth:`advsoup.robust.stream.Measure.robust`.
    """
    return Measure(model, ev, device).robust(TensorImages(x, y), "x", w, len(y), seed, desc)


def robust_accuracy(model: AdaptedModel, x: torch.Tensor, y: torch.Tensor, w: float, ev: EvaluateConfig,
                    device: torch.device, seed: int = 0, desc: str = "PGD") -> float:
    return int(robust_flags(model, x, y, w, ev, device, seed, desc).sum()) / len(y)


def accuracies(measure: Measure, images: Images, tag: str, weights: Sequence[float],
               log=None) -> List[Dict[str, float]]:
    """Clean accuracy on every image and robust accuracy on the first ``evaluate.robust_subset``, per soup weight.

    One model serves every weight: the weight is an argument of the forward pass. ``images`` are read batch by
    batch (``tag`` names the split in the partial file): clean in batches of 4 x ``evaluate.batch_size``, the
    attack in batches of ``evaluate.batch_size``.
    """
    ev = measure.ev
    n_rob = min(ev.robust_subset or len(images), len(images))
    rows = []
    for w in weights:
        clean = measure.clean(images, tag, w, ev.batch_size * 4)
        robust = int(measure.robust(images, tag, w, n_rob, desc=f"PGD at w={w:.2f}").sum()) / n_rob
        rows.append({"w": float(w), "clean_acc": round(clean, 5), "robust_acc": round(robust, 5)})
        if log:
            log.info("w=%.2f clean %.2f%% robust %.2f%%", w, 100 * clean, 100 * robust)
    return rows


def autoattack_vs_pgd(measure: Measure, images: Images, weights: Sequence[float], log=None) -> Dict[str, Any]:
    """AutoAttack and PGD robust accuracy on the same first ``ev.autoattack.subset`` images, per mode.

    PGD runs here again on exactly AutoAttack's images (same seed as the
    main evaluation) so the two numbers compare like for like; when they are
    the main evaluation's images, its flags are taken as they are (the same computation).
    """
    ev = measure.ev
    n = min(ev.autoattack.subset or len(images), len(images))
    out: Dict[str, Any] = {"pgd_attack": pgd_record(ev.attack, n)}
    for w, mode in zip(weights, ("clean_mode", "robust_mode")):
        pgd_ok = measure.robust(images, "test", w, n, desc=f"PGD at w={w:.2f} (AutoAttack's images)")
        aa_ok, out["attack"] = measure.autoattack(images, "test", w, n, ev.autoattack)
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


def partial_key(job: EvalJob) -> Dict[str, Any]:
    """What an evaluation's partial results are computed from: the digest of its config slice (the job holds the
    stage's slice, so this is the stage's config_digest) and the sha256 of the checkpoint it loads."""
    digest = slice_digest({"run": job.run, "seed": job.seed, "data": job.data, "model": job.model,
                           "evaluate": job.evaluate})
    return {"stage": "evaluate" if job.soup_weights is None else "soups", "config_digest": digest,
            "checkpoint_sha256": ckpt.load_model_meta(job.run_dir).get("weights_sha256"), **order_record(job.data)}


def train_images_measured(train_size: int, subset: int) -> int:
    """How many training images ``evaluate.train_subset`` measures (0 = every one the run trains on).

    ``train_size`` is the run's data.train_size (0 = the whole split, or with a validation split all but it). The
    images are the first N of the order training takes its first ``train_size`` from
    (:func:`advsoup.data.prepared.training_indices`), so they are always training images.
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
    # Streamed batch by batch for a file dataset (memory bounded by a batch), the prepared arrays in memory.
    images = open_images(job.data, job.model.img_size, job.prepared, "test", job.data.test_size)
    n_test = len(images)
    n_rob = min(job.evaluate.robust_subset or n_test, n_test)
    # Every finished batch goes to <out_file>.partial: a requeued or rerun job continues from there.
    partial = Partial(job.out_file, partial_key(job), log)
    measure = Measure(model, job.evaluate, rt.device, partial)
    meta = ckpt.load_model_meta(job.run_dir)
    base = {"run": job.run_id, **{k: v for k, v in asdict(job.run).items() if v is not None}, "seed": job.seed,
            "domain_parameters": model.num_domain_parameters(), "test_images": n_test, **order_record(job.data),
            # what the checkpoint was trained on and for (its model.json): the x axes of a training-regime study
            "train_images": meta.get("train_images"), "epochs": meta.get("epochs"),
            "attack": attack_record(job.evaluate, n_rob)}
    if job.soup_weights is None:
        # Without an adapter both modes are the same network: measure it once.
        weights = [0.0] if job.run.adapter == "none" else [0.0, 1.0]
        rows = accuracies(measure, images, "test", weights, log)
        out = {**base, "clean_mode": rows[0], "robust_mode": {**rows[-1], "w": 1.0}}
        if job.evaluate.autoattack.enabled:
            out["autoattack"] = autoattack_vs_pgd(measure, images, weights, log)
        if job.evaluate.train_subset is not None:
            out["train_accuracy"] = train_accuracy(job, model, weights, rt.device, log)
    else:
        out = {**base, "soup": accuracies(measure, images, "test", job.soup_weights, log)}
        if job.data.val_size:
            # The same sweep on held-out training images: a soup weight is chosen there, never on test.
            val = open_images(job.data, job.model.img_size, job.prepared, "validation")
            log.info("validation split (%d held-out training images):", len(val))
            out.update(validation_images=len(val),
                       validation=accuracies(measure, val, "validation", job.soup_weights, log))
    write_json(job.out_file, out)
    partial.finish()
    log.info("wrote %s", job.out_file)
    return out
