"""The shift tables, summary and figure, from the per-run shift.json files alone (no model is loaded).

report/tables/shift.csv              accuracy of every run at every soup weight on every set and group
report/tables/shift_adaptation.csv   every adaptation method per run and set/group: mean and spread over draws
report/tables/shift_draws.csv        every method per run, group and draw (what the figure's spreads show)
report/summaries/shift_summary.json  per variant, on average over the shifts: every method, and the gain of
                                     the k-shot soup over clean mode (mean and spread over seeds x draws)
report/figures/shift.png             per shift and on average, and mean corruption accuracy per severity
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..stats import mean_std  # noqa: E402
from .aggregate import variant_name  # noqa: E402
from ..atomic import write_csv, write_json  # noqa: E402
from ..config import CORRUPTIONS  # noqa: E402
from .figures import save_figure  # noqa: E402
from ..shift.names import AVERAGE, MEAN_CORRUPTION, METHODS  # noqa: E402

LABELS = {"clean_mode": "clean mode (w=0)", "robust_mode": "robust mode (w=1)",
          "kshot_soup": "k-shot soup", "adapter_finetune": "adapter fine-tuned on k",
          "full_finetune": "whole model fine-tuned on k", "oracle_soup": "oracle soup (best w on test)"}


def _read(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"metric file '{path}' is missing: run the shift stage for it")
    return json.loads(path.read_text())


def _rows(rec: Dict[str, Any]):
    """(shift, kind, corruption, severity, record) for every set and every group of a run."""
    for name, s in rec["sets"].items():
        yield name, s["kind"], s.get("corruption", ""), s.get("severity", ""), s
    for name, g in rec["groups"].items():
        sev = name.rsplit("_s", 1)[1] if name.startswith(f"{MEAN_CORRUPTION}_s") else ""
        yield name, "group", name if name in CORRUPTIONS else "", sev, g


def shift_tables(shift_files: Sequence[Path], tables_dir: Path, summary_path: Path,
                 experiment: str) -> Dict[str, Any]:
    acc_rows: List[Dict[str, Any]] = []
    adapt_rows: List[Dict[str, Any]] = []
    draw_rows: List[Dict[str, Any]] = []
    gains: Dict[str, Dict[str, List[float]]] = {}
    meta: Dict[str, Any] = {}
    for f in shift_files:
        rec = _read(f)
        variant = variant_name(rec)
        base = {"run": rec["run"], "variant": variant, "seed": rec["seed"]}
        for shift, kind, corruption, severity, r in _rows(rec):
            ids = {**base, "shift": shift, "kind": kind, "corruption": corruption, "severity": severity}
            if kind == "group" and "per_draw" in r:
                draw_rows += [{**ids, "draw": d, "method": m, "acc": v}
                              for m in METHODS for d, v in enumerate(r["per_draw"][m])]
            if kind == "group" and shift in rec["sets"]:
                continue  # a group of one set (sketch, hard): its rows are the set's
            acc_rows += [{**ids, "w": float(w), "acc": a} for w, a in r["acc"].items()]
            if "adaptation" in r and kind != "group":
                stats = {m: mean_std([d[m] for d in r["adaptation"]]) for m in METHODS}
                gain = mean_std([d["kshot_soup"] - d["clean_mode"] for d in r["adaptation"]])
                extra = {"kshot_w": mean_std([d["kshot_w"] for d in r["adaptation"]])["mean"],
                         "oracle_w": mean_std([d["oracle_w"] for d in r["adaptation"]])["mean"]}
            elif "adaptation" in r:
                stats, gain, extra = r["adaptation"], r["adaptation"]["kshot_gain_over_clean"], {}
            else:
                continue
            for m in METHODS:
                adapt_rows.append({**ids, "method": m, "acc_mean": stats[m]["mean"], "acc_std": stats[m]["std"],
                                   "kshot_gain_over_clean_mean": gain["mean"] if m == "kshot_soup" else None,
                                   "kshot_gain_over_clean_std": gain["std"] if m == "kshot_soup" else None,
                                   "w_mean": extra.get(m.replace("_soup", "_w"))})
        avg = rec["groups"].get(AVERAGE, {})
        if "per_draw" in avg:
            per = gains.setdefault(variant, {m: [] for m in METHODS})
            for m in METHODS:
                per[m] += avg["per_draw"][m]
            meta[variant] = {"k": rec["k"], "draws": rec["draws"], "shifts": avg["sets"],
                             "seeds": meta.get(variant, {}).get("seeds", 0) + 1}
    summary: Dict[str, Any] = {"experiment": experiment, "variants": {}}
    for variant, per in sorted(gains.items()):
        gain = np.asarray(per["kshot_soup"]) - np.asarray(per["clean_mode"])
        summary["variants"][variant] = {
            **meta[variant], "samples": len(gain),
            "average": {m: mean_std(per[m]) for m in METHODS},
            "kshot_gain_over_clean": mean_std(gain)}
    for name, rows in (("shift", acc_rows), ("shift_adaptation", adapt_rows), ("shift_draws", draw_rows)):
        write_csv(tables_dir / f"{name}.csv", pd.DataFrame(rows))
    write_json(summary_path, summary)
    return summary


def _shift_label(shift: str) -> str:
    return {AVERAGE: "AVERAGE", MEAN_CORRUPTION: "all corruptions"}.get(shift, shift.replace("_", " "))


def shift_figure(tables_dir: Path, summary_path: Path, out: Path) -> Path:
    """Per adapted variant: accuracy of every method per shift group and on average (bars, spread over
    draws and seeds), and mean corruption accuracy against severity."""
    draws_file = tables_dir / "shift_draws.csv"
    draws = pd.read_csv(draws_file) if draws_file.stat().st_size > 1 else pd.DataFrame()  # empty: no adapter
    summary = json.loads(summary_path.read_text())
    sns.set_theme(style="whitegrid", context="notebook")
    variants = sorted(draws["variant"].unique()) if not draws.empty else []
    fig, axes = plt.subplots(max(1, len(variants)), 2, figsize=(17, 6 * max(1, len(variants))), squeeze=False,
                             gridspec_kw={"width_ratios": [2.6, 1]}, layout="constrained")  # keeps suptitle clear
    if not variants:
        for ax in axes[0]:
            ax.text(0.5, 0.5, "no run with an adapter: nothing to adapt", ha="center", va="center")
            ax.set_axis_off()
    order = [LABELS[m] for m in METHODS]
    for (ax_bar, ax_sev), variant in zip(axes, variants):
        mine = draws[draws["variant"] == variant].copy()
        mine["method"] = mine["method"].map(LABELS)
        mine["acc"] *= 100
        # per corruption (mean over severities), all corruptions, sketch, hard, and their average
        shifts = [c for c in CORRUPTIONS if c in set(mine["shift"])] + \
            [s for s in (MEAN_CORRUPTION, "sketch", "hard", AVERAGE) if s in set(mine["shift"])]
        top = mine[mine["shift"].isin(shifts)].copy()
        top["shift"] = top["shift"].map(_shift_label)
        sns.barplot(data=top, x="shift", y="acc", hue="method", hue_order=order, errorbar="sd", ax=ax_bar,
                    order=[_shift_label(s) for s in shifts], legend=False)
        ax_bar.tick_params(axis="x", labelrotation=40)
        for label in ax_bar.get_xticklabels():
            label.set_horizontalalignment("right")
        s = summary["variants"].get(variant, {})
        g = s.get("kshot_gain_over_clean", {})
        ax_bar.set(xlabel="shifted test set", ylabel="top-1 accuracy (%)", ylim=(0, 100),
                   title=f"{variant}: adapting from k={s.get('k')} labelled target examples "
                         f"(k-shot soup - clean mode on average: {100 * g.get('mean', np.nan):+.2f} "
                         f"+- {100 * g.get('std', np.nan):.2f} points)")
        sev = mine[mine["shift"].str.match(rf"{MEAN_CORRUPTION}_s\d")].copy()
        if not sev.empty:
            sev["severity"] = sev["shift"].str.rsplit("_s", n=1).str[1].astype(int)
            sns.lineplot(data=sev, x="severity", y="acc", hue="method", hue_order=order, marker="o",
                         errorbar="sd", ax=ax_sev)
            ax_sev.set_xticks(sorted(sev["severity"].unique()))
            ax_sev.legend(title="method (same colours left)", fontsize=8, title_fontsize=8, loc="upper right")
        ax_sev.set(xlabel="corruption severity (ImageNet-C scale 1-5)", ylabel="mean corruption accuracy (%)",
                   title="mean over corruptions, per severity")
    fig.suptitle("Distribution shifts: clean accuracy (no attack); bars and bands show the spread over draws "
                 "of the k examples and seeds", fontsize=10)
    return save_figure(fig, out, dpi=110)
