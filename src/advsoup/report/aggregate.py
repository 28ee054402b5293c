"""Collect the per-run metric files into report/summaries/summary.json and report/tables/*.csv.

Every chosen number says what it was chosen on: a soup weight chosen on the
validation split (``val_soup``) or on test itself (``oracle_soup``); AutoAttack
sits beside PGD on the same images, the subset size in the column names.
soups.csv holds the test sweeps (what the soup curves draw), soups_validation.csv
the validation sweeps the weights are chosen on.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd

from ..atomic import write_csv, write_json
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



SOUP_CHOICES = ("val_soup", "oracle_soup")
ADAPTER_COLUMNS = ["variant", "family", "training", "adapter", "domain_parameters", "train_attack_model_mode", "seeds",
                   "clean_acc_clean_mode_mean", "clean_acc_clean_mode_std",
                   "robust_acc_robust_mode_mean", "robust_acc_robust_mode_std",
                   # AutoAttack columns, named after their subset, are inserted here (aa_columns)
                   *[f"{c}_{k}" for c in SOUP_CHOICES for k in ("w", "clean_acc_mean", "clean_acc_std",
                                                              "robust_acc_mean", "robust_acc_std")],
                   "pgd_attack", "autoattack", "masking_checks"]


def aa_columns(n: int) -> List[str]:
    """AutoAttack and PGD robust accuracy on AutoAttack's n images: the subset is in the name, so the two
    are never read beside a PGD number measured on other images."""
    return [f"{a}_robust_acc_{mode}_n{n}" for mode in ("clean_mode", "robust_mode") for a in ("aa", "pgd")]


def aa_subset_of(columns: Sequence[str]) -> int | None:
    """The AutoAttack subset size a table's column names carry (None: AutoAttack did not run)."""
    for c in columns:
        if c.startswith("aa_robust_acc_robust_mode_n"):
            return int(c.removeprefix("aa_robust_acc_robust_mode_n").split("_")[0])
    return None


def _choose(rows: pd.DataFrame) -> float:
    """The soup weight whose mean clean + robust accuracy is highest (equal weight on both: a reporting choice)."""
    return float(rows.assign(total=rows["clean_acc"] + rows["robust_acc"]).groupby("w")["total"].mean().idxmax())


def adapter_table(rows: Sequence[Dict[str, Any]], soup_rows: Sequence[Dict[str, Any]],
                  val_rows: Sequence[Dict[str, Any]] = (), train_attack_model_mode: str | None = None) -> pd.DataFrame:
    """results/tables/adapters.csv: one row per variant, mean and std over its seeds.

    Two soups per variant, each one weight for all seeds, chosen as the highest
    seed-mean of clean + robust accuracy, and reported by its test accuracies
    averaged over the seeds at that weight:

    * ``val_soup``: chosen on the validation split (held-out training images),
      so its test numbers are not selected on test;
    * ``oracle_soup``: chosen on the test numbers themselves (an upper bound no
      user can pick; named so).

    Variants without a soup sweep leave the soup columns empty, as do runs
    without a validation sweep (data.val_size: 0) the val_soup columns. The
    AutoAttack columns carry AutoAttack's subset size, with PGD on those same
    images beside them. ``masking_checks`` is "pass" only if every seed passed.
    ``train_attack_model_mode`` (train.attack_model_mode) says which network the
    training attack saw, for every variant trained with one.
    """
    runs, soups, val = pd.DataFrame(rows), pd.DataFrame(soup_rows), pd.DataFrame(val_rows)
    n_aa = aa_subset_of(runs.columns) if rows else None
    aa_cols = [c for c in aa_columns(n_aa) if "robust_mode" in c] if n_aa else []
    columns = ADAPTER_COLUMNS[:11] + [f"{c}_{s}" for c in aa_cols for s in ("mean", "std")] + ADAPTER_COLUMNS[11:]
    if not rows:
        return pd.DataFrame(columns=columns)
    order = {"training": {t: i for i, t in enumerate(TRAININGS)}, "adapter": {a: i for i, a in enumerate(ADAPTERS)},
             "family": {f: i for i, f in enumerate(FAMILIES)}}
    out = []
    for variant, grp in runs.groupby("variant"):
        first = grp.iloc[0]
        row = {"variant": variant, "family": first["family"], "training": first["training"],
               "adapter": first["adapter"], "domain_parameters": int(first["domain_parameters"]), "seeds": len(grp),
               "train_attack_model_mode": None if first["training"] == "nominal" else train_attack_model_mode}
        for col in ("clean_acc_clean_mode", "robust_acc_robust_mode", *aa_cols):
            if col in grp and grp[col].notna().all():
                s = mean_std(grp[col].tolist())
                row[f"{col}_mean"], row[f"{col}_std"] = s["mean"], s["std"]
        for col in ("pgd_attack", "autoattack"):
            row[col] = first.get(col)
        checks = grp["masking_checks"]
        row["masking_checks"] = None if checks.isna().any() else ("fail" if (checks == "fail").any() else "pass")
        mine = soups[soups["variant"] == variant] if not soups.empty else soups
        mine_val = val[val["variant"] == variant] if not val.empty else val
        for choice, chosen_on in (("val_soup", mine_val), ("oracle_soup", mine)):
            if chosen_on.empty:
                continue
            w = _choose(chosen_on)
            at = mine[mine["w"] == w]
            row[f"{choice}_w"] = w
            for col in ("clean_acc", "robust_acc"):
                s = mean_std(at[col].tolist())
                row[f"{choice}_{col}_mean"], row[f"{choice}_{col}_std"] = s["mean"], s["std"]
        out.append(row)
    table = pd.DataFrame(out, columns=columns)
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
    """'<name> <norm> eps=<eps> on <n> images': how tables and `advsoup where` name an attack (APGD-T in a sweep
    attack with its number of target classes)."""
    targets = f" ({n} targets)" if (n := sweep_targets(a)) else ""
    return f"{a['name']}{targets} {a['norm']} eps={a['eps']:g} on {a['subset']} images"


def sweep_targets(a: Dict[str, Any]) -> Optional[int]:
    """APGD-T's number of target classes in a sweep attack's record (AutoAttack's record lists them per attack)."""
    targets = a.get("target_classes")
    return targets if isinstance(targets, int) else None


def robustness_columns(run: Dict[str, Any], pgd: Dict[str, Any] | None) -> Dict[str, Any]:
    """runs.csv columns naming the attacks behind the robust numbers, AutoAttack's numbers beside PGD's on
    the same images (the subset size in the column names) and the checks."""
    aa = run.get("autoattack")
    out = {"pgd_attack": attack_label(pgd) if pgd else None,
           "autoattack": attack_label(aa["attack"]) if aa else None,
           "masking_checks": run.get("masking_checks", {}).get("status")}
    if aa:
        n = aa["attack"]["subset"]
        for mode in ("clean_mode", "robust_mode"):
            out[f"aa_robust_acc_{mode}_n{n}"] = aa[mode]["robust_acc"]
            out[f"pgd_robust_acc_{mode}_n{n}"] = aa[mode]["pgd_robust_acc"]
    return out


def _soup_choices(rec: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """A run's validated soup (weight chosen on the validation sweep) and oracle soup (chosen on test), each
    with its test accuracies."""
    test = {r["w"]: r for r in rec["soup"]}
    total = lambda r: r["clean_acc"] + r["robust_acc"]  # noqa: E731  equal weight on both: a reporting choice
    out = {"oracle_soup": {**max(rec["soup"], key=total), "chosen_on": "test (oracle)"}}
    if rec.get("validation"):
        w = max(rec["validation"], key=total)["w"]
        out["val_soup"] = {**test[w], "chosen_on": f"validation ({rec['validation_images']} held-out training images)"}
    return out


def aggregate(experiment: str, eval_files: Sequence[Path], soup_files: Sequence[Path],
              summary_path: Path, tables_dir: Path, robustness_files: Sequence[Path] = (),
              train_attack_model_mode: str | None = None) -> Dict[str, Any]:
    """summary.json and the tables. ``attack`` names the PGD behind every ``robust_acc`` outside a run's
    ``autoattack`` block, which names its own attack (and the PGD it is compared with, on its images)."""
    runs: Dict[str, Dict[str, Any]] = {}
    attack = None
    aa_subsets = set()
    for f in eval_files:
        rec = _read(f)
        attack = rec["attack"]
        runs[rec["run"]] = {k: rec[k] for k in ("training", "adapter", "family", "seed", "domain_parameters")}
        runs[rec["run"]].update(variant=variant_name(rec), clean_mode=rec["clean_mode"],
                                robust_mode=rec["robust_mode"])
        if "autoattack" in rec:
            runs[rec["run"]]["autoattack"] = rec["autoattack"]
            aa_subsets.add(rec["autoattack"]["attack"]["subset"])
    if len(aa_subsets) > 1:
        raise ValueError(f"the runs' AutoAttack numbers were measured on different subsets {sorted(aa_subsets)}: "
                         f"re-run the evaluate stage of every run with one evaluate.autoattack.subset")
    soup_rows: List[Dict[str, Any]] = []  # test: soups.csv (what the soup curves and `dvc plots` draw)
    val_rows: List[Dict[str, Any]] = []  # validation: soups_validation.csv (where weights are chosen)
    for f in soup_files:
        rec = _read(f)
        run = runs.setdefault(rec["run"], {})
        run["soup"] = {f"{r['w']:.2f}": {"clean_acc": r["clean_acc"], "robust_acc": r["robust_acc"]}
                       for r in rec["soup"]}
        if rec.get("validation"):
            run["soup_validation"] = {f"{r['w']:.2f}": {"clean_acc": r["clean_acc"], "robust_acc": r["robust_acc"]}
                                      for r in rec["validation"]}
        run.update(_soup_choices(rec))
        ids = {"run": rec["run"], "variant": variant_name(rec), "seed": rec["seed"]}
        soup_rows += [{**ids, **r} for r in rec["soup"]]
        val_rows += [{**ids, **r} for r in rec.get("validation", [])]
    masking = masking_summary([_read(f) for f in robustness_files], runs)

    rows = []
    for run_id, r in sorted(runs.items()):
        row = {"run": run_id, "variant": r["variant"], "family": r["family"], "training": r["training"],
               "adapter": r["adapter"], "seed": r["seed"], "domain_parameters": r["domain_parameters"],
               "clean_acc_clean_mode": r["clean_mode"]["clean_acc"],
               "robust_acc_clean_mode": r["clean_mode"]["robust_acc"],
               "clean_acc_robust_mode": r["robust_mode"]["clean_acc"],
               "robust_acc_robust_mode": r["robust_mode"]["robust_acc"]}
        for choice in SOUP_CHOICES:
            for k in ("w", "clean_acc", "robust_acc"):
                row[f"{choice}_{k}"] = r.get(choice, {}).get(k)
        rows.append({**row, **robustness_columns(r, attack)})
    table = adapter_table(rows, soup_rows, val_rows, train_attack_model_mode)
    # The summary's per-variant numbers are the adapter table's, not a second computation of them.
    n_aa = aa_subset_of(table.columns)
    keys = {"clean_acc_clean_mode": "clean_acc_clean_mode", "robust_acc_robust_mode": "robust_acc_robust_mode"}
    if n_aa:
        keys.update({f"aa_robust_acc_robust_mode_n{n_aa}": "aa_robust_acc_robust_mode",
                     f"pgd_robust_acc_robust_mode_n{n_aa}": "pgd_robust_acc_robust_mode_on_aa_images"})
    variants: Dict[str, Dict[str, Any]] = {}
    for r in sorted(table.to_dict("records"), key=lambda r: r["variant"]):
        v = variants[r["variant"]] = {"seeds": int(r["seeds"]), "domain_parameters": int(r["domain_parameters"])}
        if n_aa:
            v["aa_images"] = n_aa
        if isinstance(r["train_attack_model_mode"], str):
            v["train_attack_model_mode"] = r["train_attack_model_mode"]
        for col, key in keys.items():
            if not pd.isna(r[f"{col}_mean"]):
                v[key] = {"mean": r[f"{col}_mean"], "std": r[f"{col}_std"]}
        for choice in SOUP_CHOICES:
            if not pd.isna(r[f"{choice}_w"]):
                v[choice] = {"w": r[f"{choice}_w"], **{c: {"mean": r[f"{choice}_{c}_mean"], "std": r[f"{choice}_{c}_std"]}
                                                     for c in ("clean_acc", "robust_acc")}}
    summary = {"experiment": experiment, "attack": attack, "runs": runs, "variants": variants}
    if masking:
        summary["masking_checks"] = masking
    for name, frame in (("runs", pd.DataFrame(rows)), ("soups", pd.DataFrame(soup_rows)),
                        ("soups_validation", pd.DataFrame(val_rows)), ("adapters", table)):
        write_csv(tables_dir / f"{name}.csv", frame)
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
    write_csv(out, table)
    return table
