"""Collect the per-run metric files into results/summary.json and results/tables/*.csv."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pandas as pd

from .atomic import atomic_path, write_json


def variant_name(rec: Dict[str, Any]) -> str:
    """'nominal', 'adversarial' or 'cotrain/<adapter>', prefixed by the family unless it is the ViT."""
    base = rec["training"] if rec["training"] != "cotrain" else f"cotrain/{rec['adapter']}"
    return base if rec["family"] == "vit" else f"{rec['family']}:{base}"


def _read(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"metric file '{path}' is missing: run the evaluate/soups stage for it")
    return json.loads(path.read_text())


def _mean_std(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": round(statistics.fmean(values), 5),
            "std": round(statistics.stdev(values), 5) if len(values) > 1 else 0.0}


def aggregate(experiment: str, eval_files: Sequence[Path], soup_files: Sequence[Path],
              summary_path: Path, tables_dir: Path) -> Dict[str, Any]:
    runs: Dict[str, Dict[str, Any]] = {}
    attack = None
    for f in eval_files:
        rec = _read(f)
        attack = rec["attack"]
        runs[rec["run"]] = {k: rec[k] for k in ("training", "adapter", "family", "seed", "domain_parameters")}
        runs[rec["run"]].update(variant=variant_name(rec), clean_mode=rec["clean_mode"],
                                robust_mode=rec["robust_mode"])
    soup_rows: List[Dict[str, Any]] = []
    for f in soup_files:
        rec = _read(f)
        run = runs.setdefault(rec["run"], {})
        run["soup"] = {f"{r['w']:.2f}": {"clean_acc": r["clean_acc"], "robust_acc": r["robust_acc"]}
                       for r in rec["soup"]}
        # The best soup: highest clean + robust accuracy (equal weight on both, a reporting choice).
        best = max(rec["soup"], key=lambda r: r["clean_acc"] + r["robust_acc"])
        run["best_soup"] = best
        soup_rows += [{"run": rec["run"], "variant": variant_name(rec), "seed": rec["seed"], **r}
                      for r in rec["soup"]]

    rows = []
    for run_id, r in sorted(runs.items()):
        rows.append({"run": run_id, "variant": r["variant"], "family": r["family"], "training": r["training"],
                     "adapter": r["adapter"], "seed": r["seed"], "domain_parameters": r["domain_parameters"],
                     "clean_acc_clean_mode": r["clean_mode"]["clean_acc"],
                     "robust_acc_clean_mode": r["clean_mode"]["robust_acc"],
                     "clean_acc_robust_mode": r["robust_mode"]["clean_acc"],
                     "robust_acc_robust_mode": r["robust_mode"]["robust_acc"],
                     "best_soup_w": r.get("best_soup", {}).get("w"),
                     "best_soup_clean_acc": r.get("best_soup", {}).get("clean_acc"),
                     "best_soup_robust_acc": r.get("best_soup", {}).get("robust_acc")})
    variants: Dict[str, Dict[str, Any]] = {}
    for name in sorted({r["variant"] for r in rows}):
        mine = [r for r in rows if r["variant"] == name]
        variants[name] = {
            "seeds": len(mine), "domain_parameters": mine[0]["domain_parameters"],
            "clean_acc_clean_mode": _mean_std([r["clean_acc_clean_mode"] for r in mine]),
            "robust_acc_robust_mode": _mean_std([r["robust_acc_robust_mode"] for r in mine]),
        }
    summary = {"experiment": experiment, "attack": attack, "runs": runs, "variants": variants}
    tables_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in (("runs", pd.DataFrame(rows)), ("soups", pd.DataFrame(soup_rows))):
        with atomic_path(tables_dir / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False)
    write_json(summary_path, summary)
    return summary
