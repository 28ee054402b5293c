"""One run on one published shifted ImageNet set: accuracy at every soup weight and the k-shot soup.

``run_real_shift`` streams the set's images (every configured corruption and
severity for ImageNet-C) through DataLoader workers, decodes each batch once
and scores it at every soup weight; for ImageNet-A and -R the logits are
restricted to their 200 classes first (advsoup.shift.adapt.restrict_logits).
For a run with an adapter it then compares, over ``shift.draws`` draws of
``shift.k`` labelled images per setting, each scored on the rest of it:

    clean_mode, robust_mode     w=0, w=1
    kshot_soup                  the weight best on the k images
    oracle_soup                 the weight best on the scored images themselves (no method can know it)

Fine-tuning on the k (the synthetic suite's other methods) is not run at this
scale. The job's cost is recorded with its numbers: images decoded, and
forward passes (images x weights).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from .. import checkpoint as ckpt
from ..atomic import write_json
from ..config import EvaluateConfig, ModelConfig, RunConfig, ShiftConfig
from ..logs import progress, setup_logging
from ..models.adapters import AdaptedModel
from ..robust.evaluate import load_run
from ..robust.stream import Partial, slice_digest
from ..runtime import runtime_from_env
from .adapt import kshot_split, predict_batches, soup_draw
from ..config import soupable
from .evaluate import shift_weights, wkey
from .imagenet import load_setting
from .layout import RealShiftMissing, check_real_sets, class_indices, config_key, set_config, settings
from .names import REAL_METHODS

IMAGENET_CLASSES = 1000


@dataclass
class RealShiftJob:
    """Reads evaluate.soup_weights and .threads; shift.imagenet_root, .real.batch_size, .real.workers, .real.amp,
    .real.<set> (enabled, root, subset; ImageNet-C: corruptions, severities), .k, .draws and .seed."""
    run_id: str
    run: RunConfig
    seed: int
    model: ModelConfig
    evaluate: EvaluateConfig
    shift: ShiftConfig
    set_name: str
    run_dir: Path
    out_file: Path


def _draws(correct: np.ndarray, loss: np.ndarray, weights: List[float], key: str,
           shift: ShiftConfig) -> List[Dict[str, float]]:
    out = []
    for d in range(shift.draws):
        select, rest = kshot_split(correct.shape[1], shift.k, shift.seed, d, key)
        out.append({k: round(float(v), 5) for k, v in soup_draw(correct, loss, weights, select, rest).items()})
    return out


def _score_setting(job: RealShiftJob, model: AdaptedModel, key: str, entry: Dict[str, Any], setting,
                   weights: List[float], has_soup: bool, indices, device: torch.device, log) -> Dict[str, Any]:
    """One setting's record (a corruption and severity of ImageNet-C, or a whole set): accuracy at every weight
    and, for a run with soups, the k-shot soup's draws."""
    sub, real = set_config(job.shift, job.set_name), job.shift.real
    data = load_setting(setting, job.model.img_size, entry["kind"] == "corruption", sub.subset, job.shift.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=real.batch_size, shuffle=False,
                                         num_workers=real.workers, pin_memory=device.type == "cuda")
    if has_soup and not 0 < job.shift.k < len(data):
        raise ValueError(f"{key}: shift.k={job.shift.k} must leave evaluation images among its {len(data)}; "
                         f"lower shift.k or raise {config_key(job.set_name)}.subset")
    batches = progress(loader, desc=f"{job.run_id} {key}", total=len(loader))
    correct, loss = predict_batches(model, batches, weights, device, indices, bf16=real.amp == "bf16")
    folders = (data.dataset if isinstance(data, torch.utils.data.Subset) else data).classes
    rec = {**entry, "size": int(correct.shape[1]), "class_folders": len(folders),
           "acc": {wkey(w): round(float(c.mean()), 5) for w, c in zip(weights, correct)}}
    if has_soup:
        rec["adaptation"] = _draws(correct, loss, weights, key, job.shift)
    log.info("%s: %d images, clean mode %.2f%%%s", key, rec["size"], 100 * rec["acc"][wkey(0.0)],
             "" if not has_soup else " | k-shot soup %.2f%% oracle soup %.2f%% (mean over draws)" % (
                 100 * np.mean([r["kshot_soup"] for r in rec["adaptation"]]),
                 100 * np.mean([r["oracle_soup"] for r in rec["adaptation"]])))
    return rec


def partial_key(job: RealShiftJob, folder: Path) -> Dict[str, Any]:
    """What a job's partial results are computed from: its config slice, the checkpoint it loads and the set's
    folder (its images are not hashed: tens of GB; a partial file lives only until its job has finished)."""
    return {"stage": "shift_real", "set": job.set_name, "folder": str(folder),
            "config_digest": slice_digest({"run": job.run, "seed": job.seed, "model": job.model,
                                           "evaluate": job.evaluate, "shift": job.shift}),
            "checkpoint_sha256": ckpt.load_model_meta(job.run_dir).get("weights_sha256")}


def run_real_shift(job: RealShiftJob) -> Dict[str, Any]:
    folder = check_real_sets(job.shift, [job.set_name]).get(job.set_name)  # only this job's set
    if folder is None:
        raise RealShiftMissing(f"{job.set_name} is not configured: set shift.imagenet_root or "
                               f"{config_key(job.set_name)}.root (and {config_key(job.set_name)}.enabled=true)")
    if job.model.num_classes != IMAGENET_CLASSES:
        raise ValueError(f"{job.set_name} scores 1000-way ImageNet models; model.num_classes is "
                         f"{job.model.num_classes}: evaluate an ImageNet run")
    rt = runtime_from_env(job.evaluate.threads)
    log = setup_logging(job.run_dir / f"shift_{job.set_name}.log")
    model = load_run(job.run_dir, job.model, rt.device)
    has_soup = soupable(job.run)
    weights = shift_weights(job.run, job.evaluate.soup_weights)
    sub = set_config(job.shift, job.set_name)
    indices = class_indices(job.set_name)
    records: Dict[str, Dict[str, Any]] = {}
    # Every finished setting goes to <out_file>.partial: a requeued or rerun job continues from there with the
    # numbers of an uninterrupted one (a setting's numbers depend on it alone; its k-shot draws are seeded by its key).
    partial = Partial(job.out_file, partial_key(job, folder), log)
    for key, entry, setting in settings(job.set_name, folder, job.shift):
        rec = partial.get(key)
        if rec is None:
            rec = _score_setting(job, model, key, entry, setting, weights, has_soup, indices, rt.device, log)
            partial.put(key, rec)
        records[key] = rec
    images = sum(r["size"] for r in records.values())
    out = {"run": job.run_id, **asdict(job.run), "seed": job.seed, "set": job.set_name, "soupable": has_soup,
           "weights": weights, "k": job.shift.k, "draws": job.shift.draws, "subset": sub.subset,
           "classes": IMAGENET_CLASSES if indices is None else len(indices),
           "methods": list(REAL_METHODS) if has_soup else ["clean_mode"],
           "cost": {"images": images, "forward_passes": images * len(weights)}, "sets": records}
    write_json(job.out_file, out)
    partial.finish()
    log.info("%s: %d images x %d weights = %d forward passes; wrote %s", job.set_name, images, len(weights),
             images * len(weights), job.out_file)
    return out
