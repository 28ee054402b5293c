"""`advsoup where`: where an experiment's outputs are, and its headline numbers (reads files only)."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import Paths
from .aggregate import attack_label


def read_summary(path: Path) -> dict:
    """summary.json or shift_summary.json; {} when not written yet."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _present(folder: Path, pattern: str) -> str:
    """What this experiment's report has written there (an experiment writes only the parts it builds)."""
    names = sorted(p.name for p in folder.glob(pattern))
    return ", ".join(names) if names else "(nothing yet)"


def where(paths: Paths) -> None:
    exp = paths.cfg.experiment
    summary = read_summary(paths.summary)
    print(f"\nExperiment '{exp}': everything under {paths.root}/")
    print(f"  summaries {paths.summaries}/  {_present(paths.summaries, '*.json')}")
    print(f"  tables    {paths.tables}/  {_present(paths.tables, '*.csv')}")
    print(f"  figures   {paths.figures}/  {_present(paths.figures, '*.png')}")
    print(f"  metrics   {paths.root / 'metrics'}/<run>/  eval.json, soups.json, robustness.json, shift.json, "
          "shift_<set>.json, train_log.csv, checkpoint.json (in git)")
    print(f"  runs      {paths.root / 'runs'}/<run>/  weights, training state, resolved config, log (DVC cache)")
    if summary:
        a = summary["attack"]
        print(f"\nrobust = {a['name']} {a['norm']} eps={a['eps']:g} on {a['subset']} test images")
        for run_id, r in summary["runs"].items():
            line = (f"  {run_id:<24} clean mode {100 * r['clean_mode']['clean_acc']:5.1f}% clean "
                    f"/ robust mode {100 * r['robust_mode']['robust_acc']:5.1f}% robust")
            for choice, label in (("val_soup", "soup chosen on validation"), ("oracle_soup", "oracle soup")):
                if choice in r:
                    b = r[choice]
                    line += (f" | {label} w={b['w']:.2f}: {100 * b['clean_acc']:.1f}% / "
                             f"{100 * b['robust_acc']:.1f}%")
            print(line)
        _print_variants(summary)
        _print_robustness(summary)
    shifts = read_summary(paths.shift_summary)
    if shifts:
        print(f"\nshifts   {paths.tables}/shift.csv, shift_adaptation.csv; figure {paths.figures / 'shift.png'}")
        for variant, s in shifts["variants"].items():
            g, avg = s["kshot_gain_over_clean"], s["average"]
            print(f"  {variant:<24} average over shifts: clean mode {100 * avg['clean_mode']['mean']:.1f}%, "
                  f"k-shot soup (k={s['k']}) {100 * avg['kshot_soup']['mean']:.1f}% "
                  f"({100 * g['mean']:+.2f} +- {100 * g['std']:.2f}), oracle soup "
                  f"{100 * avg['oracle_soup']['mean']:.1f}%")
    _print_real_shifts(paths)
    _print_timings(paths.logs / "benchmarks")


def _print_real_shifts(paths: Paths) -> None:
    """The published shift sets' headline per variant: ImageNet-C mCE (or mean corruption error), top-1 of the others."""
    real = read_summary(paths.real_shift_summary)
    if not real:
        return
    print(f"\nreal shifts {paths.tables}/shift_real_paper.csv; figure {paths.figures / 'shift_real.png'}")
    methods = (("clean_mode", "clean mode"), ("kshot_soup", "k-shot soup"), ("oracle_soup", "oracle soup"))
    for variant, per_set in real["variants"].items():
        cells = []
        for set_name, per_method in per_set.items():
            any_scores = next(iter(per_method.values()))
            score = next(s for s in ("mce", "mean_corruption_error", "top1") if s in any_scores)
            label = {"mce": "mCE", "mean_corruption_error": "mean CE", "top1": "top-1"}[score]
            cells.append(f"{set_name} {label} " + ", ".join(f"{name} {per_method[m][score]['mean']:.1f}"
                                                          for m, name in methods if m in per_method))
        print(f"  {variant:<24} " + " | ".join(cells))


def _print_timings(folder: Path) -> None:
    """Each job's wall and CPU time, from Snakemake's benchmark files (the last time each job ran)."""
    rows = []
    for tsv in sorted(folder.glob("*.tsv")):
        lines = tsv.read_text().splitlines()
        if len(lines) >= 2:
            rec = dict(zip(lines[0].split("\t"), lines[-1].split("\t")))
            rows.append((tsv.stem, float(rec["s"]), float(rec.get("cpu_time", "nan")), rec.get("max_rss", "")))
    if rows:
        print(f"\ntime per job (last run; {folder}/): wall s, CPU s, peak RSS MB")
        for name, wall, cpu, rss in sorted(rows, key=lambda r: -r[1]):
            print(f"  {name:<36} {wall:8.1f} {cpu:8.1f} {rss:>8}")
        print(f"  {'sum':<36} {sum(r[1] for r in rows):8.1f} {sum(r[2] for r in rows):8.1f}")


def _print_variants(summary: dict) -> None:
    """With several seeds, each variant's mean +- std (results/tables/adapters.csv has the soups too)."""
    variants = summary.get("variants", {})
    if not any(v["seeds"] > 1 for v in variants.values()):
        return
    print("\nper variant, mean +- std over seeds (robust: the PGD above; AA: AutoAttack in robust mode, beside "
          "PGD on the same images):")
    pct = lambda s: f"{100 * s['mean']:5.1f} +- {100 * s['std']:3.1f}%"  # noqa: E731
    for name, v in variants.items():
        line = (f"  {name:<26} {v['seeds']} seeds, {v['domain_parameters']:>5} domain params: clean mode "
                f"{pct(v['clean_acc_clean_mode'])} clean / robust mode {pct(v['robust_acc_robust_mode'])} robust")
        if "aa_robust_acc_robust_mode" in v:
            line += (f", on {v['aa_images']} images AA {pct(v['aa_robust_acc_robust_mode'])} / PGD "
                     f"{pct(v['pgd_robust_acc_robust_mode_on_aa_images'])}")
        print(line)


def _print_robustness(summary: dict) -> None:
    """AutoAttack numbers and the gradient-masking verdict; a failed or skipped check is named."""
    for run_id, r in summary["runs"].items():
        aa = r.get("autoattack")
        if aa:
            clean, robust = aa["clean_mode"], aa["robust_mode"]
            print(f"  {run_id:<24} {attack_label(aa['attack'])}: clean mode "
                  f"{100 * clean['robust_acc']:.1f}%, robust mode {100 * robust['robust_acc']:.1f}% "
                  f"(PGD on the same images {100 * robust['pgd_robust_acc']:.1f}%)")
    checks = summary.get("masking_checks")
    if checks:
        print(f"\ngradient-masking checks: {checks['status'].upper()} ({checks['n_passed']} of {checks['n_checks']} "
              f"passed; details in each run's metrics/<run>/robustness.json)")
        for line in checks["failed"]:
            print(f"  FAILED   {line}")
        for line in checks["skipped"]:
            print(f"  skipped  {line}")
