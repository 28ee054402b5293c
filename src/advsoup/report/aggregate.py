"""Collect the per-run metric files into results/summary.json and results/tables/*.csv."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pandas as pd

from ..atomic import atomic_path, write_json
from ..stats import mean_std
from ..config import ADAPTERS, FAMILIES, TRAININGS


def variant_name(rec: Dict[str, Any]) -> str:
    """'nominal', 'adversarial' or 'cotrain/<adapter>', prefixed by the family unless it is the ViT."""
    base = rec["training"] if rec["training"] != "cotrain" else f"cotrain/{rec['adapter']}"
    return base if rec["family"] == "vit" else f"{rec['family']}:{base}"


def _read(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"metric file '{path}' is missing: run the evaluate/soups stage for it")
    return json.loads(path.read_text())



ADAPTER_COLUMNS = ["variant", "family", "training", "adapter", "domain_parameters", "seeds",
                   "clean_acc_clean_mode_mean", "clean_acc_clean_mode_std",
                   "robust_acc_robust_mode_mean", "robust_acc_robust_mode_std",
                   "aa_robust_acc_robust_mode_mean", "aa_robust_acc_robust_mode_std", "best_soup_w",
                   "best_soup_clean_acc_mean", "best_soup_clean_acc_std",
                   "best_soup_robust_acc_mean", "best_soup_robust_acc_std", "pgd_attack", "autoattack",
                   "masking_checks"]


def adapter_table(rows: Sequence[Dict[str, Any]], soup_rows: Sequence[Dict[str, Any]]) -> pd.DataFrame:
    """results/tables/adapters.csv: one row per variant, mean and std over its seeds.

    The best soup is one weight per variant, the one whose seed-mean of clean +
    robust accuracy is highest (the same reporting choice as a run's best soup);
    its accuracies are then averaged over the seeds at that weight. Variants
    without a soup sweep (nominal, adversarial, co-training without adapter)
    leave the soup columns empty. The AutoAttack columns stay empty for variants
    evaluated without it; ``masking_checks`` is "pass" only if every seed passed.
    """
    if not rows:
        return pd.DataFrame(columns=ADAPTER_COLUMNS)
    runs, soups = pd.DataFrame(rows), pd.DataFrame(soup_rows)
    order = {"training": {t: i for i, t in enumerate(TRAININGS)}, "adapter": {a: i for i, a in enumerate(ADAPTERS)},
             "family": {f: i for i, f in enumerate(FAMILIES)}}
    out = []
    for variant, grp in runs.groupby("variant"):
        first = grp.iloc[0]
        row = {"variant": variant, "family": first["family"], "training": first["training"],
               "adapter": first["adapter"], "domain_parameters": int(first["domain_parameters"]), "seeds": len(grp)}
        for col in ("clean_acc_clean_mode", "robust_acc_robust_mode", "aa_robust_acc_robust_mode"):
            if grp[col].notna().all():
                s = mean_std(grp[col].tolist())
                row[f"{col}_mean"], row[f"{col}_std"] = s["mean"], s["std"]
        for col in ("pgd_attack", "autoattack"):
            row[col] = first.get(col)
        checks = grp["masking_checks"]
        row["masking_checks"] = None if checks.isna().any() else ("fail" if (checks == "fail").any() else "pass")
        mine = soups[soups["variant"] == variant] if not soups.empty else soups
        if not mine.empty:
            by_w = mine.assign(total=mine["clean_acc"] + mine["robust_acc"]).groupby("w")["total"].mean()
            best = by_w.idxmax()
            at_best = mine[mine["w"] == best]
            row["best_soup_w"] = float(best)
            for col in ("clean_acc", "robust_acc"):
                s = mean_std(at_best[col].tolist())
                row[f"best_soup_{col}_mean"], row[f"best_soup_{col}_std"] = s["mean"], s["std"]
        out.append(row)
    table = pd.DataFrame(out, columns=ADAPTER_COLUMNS)
    return table.sort_values(["family", "training", "adapter"], key=lambda col: col.map(order[col.name]))


def masking_summary(records: Sequence[Dict[str, Any]], runs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Each run's gradient-masking verdict into ``runs``; the experiment's verdict, failures named, returned."""
    failed, skipped, passed, total = [], [], 0, 0
    for rec in records:
        runs.setdefault(rec["run"], {})["masking_checks"] = {k: rec[k] for k in ("status", "failed", "skipped")}
        failed += [f"{rec['run']}: {c}" for c in rec["failed"]]
        skipped += [f"{rec['run']}: {c}" for c in rec["skipped"]]
        passed, total = passed + rec["n_passed"], total + rec["n_checks"]
    if not records:
        return {}
    return {"status": "fail" if failed else "pass", "failed": failed, "skipped": skipped, "n_passed": passed,
            "n_checks": total}


def attack_label(a: Dict[str, Any]) -> str:
    """'<name> <norm> eps=<eps> on <n> images': how tables and `advsoup where` name an attack."""
    return f"{a['name']} {a['norm']} eps={a['eps']:g} on {a['subset']} images"


def robustness_columns(run: Dict[str, Any], pgd: Dict[str, Any] | None) -> Dict[str, Any]:
    """runs.csv columns naming the attacks behind the robust numbers, AutoAttack's numbers and the checks."""
    aa = run.get("autoattack")
    return {"pgd_attack": attack_label(pgd) if pgd else None,
            "autoattack": attack_label(aa["attack"]) if aa else None,
            "aa_robust_acc_clean_mode": aa["clean_mode"]["robust_acc"] if aa else None,
            "aa_robust_acc_robust_mode": aa["robust_mode"]["robust_acc"] if aa else None,
            "masking_checks": run.get("masking_checks", {}).get("status")}


def aggregate(experiment: str, eval_files: Sequence[Path], soup_files: Sequence[Path],
              summary_path: Path, tables_dir: Path, robustness_files: Sequence[Path] = ()) -> Dict[str, Any]:
    """summary.json and the tables. ``attack`` names the PGD behind every ``robust_acc`` outside a run's
    ``autoattack`` block, which names its own attack (and the PGD it is compared with)."""
    runs: Dict[str, Dict[str, Any]] = {}
    attack = None
    for f in eval_files:
        rec = _read(f)
        attack = rec["attack"]
        runs[rec["run"]] = {k: rec[k] for k in ("training", "adapter", "family", "seed", "domain_parameters")}
        runs[rec["run"]].update(variant=variant_name(rec), clean_mode=rec["clean_mode"],
                                robust_mode=rec["robust_mode"])
        if "autoattack" in rec:
            runs[rec["run"]]["autoattack"] = rec["autoattack"]
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
    masking = masking_summary([_read(f) for f in robustness_files], runs)

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
                     "best_soup_robust_acc": r.get("best_soup", {}).get("robust_acc"),
                     **robustness_columns(r, attack)})
    table = adapter_table(rows, soup_rows)
    # The summary's per-variant numbers are the adapter table's, not a second computation of them.
    variants: Dict[str, Dict[str, Any]] = {}
    for r in sorted(table.to_dict("records"), key=lambda r: r["variant"]):
        variants[r["variant"]] = {"seeds": int(r["seeds"]), "domain_parameters": int(r["domain_parameters"])}
        for col in ("clean_acc_clean_mode", "robust_acc_robust_mode", "aa_robust_acc_robust_mode"):
            if not pd.isna(r[f"{col}_mean"]):
                variants[r["variant"]][col] = {"mean": r[f"{col}_mean"], "std": r[f"{col}_std"]}
    summary = {"experiment": experiment, "attack": attack, "runs": runs, "variants": variants}
    if masking:
        summary["masking_checks"] = masking
    tables_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in (("runs", pd.DataFrame(rows)), ("soups", pd.DataFrame(soup_rows)),
                        ("adapters", table)):
        with atomic_path(tables_dir / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False)
    write_json(summary_path, summary)
    return summary


def training_table(history_files: Dict[str, Path], out: Path) -> pd.DataFrame:
    """Every run's per-epoch training log in one table with a `run` column: what `dvc plots` draws."""
    frames = []
    for run_id, path in history_files.items():
        if not path.is_file():
            raise FileNotFoundError(f"training log '{path}' is missing: run the train stage for {run_id}")
        frames.append(pd.read_csv(path).assign(run=run_id))
    table = pd.concat(frames, ignore_index=True)
    table = table[["run"] + [c for c in table.columns if c != "run"]]
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    return table
