"""Distribution shifts: the hard subset, and every run at every soup weight on every shifted set.

``run_shift`` measures one run's clean accuracy (no attack) on each set of the
suite and on the hard subset at every soup weight and, for a run that has
soups, compares on each set the ways to adapt from ``shift.k`` labelled target
examples (advsoup.shift.adapt) over ``shift.draws`` draws:

    clean_mode, robust_mode     w=0, w=1
    kshot_soup                  the weight that does best on the k examples
    adapter_finetune            the domain-specific parameters trained on the k (from clean mode)
    full_finetune               every parameter trained on the k (from clean mode): the baseline
    oracle_soup                 the best weight on the evaluation examples themselves

all scored on the same n-k evaluation examples of each draw. Groups summarise
the sets: mean corruption accuracy per severity, per corruption and overall,
sketch, hard, and their average (the corruptions count once, as ImageNet-C does among the
paper's shifted test sets).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .. import checkpoint as ckpt
from ..stats import mean_std
from .adapt import finetune, kshot_split, predict, soup_draw
from ..atomic import write_json
from ..config import CORRUPTIONS, EvaluateConfig, ModelConfig, RunConfig, ShiftConfig, ShiftHardConfig, soupable
from ..data.prepared import MANIFEST, load_split
from .names import AVERAGE, CLEAN, HARD, MEAN_CORRUPTION, METHODS, SKETCH
from .suite import load_sets, read_manifest, write_sets
from ..robust.evaluate import load_run
from ..robust.stream import Partial, slice_digest
from ..logs import progress, setup_logging
from ..models.adapters import AdaptedModel
from ..runtime import runtime_from_env



def wkey(w: float) -> str:
    return f"{w:.2f}"


def shift_weights(run: RunConfig, soup_weights: List[float]) -> List[float]:
    """The weights a run is scored at on a shift: every soup weight for a run with an adapter, else w=0.
    Clean and robust mode are always among them: the adaptation is compared with them."""
    return sorted({float(w) for w in soup_weights} | {0.0, 1.0}) if soupable(run) else [0.0]


# ---- the hard subset ------------------------------------------------------------------------

@dataclass
class HardJob:
    prepared: Path
    reference_dir: Path
    model: ModelConfig
    hard: ShiftHardConfig
    seed: int
    batch_size: int
    out_dir: Path


def build_hard_subset(job: HardJob) -> Dict[str, Any]:
    """The test images the reference model gets wrong (ImageNet-A's recipe), as a shift set 'hard'."""
    rt = runtime_from_env()
    log = setup_logging(job.reference_dir / "hard.log")
    model = load_run(job.reference_dir, job.model, rt.device)
    test = load_split(job.prepared, "test")
    x, y = test.tensors()
    correct, _ = predict(model, x, y, [0.0], job.batch_size, rt.device)
    wrong = np.flatnonzero(~correct[0])
    if len(wrong) == 0:
        raise ValueError(f"the reference model in {job.reference_dir} classifies every test image correctly: "
                         "no hard subset; train it less (shift.hard.epochs) or use another shift.hard.family")
    if job.hard.max_images and len(wrong) > job.hard.max_images:
        rng = np.random.default_rng(job.seed)
        wrong = np.sort(rng.choice(wrong, job.hard.max_images, replace=False))
    ref_acc = float(correct[0].mean())
    entry = {"kind": HARD, "reference": str(job.reference_dir), "reference_test_acc": round(ref_acc, 5)}
    manifest = write_sets(job.out_dir, {HARD: (test.images[wrong], test.labels[wrong].astype(np.uint8), entry)},
                          {"dataset": read_manifest(job.prepared)["dataset"], "classes": list(test.classes),
                           "seed": job.seed, "test_indices": wrong.tolist()})
    log.info("hard subset: %d test images the reference (test accuracy %.2f%%) gets wrong -> %s",
             len(wrong), 100 * ref_acc, job.out_dir)
    return manifest


# ---- one run on every shift -----------------------------------------------------------------

@dataclass
class ShiftJob:
    run_id: str
    run: RunConfig
    seed: int
    model: ModelConfig
    evaluate: EvaluateConfig
    shift: ShiftConfig
    suite_dir: Path
    hard_dir: Path
    run_dir: Path
    out_file: Path


def _adapt(model: AdaptedModel, x: torch.Tensor, y: torch.Tensor, correct: np.ndarray, loss: np.ndarray,
           weights: List[float], name: str, shift: ShiftConfig, batch_size: int,
           device: torch.device) -> List[Dict[str, float]]:
    """Every method's accuracy on the evaluation examples of each draw (see the module docstring)."""
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    adapter = [p for _, p in model.domain_parameters()]
    draws = []
    for d in range(shift.draws):
        select, rest = kshot_split(len(y), shift.k, shift.seed, d, name)
        row = soup_draw(correct, loss, weights, select, rest)
        xs, ys = x[select].to(device), y[select].to(device)
        for method, params, lr in (("adapter_finetune", adapter, shift.finetune.adapter_lr),
                                   ("full_finetune", list(model.parameters()), shift.finetune.full_lr)):
            finetune(model, params, xs, ys, 0.0, shift.finetune.steps, lr)
            tuned, _ = predict(model, x[rest], y[rest], [0.0], batch_size, device)
            row[method] = tuned[0].mean()
            model.load_state_dict(snapshot)
        draws.append({k: round(float(v), 5) for k, v in row.items()})
    return draws


def _groups(sets: Dict[str, Dict[str, Any]]) -> Dict[str, List[str]]:
    """Summary groups -> the sets they average: per severity, per corruption (named after it),
    all corruptions, sketch, hard."""
    corr = {n: e for n, e in sets.items() if e["kind"] == "corruption"}
    groups = {f"{MEAN_CORRUPTION}_s{s}": [n for n, e in corr.items() if e["severity"] == s]
              for s in sorted({e["severity"] for e in corr.values()})}
    groups.update({c: [n for n, e in corr.items() if e["corruption"] == c]
                   for c in CORRUPTIONS if any(e["corruption"] == c for e in corr.values())})
    if corr:
        groups[MEAN_CORRUPTION] = list(corr)
    groups.update({k: [k] for k in (SKETCH, HARD) if k in sets})
    return groups


def summarise(sets: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Accuracy per weight and per method (mean and spread over draws) of every group and the average.

    A group's value in a draw is the mean over its sets in that draw; the
    spread is over draws. The average is the mean of the mean corruption,
    sketch and hard groups.
    """
    groups = _groups(sets)
    top = [g for g in (MEAN_CORRUPTION, SKETCH, HARD) if g in groups]
    out: Dict[str, Dict[str, Any]] = {}

    def per_draw(names: List[str]) -> Optional[Dict[str, np.ndarray]]:
        if not all("adaptation" in sets[n] for n in names):
            return None
        return {m: np.mean([[r[m] for r in sets[n]["adaptation"]] for n in names], axis=0) for m in METHODS}

    for g, names in groups.items():
        weights = list(sets[names[0]]["acc"])
        out[g] = {"sets": names, "acc": {w: round(float(np.mean([sets[n]["acc"][w] for n in names])), 5)
                                         for w in weights}, "draws": per_draw(names)}
    if top:
        weights = list(out[top[0]]["acc"])
        draws = [out[g]["draws"] for g in top]
        out[AVERAGE] = {"sets": top, "acc": {w: round(float(np.mean([out[g]["acc"][w] for g in top])), 5)
                                             for w in weights},
                        "draws": None if any(d is None for d in draws) else
                        {m: np.mean([d[m] for d in draws], axis=0) for m in METHODS}}
    for g in out.values():
        d = g.pop("draws")
        if d is not None:
            g["adaptation"] = {m: mean_std(d[m]) for m in METHODS}
            g["adaptation"]["kshot_gain_over_clean"] = mean_std(d["kshot_soup"] - d["clean_mode"])
            g["per_draw"] = {m: [round(float(v), 5) for v in d[m]] for m in METHODS}
    return out


def _score_set(model: AdaptedModel, name: str, entry: Dict[str, Any], xy, weights: List[float], has_soup: bool,
               shift: ShiftConfig, batch_size: int, device: torch.device, log) -> Dict[str, Any]:
    """One shifted set's record: accuracy at every weight and, for a run with soups, every way to adapt."""
    x, y = xy
    correct, loss = predict(model, x, y, weights, batch_size, device)
    rec = {**entry, "acc": {wkey(w): round(float(c.mean()), 5) for w, c in zip(weights, correct)}}
    if has_soup:
        rec["adaptation"] = _adapt(model, x, y, correct, loss, weights, name, shift, batch_size, device)
    log.info("%s: clean mode %.2f%%%s", name, 100 * rec["acc"][wkey(0.0)],
             "" if not has_soup else " | k-shot soup %.2f%% oracle %.2f%% (mean over draws)" % (
                 100 * np.mean([r["kshot_soup"] for r in rec["adaptation"]]),
                 100 * np.mean([r["oracle_soup"] for r in rec["adaptation"]])))
    return rec


def partial_key(job: ShiftJob) -> Dict[str, Any]:
    """What a shift job's partial results are computed from: its config slice, the checkpoint it loads and the
    shifted sets it reads (their manifests hold every array's sha256)."""
    sets = hashlib.sha256(b"".join((d / MANIFEST).read_bytes() for d in (job.suite_dir, job.hard_dir)))
    return {"stage": "shift", "config_digest": slice_digest({"run": job.run, "seed": job.seed, "model": job.model,
                                                             "evaluate": job.evaluate, "shift": job.shift}),
            "checkpoint_sha256": ckpt.load_model_meta(job.run_dir).get("weights_sha256"),
            "sets_sha256": sets.hexdigest()}


def run_shift(job: ShiftJob) -> Dict[str, Any]:
    rt = runtime_from_env(job.evaluate.threads)
    log = setup_logging(job.run_dir / "shift.log")
    model = load_run(job.run_dir, job.model, rt.device)
    has_soup = soupable(job.run)
    weights = shift_weights(job.run, job.evaluate.soup_weights)
    sets = {**load_sets(job.suite_dir), **load_sets(job.hard_dir)}
    bs = job.evaluate.batch_size
    records: Dict[str, Dict[str, Any]] = {}
    # Every finished set goes to <out_file>.partial: a requeued or rerun job continues from there with the numbers
    # of an uninterrupted one (a set's numbers depend on it alone: its k-shot draws are seeded by its name, and
    # every fine-tuning starts from the checkpoint's weights).
    partial = Partial(job.out_file, partial_key(job), log)
    for name, (entry, split) in progress(sets.items(), desc=f"{job.run_id} shifts", total=len(sets)):
        rec = partial.get(name)
        if rec is None:
            rec = _score_set(model, name, entry, split.tensors(), weights, has_soup, job.shift, bs, rt.device, log)
            partial.put(name, rec)
        records[name] = rec
    out = {"run": job.run_id, **asdict(job.run), "seed": job.seed, "soupable": has_soup,
           "weights": weights, "k": job.shift.k, "draws": job.shift.draws,
           "finetune": asdict(job.shift.finetune), "methods": list(METHODS) if has_soup else ["clean_mode"],
           "sets": records, "groups": summarise({n: r for n, r in records.items() if n != CLEAN})}
    write_json(job.out_file, out)
    partial.finish()
    avg = out["groups"].get(AVERAGE, {}).get("adaptation")
    if avg:
        g = avg["kshot_gain_over_clean"]
        log.info("average over shifts: k-shot soup - clean mode = %+.2f +- %.2f points (k=%d, %d draws)",
                 100 * g["mean"], 100 * g["std"], job.shift.k, job.shift.draws)
    log.info("wrote %s", job.out_file)
    return out
