"""Figures from the tables alone (no model is loaded): `dvc repro figures` reruns just this."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..atomic import atomic_path  # noqa: E402
from ..config import FAMILIES  # noqa: E402
from .aggregate import aa_subset_of, sweep_targets  # noqa: E402


def save_figure(fig: plt.Figure, out: Path, dpi: int = 120) -> Path:
    """Lay out, write atomically as PNG, and close."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return out


def _attack_label(attack: Dict[str, Any]) -> str:
    targets = f", {n} APGD-T targets" if (n := sweep_targets(attack)) else ""
    return (f"{attack['name']} {attack['norm']} eps={attack['eps']:g}, "
            f"{attack['restarts']} restart(s){targets}, {attack['subset']} test images")


def soup_curve(summary_path: Path, tables_dir: Path, out: Path) -> Path:
    """Left: clean and robust accuracy against the soup weight. Right: the clean/robust trade-off."""
    summary = json.loads(summary_path.read_text())
    runs = pd.read_csv(tables_dir / "runs.csv")
    soups_file = tables_dir / "soups.csv"
    soups = pd.read_csv(soups_file) if soups_file.stat().st_size > 1 else pd.DataFrame()
    sns.set_theme(style="whitegrid", context="notebook")
    attack = summary.get("attack") or {}
    # One row per model family: every soupable variant of the family, and its runs without an
    # adapter (nominal, adversarial-only, co-training with everything shared) as reference points.
    families = [f for f in FAMILIES if f in set(runs["family"])]
    family_of_run = runs.set_index("run")["family"]
    fig, axes = plt.subplots(len(families), 2, figsize=(13, 5.2 * len(families)), squeeze=False)
    for (ax_w, ax_t), family in zip(axes, families):
        mine = soups[soups["run"].map(family_of_run) == family] if not soups.empty else soups
        if not mine.empty:
            mean = mine.groupby(["variant", "w"], as_index=False)[["clean_acc", "robust_acc"]].mean()
            palette = dict(zip(sorted(mean["variant"].unique()), sns.color_palette()))
            long = mean.melt(id_vars=["variant", "w"], value_vars=["clean_acc", "robust_acc"],
                             var_name="accuracy", value_name="value")
            long["value"] *= 100
            long["accuracy"] = long["accuracy"].map({"clean_acc": "clean", "robust_acc": "robust"})
            sns.lineplot(data=long, x="w", y="value", hue="variant", style="accuracy", markers=True,
                         palette=palette, ax=ax_w)
            for variant, grp in mean.groupby("variant"):
                grp = grp.sort_values("w")
                ax_t.plot(100 * grp["robust_acc"], 100 * grp["clean_acc"], marker="o", color=palette[variant],
                          label=f"soup: {variant}")
                for _, r in grp.iterrows():
                    ax_t.annotate(f"w={r['w']:g}", (100 * r["robust_acc"], 100 * r["clean_acc"]),
                                  textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax_w.set(xlabel="soup weight w (0 = clean mode, 1 = robust mode)", ylabel="test accuracy (%)",
                 title=f"{family.upper()}: adversarial model soups, accuracy against the soup weight")
        refs = runs[(runs["family"] == family) & (runs["adapter"] == "none")].groupby("variant")[
            ["robust_acc_robust_mode", "clean_acc_clean_mode"]].mean()
        for marker, (variant, r) in zip("*PXDsv^<>", refs.iterrows()):
            ax_t.scatter(100 * r["robust_acc_robust_mode"], 100 * r["clean_acc_clean_mode"], marker=marker,
                         s=160, color="0.25", zorder=5, label=f"reference: {variant}")
        ax_t.set(xlabel=f"robust accuracy (%) under {attack.get('name', 'PGD')}", ylabel="clean accuracy (%)",
                 title=f"{family.upper()}: clean/robust trade-off")
        ax_t.legend(fontsize=8, loc="best")
    fig.suptitle(f"{summary['experiment']}: {_attack_label(attack)}" if attack else summary["experiment"],
                 fontsize=10)
    return save_figure(fig, out)


def adapter_figure(summary_path: Path, tables_dir: Path, out: Path) -> Path:
    """Per variant: clean accuracy in clean mode and robust accuracy in robust mode (mean and std over
    seeds, grey dots: single seeds), the soup chosen on the validation split (diamonds, its weight written
    beside; the oracle soup, chosen on test, when there is no validation sweep), AutoAttack's robust
    accuracy and PGD's on the same images where AutoAttack ran (crosses, plus), and, in the labels, the
    adapter's number of domain-specific parameters."""
    runs = pd.read_csv(tables_dir / "runs.csv")
    table = pd.read_csv(tables_dir / "adapters.csv")
    labels = {r["variant"]: f"{r['variant']}  ({int(r['domain_parameters']):,} domain params)"
              for _, r in table.iterrows()}
    order = [labels[v] for v in table["variant"]]  # adapters.csv is sorted by family, training, adapter
    runs["label"] = runs["variant"].map(labels)
    choice = "val_soup" if table["val_soup_w"].notna().any() else "oracle_soup"
    soup_label = {"val_soup": "soup chosen on validation", "oracle_soup": "oracle soup (chosen on test)"}[choice]
    n_aa = aa_subset_of(table.columns)
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.55 * len(order) + 2.2), sharey=True)
    panels = (("clean_acc_clean_mode", f"{choice}_clean_acc_mean", "clean accuracy in clean mode (%)"),
              ("robust_acc_robust_mode", f"{choice}_robust_acc_mean", "robust accuracy in robust mode (%)"))
    for ax, (col, soup_col, xlabel) in zip(axes, panels):
        data = runs.assign(value=100 * runs[col])
        # Points, not bars: the variants differ by a few points, which bars from 0 would hide.
        sns.pointplot(data=data, y="label", x="value", hue="family", order=order, errorbar="sd", capsize=0.3,
                      hue_order=[f for f in FAMILIES if f in set(data["family"])],
                      linestyle="none", markers="o", ax=ax)
        sns.stripplot(data=data, y="label", x="value", order=order, color="0.4", size=3, alpha=0.7, ax=ax)
        soups = table.dropna(subset=[f"{choice}_w"])
        if not soups.empty:
            ax.scatter(100 * soups[soup_col], [order.index(labels[v]) for v in soups["variant"]], marker="D",
                       s=50, color="crimson", zorder=5, label=f"{soup_label} (mean over seeds)")
        if col == "robust_acc_robust_mode" and n_aa:
            aa = table.dropna(subset=[f"aa_robust_acc_robust_mode_n{n_aa}_mean"])
            rows = [order.index(labels[v]) for v in aa["variant"]]
            ax.scatter(100 * aa[f"pgd_robust_acc_robust_mode_n{n_aa}_mean"], rows, marker="P", s=60,
                       color="0.5", zorder=6, label=f"PGD on AutoAttack's {n_aa} images (mean over seeds)")
            ax.scatter(100 * aa[f"aa_robust_acc_robust_mode_n{n_aa}_mean"], rows, marker="x", s=60,
                       color="black", zorder=7, label=f"AutoAttack (mean over seeds; {aa['autoattack'].iloc[0]})")
        ax.set(xlabel=xlabel, ylabel="")
        ax.legend(fontsize=8, loc="best")
    for _, r in table.dropna(subset=[f"{choice}_w"]).iterrows():
        axes[0].annotate(f"w={r[f'{choice}_w']:g}", (100 * r[f"{choice}_clean_acc_mean"],
                                                      order.index(labels[r["variant"]])),
                         textcoords="offset points", xytext=(6, -10), fontsize=7, color="crimson")
    seeds = sorted(set(table["seeds"]))
    attack = json.loads(summary_path.read_text()).get("attack")
    fig.suptitle(f"Adapters: accuracy per variant, mean and std over {'/'.join(map(str, seeds))} seed(s)"
                 + (f"; robust = {_attack_label(attack)}" if attack else ""), fontsize=11)
    return save_figure(fig, out)
