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

from .atomic import atomic_path  # noqa: E402


def _attack_label(attack: Dict[str, Any]) -> str:
    return (f"{attack['name']} {attack['norm']} eps={attack['eps']:g}, "
            f"{attack['restarts']} restart(s), {attack['subset']} test images")


def soup_curve(summary_path: Path, tables_dir: Path, out: Path) -> Path:
    """Left: clean and robust accuracy against the soup weight. Right: the clean/robust trade-off."""
    summary = json.loads(summary_path.read_text())
    runs = pd.read_csv(tables_dir / "runs.csv")
    soups_file = tables_dir / "soups.csv"
    soups = pd.read_csv(soups_file) if soups_file.stat().st_size > 1 else pd.DataFrame()
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (ax_w, ax_t) = plt.subplots(1, 2, figsize=(13, 5.2))
    if not soups.empty:
        mean = soups.groupby(["variant", "w"], as_index=False)[["clean_acc", "robust_acc"]].mean()
        long = mean.melt(id_vars=["variant", "w"], value_vars=["clean_acc", "robust_acc"],
                         var_name="accuracy", value_name="value")
        long["value"] *= 100
        long["accuracy"] = long["accuracy"].map({"clean_acc": "clean", "robust_acc": "robust"})
        sns.lineplot(data=long, x="w", y="value", hue="variant", style="accuracy", markers=True, ax=ax_w)
        ax_w.set(xlabel="soup weight w (0 = clean mode, 1 = robust mode)", ylabel="test accuracy (%)",
                 title="Adversarial model soups: accuracy against the soup weight")
        for variant, grp in mean.groupby("variant"):
            grp = grp.sort_values("w")
            ax_t.plot(100 * grp["robust_acc"], 100 * grp["clean_acc"], marker="o", label=f"soup: {variant}")
            for _, r in grp.iterrows():
                ax_t.annotate(f"w={r['w']:.1f}", (100 * r["robust_acc"], 100 * r["clean_acc"]),
                              textcoords="offset points", xytext=(4, 4), fontsize=7)
    refs = runs[runs["adapter"] == "none"].groupby("variant")[
        ["robust_acc_robust_mode", "clean_acc_clean_mode"]].mean()
    for marker, (variant, r) in zip("*PXD", refs.iterrows()):
        ax_t.scatter(100 * r["robust_acc_robust_mode"], 100 * r["clean_acc_clean_mode"], marker=marker, s=160,
                     zorder=5, label=f"reference: {variant}")
    attack = summary.get("attack") or {}
    ax_t.set(xlabel=f"robust accuracy (%) under {attack.get('name', 'PGD')}", ylabel="clean accuracy (%)",
             title="Clean/robust trade-off")
    ax_t.legend(fontsize=8, loc="best")
    fig.suptitle(f"{summary['experiment']}: {_attack_label(attack)}" if attack else summary["experiment"],
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return out
