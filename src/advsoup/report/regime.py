"""Where does co-training raise clean accuracy? The gain over the nominal model against the training regime.

The paper's first claim: co-training with adapters raises clean accuracy over
the nominal model (ViT-B16 on ImageNet: 83.76% vs 82.64%), the adversarial
half acting as a regulariser. A regulariser helps where the nominal model
overfits, so this report sets the gain beside the nominal model's train-test
gap, per training-set size and schedule, from the runs' eval.json alone:

* gain = clean accuracy of the co-trained model in clean mode (w=0) minus the
  nominal model's of the SAME seed, same family, training-set size and
  epochs (paired by seed: the seed fixes the data order and the attack's
  noise); mean and sample std over the paired seeds;
* train-test gap = clean accuracy on the run's own training images (eval
  mode, no augmentation; ``evaluate.train_subset``) minus its test accuracy.

Writes ``report/summaries/regime.json`` (the per-size numbers and the statements the
results page prints), ``report/tables/regime.csv`` and ``report/figures/regime.png``.
Torch-free, like the rest of :mod:`advsoup.report`.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from ..atomic import write_csv, write_json
from ..stats import mean_std
from .aggregate import variant_name

PAPER = {"setting": "ViT-B16 on ImageNet (1.28M images), class-token adapter", "cotrained": 0.8376,
         "nominal": 0.8264}
TABLE_COLUMNS = ["family", "variant", "train_images", "epochs", "samples_seen", "seeds",
                 "clean_acc_mean", "clean_acc_std", "nominal_clean_acc_mean", "nominal_clean_acc_std",
                 "gain_points_mean", "gain_points_std", "nominal_train_acc_mean", "nominal_gap_points_mean",
                 "nominal_gap_points_std", "gap_points_mean", "gap_points_std", "train_measured_images"]


def run_rows(records: Sequence[Dict[str, Any]]) -> pd.DataFrame:
    """One row per run: its regime (family, variant, training images, epochs, seed) and its accuracies."""
    rows = []
    for rec in records:
        if rec.get("train_images") is None or rec.get("epochs") is None:
            raise ValueError(f"{rec.get('run')}: its eval.json does not say what the checkpoint was trained on "
                             f"(train_images, epochs): re-run its evaluate stage")
        train = rec.get("train_accuracy")
        row = {"run": rec["run"], "family": rec["family"], "training": rec["training"], "adapter": rec["adapter"],
               "variant": variant_name(rec), "seed": int(rec["seed"]), "train_images": int(rec["train_images"]),
               "epochs": int(rec["epochs"]), "clean_acc": rec["clean_mode"]["clean_acc"],
               "robust_acc": rec["robust_mode"]["robust_acc"],
               "train_acc": train["clean_mode"]["clean_acc"] if train else math.nan,
               "train_measured_images": train["images"] if train else math.nan}
        row["gap"] = row["train_acc"] - row["clean_acc"]
        rows.append(row)
    return pd.DataFrame(rows)


def _nominal(runs: pd.DataFrame) -> pd.Series:
    return (runs["training"] == "nominal") & (runs["adapter"] == "none")


def _pts(stats: Dict[str, float]) -> Dict[str, float]:
    return {k: round(100 * v, 3) for k, v in stats.items()}


def regime_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (family, variant, training images, epochs) other than the nominal model: its clean accuracy,
    the gain over the nominal model paired by seed, and both models' train-test gaps (mean and std over seeds)."""
    out = []
    for (family, n, epochs), grp in runs.groupby(["family", "train_images", "epochs"], sort=True):
        nominal = grp[_nominal(grp)].set_index("seed")
        for variant, mine in grp[~_nominal(grp)].groupby("variant", sort=True):
            mine = mine.set_index("seed")
            seeds = sorted(set(mine.index) & set(nominal.index))
            row: Dict[str, Any] = {"family": family, "variant": variant, "train_images": int(n),
                                   "epochs": int(epochs), "samples_seen": int(n) * int(epochs), "seeds": len(seeds)}
            if seeds:
                acc, nom = mine.loc[seeds, "clean_acc"], nominal.loc[seeds, "clean_acc"]
                c, nc = mean_std(acc), mean_std(nom)
                g = _pts(mean_std(acc.values - nom.values))
                row.update(clean_acc_mean=c["mean"], clean_acc_std=c["std"], nominal_clean_acc_mean=nc["mean"],
                           nominal_clean_acc_std=nc["std"], gain_points_mean=g["mean"], gain_points_std=g["std"])
                if nominal.loc[seeds, "train_acc"].notna().all():
                    gap = _pts(mean_std(nominal.loc[seeds, "gap"]))
                    row.update(nominal_train_acc_mean=mean_std(nominal.loc[seeds, "train_acc"])["mean"],
                               nominal_gap_points_mean=gap["mean"], nominal_gap_points_std=gap["std"],
                               train_measured_images=int(nominal.loc[seeds, "train_measured_images"].min()))
                if mine.loc[seeds, "train_acc"].notna().all():
                    gap = _pts(mean_std(mine.loc[seeds, "gap"]))
                    row.update(gap_points_mean=gap["mean"], gap_points_std=gap["std"])
            out.append(row)
    return pd.DataFrame(out, columns=TABLE_COLUMNS)


def _label(variant: str) -> str:
    family, _, base = variant.rpartition(":")
    model = {"resnet": "ResNet"}.get(family, "ViT")
    if base.startswith("cotrain/"):
        adapter = base.removeprefix("cotrain/")
        what = {"token": "the class-token adapter", "layernorm": "dual LayerNorm", "batchnorm": "dual BatchNorm",
                "bias": "dual biases", "head": "a separate head", "none": "every parameter shared"}.get(adapter,
                                                                                                        adapter)
        return f"the {model} co-trained with {what} (clean mode)"
    return f"the {base} {model}"


def statements(table: pd.DataFrame) -> List[str]:
    """One sentence per row, generated from the numbers (the results page prints them as they are)."""
    out = []
    for _, r in table.iterrows():
        if not r["seeds"] or pd.isna(r["gain_points_mean"]):
            out.append(f"At {r['train_images']:,} training images ({r['epochs']} epochs) {_label(r['variant'])} has no "
                       f"nominal run of the same seed to compare with.")
            continue
        g, s = r["gain_points_mean"], r["gain_points_std"]
        side = "above" if g > 0 else "below" if g < 0 else "level with"
        amount = f"{abs(g):.2f} ± {s:.2f} points {side}" if g else f"{side} (± {s:.2f} points)"
        spread = " (within one standard deviation of zero)" if r["seeds"] > 1 and abs(g) <= s else ""
        text = (f"At {r['train_images']:,} training images ({r['epochs']} epochs, {r['samples_seen']:,} samples seen) "
                f"{_label(r['variant'])} is {amount} the nominal model{spread}: "
                f"{100 * r['clean_acc_mean']:.2f}% vs {100 * r['nominal_clean_acc_mean']:.2f}% clean test accuracy "
                f"(difference paired by seed, mean ± std over {r['seeds']} seed{'s' if r['seeds'] > 1 else ''})")
        if not pd.isna(r["nominal_gap_points_mean"]):
            text += (f"; the nominal model's train-test gap is {r['nominal_gap_points_mean']:.2f} ± "
                     f"{r['nominal_gap_points_std']:.2f} points")
            if not pd.isna(r["gap_points_mean"]):
                text += f", the co-trained model's {r['gap_points_mean']:.2f} ± {r['gap_points_std']:.2f}"
        out.append(text + ".")
    return out


def _trend(table: pd.DataFrame) -> List[str]:
    """Per variant and schedule (a line of the figure): the gain at each training-set size, and whether it follows
    the nominal model's train-test gap along that line."""
    rows = table.dropna(subset=["gain_points_mean"])
    out: List[str] = []
    if rows.empty:
        return out
    for (variant, schedule), grp in rows.assign(schedule=schedules(rows)).groupby(["variant", "schedule"], sort=True):
        if len(grp) < 2:
            continue
        grp = grp.sort_values("train_images")
        seen = f"{grp['samples_seen'].min():,}" + (f"-{grp['samples_seen'].max():,}"
                                                    if grp["samples_seen"].nunique() > 1 else "")
        gains = ", ".join(f"{r.gain_points_mean:+.2f} ± {r.gain_points_std:.2f} at {_size(r.train_images)}"
                          for r in grp.itertuples())
        text = f"{_label(variant)[0].upper()}{_label(variant)[1:]}, {schedule} ({seen} samples seen): gain {gains}"
        gap = grp.dropna(subset=["nominal_gap_points_mean"])
        if len(gap) >= 3:
            rho = gap["gain_points_mean"].corr(gap["nominal_gap_points_mean"], method="spearman")
            text += (f"; the nominal model's train-test gap {', '.join(f'{g:.2f}' for g in gap['nominal_gap_points_mean'])}"
                     f" (Spearman rank correlation with the gain {rho:+.2f})")
        out.append(text + ".")
    return out


def schedules(table: pd.DataFrame) -> pd.Series:
    """A line of the figure per variant and schedule. The size with the most schedules defines them; a point at
    another size joins the schedule nearest in samples seen (log scale, order kept), so a size run with the long
    schedule only (59k x 3 epochs beside 2.5k x 64) lies on the long line, not the short one. Labelled by its
    epochs per size ('8 epochs', or '64/32/8/3 epochs at 2.5k/5k/20k/59k')."""
    line = pd.Series(0, index=table.index)
    for _, grp in table.groupby("variant"):
        counts = grp.groupby("train_images")["samples_seen"].nunique()
        ref = np.log(np.sort(grp.loc[grp["train_images"] == counts.idxmax(), "samples_seen"].unique()))
        for _, at_size in grp.groupby("train_images"):
            at_size = at_size.sort_values("samples_seen")
            seen = np.log(at_size["samples_seen"].to_numpy())
            best = min(itertools.combinations(range(len(ref)), len(seen)),
                       key=lambda pick: float(np.abs(ref[list(pick)] - seen).sum()))
            line[at_size.index] = best
    labels = {}
    for (variant, i), grp in table.assign(line=line).groupby(["variant", "line"]):
        grp = grp.sort_values("train_images")
        ep = grp["epochs"].unique()
        labels[(variant, i)] = (f"{ep[0]} epochs" if len(ep) == 1 else
                                f"{'/'.join(map(str, grp['epochs']))} epochs at "
                                f"{'/'.join(_size(n) for n in grp['train_images'])}")
    return pd.Series([labels[(v, i)] for v, i in zip(table["variant"], line)], index=table.index)


def _size(n: int) -> str:
    return f"{n / 1000:g}k" if n >= 1000 else str(n)


def regime_figure(runs: pd.DataFrame, table: pd.DataFrame, out: Path, experiment: str) -> Path:
    """Top: gain over the nominal model (points) against training-set size (log x), mean ± std over seeds and
    each seed's paired difference. Bottom: train-test gap of the nominal model (solid) and of the co-trained
    model in clean mode (dashed), same x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from .figures import save_figure

    sns.set_theme(style="whitegrid", context="notebook")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 9), sharex=True)
    table = table.dropna(subset=["gain_points_mean"]).copy()
    table["schedule"] = schedules(table) if not table.empty else []
    keys = sorted({(v, s) for v, s in zip(table["variant"], table["schedule"])})
    palette = dict(zip(keys, sns.color_palette(n_colors=max(len(keys), 1))))
    nominal = runs[_nominal(runs)].set_index(["family", "train_images", "epochs", "seed"])
    drawn: set = set()  # the nominal model's gap: once per family and point (variants share their nominal twin)
    greys = iter(["0.15", "0.45", "0.65", "0.8"] * 4)
    groups = sorted(table.groupby(["variant", "schedule"], sort=True), key=lambda kv: -len(kv[1]))
    for (variant, schedule), grp in groups:
        grp, color = grp.sort_values("train_images"), palette[(variant, schedule)]
        label = f"{variant}, {schedule}"
        top.errorbar(grp["train_images"], grp["gain_points_mean"], yerr=grp["gain_points_std"], color=color,
                     marker="o", capsize=4, label=f"{label}: mean ± std over seeds")
        mine = runs[(runs["variant"] == variant)]
        for _, r in grp.iterrows():  # each seed's paired difference
            seeds = mine[(mine["train_images"] == r["train_images"]) & (mine["epochs"] == r["epochs"])]
            diffs = [100 * (s["clean_acc"] - nominal.loc[(s["family"], s["train_images"], s["epochs"], s["seed"]),
                                                           "clean_acc"])
                     for _, s in seeds.iterrows()
                     if (s["family"], s["train_images"], s["epochs"], s["seed"]) in nominal.index]
            top.scatter([r["train_images"]] * len(diffs), diffs, color=color, s=14, alpha=0.5, zorder=3)
        points = {(r["family"], r["train_images"], r["epochs"]) for _, r in grp.iterrows()}
        if not points <= drawn and grp["nominal_gap_points_mean"].notna().any():
            drawn |= points
            family = variant.rpartition(":")[0] or "vit"
            bottom.errorbar(grp["train_images"], grp["nominal_gap_points_mean"], yerr=grp["nominal_gap_points_std"],
                            color=next(greys), marker="s", capsize=4, linewidth=2,
                            label=f"nominal {'ResNet' if family == 'resnet' else 'ViT'}, {schedule}")
        if grp["gap_points_mean"].notna().any():
            bottom.errorbar(grp["train_images"], grp["gap_points_mean"], yerr=grp["gap_points_std"], color=color,
                            marker="o", linestyle="--", capsize=4, alpha=0.7, label=f"{label} (clean mode)")
    top.axhline(0, color="0.3", linewidth=1)
    top.axhline(100 * (PAPER["cotrained"] - PAPER["nominal"]), color="crimson", linestyle=":", linewidth=1.2,
                label=f"the paper: +{100 * (PAPER['cotrained'] - PAPER['nominal']):.2f} ({PAPER['setting']})")
    top.set(ylabel="clean test accuracy, co-trained (clean mode)\nminus nominal, same seed (points)",
            title="Gain of co-training over the nominal model (dots: single seeds)")
    bottom.axhline(0, color="0.3", linewidth=1)
    bottom.set(xscale="log", xlabel="training-set size (images, log scale)",
               ylabel="train accuracy minus test accuracy\n(points)", title="Train-test gap (overfitting)")
    sizes = sorted(set(table["train_images"])) or sorted(set(runs["train_images"]))
    bottom.set_xticks(sizes, [_size(n) for n in sizes])
    bottom.minorticks_off()
    for ax in (top, bottom):
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{experiment}: where does co-training raise clean accuracy?", fontsize=11)
    return save_figure(fig, out)


def regime_report(experiment: str, eval_files: Sequence[Path], summary_path: Path, table_path: Path,
                  figure_path: Path) -> Dict[str, Any]:
    """regime.json, tables/regime.csv and figures/regime.png from the runs' eval.json files."""
    records = []
    for f in eval_files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"metric file '{f}' is missing: run the evaluate stage for it")
        records.append(json.loads(Path(f).read_text()))
    runs = run_rows(records)
    table = regime_table(runs)
    if table.empty:
        raise ValueError(f"{experiment}: no run to compare with a nominal one: the regime report needs nominal "
                         f"runs and co-trained runs of the same family, training-set size and epochs")
    write_csv(table_path, table, float_format="%.5g")
    regime_figure(runs, table, figure_path, experiment)
    summary = {"experiment": experiment,
               "gain": "clean accuracy in clean mode (w=0) minus the nominal model's of the same seed, family, "
                       "training-set size and epochs; mean and sample std over the paired seeds, in points",
               "gap": "clean accuracy on the run's first N training images (eval mode, no augmentation) minus its "
                      "clean test accuracy, in points",
               # keyed, not a list: DVC's metrics (`dvc metrics show|diff`) drop lists
               "paper": PAPER, "regimes": {f"{r['variant']} n{r['train_images']} e{r['epochs']}": r
                                           for r in json.loads(table.to_json(orient="records"))},
               "statements": statements(table), "trend": _trend(table)}
    write_json(summary_path, summary)
    return summary


def verdict(table: pd.DataFrame) -> List[str]:
    """What the runs show about the paper's claim, from the numbers alone: the regimes where co-training lies more
    than one standard deviation of the paired seeds above (or below) the nominal model, and whether the gain
    follows the nominal model's overfitting (rank correlation with its train-test gap)."""
    rows = table.dropna(subset=["gain_points_mean"])
    tested = rows[rows["seeds"] > 1]
    above = tested[tested["gain_points_mean"] > tested["gain_points_std"]]
    below = tested[-tested["gain_points_mean"] > tested["gain_points_std"]]

    def where(df: pd.DataFrame) -> str:  # each variant named once, then its regimes
        return "; ".join(f"{_label(variant)} at " + ", ".join(
            f"{r.train_images:,} images x {r.epochs} epochs ({r.gain_points_mean:+.2f} ± {r.gain_points_std:.2f})"
            for r in grp.itertuples()) for variant, grp in df.groupby("variant", sort=False))

    out = []
    if tested.empty:
        out.append("No regime has more than one seed: the gain cannot be told from the seeds' spread.")
    elif above.empty:
        out.append(f"No regime of the {len(tested)} shows co-training above the nominal model by more than one "
                   f"standard deviation of the paired differences: the paper's gain in clean accuracy is not "
                   f"reproduced here" + (f". Below it by more than one: {where(below)}." if len(below) else "."))
    else:
        out.append(f"Co-training lies above the nominal model by more than one standard deviation of the paired "
                   f"differences in {len(above)} of {len(tested)} regimes: {where(above)}"
                   + (f". Below it by more than one: {where(below)}." if len(below) else "."))
    if len(tested):
        lo, hi = int(tested["seeds"].min()), int(tested["seeds"].max())
        out.append(f"One standard deviation over {lo if lo == hi else f'{lo}-{hi}'} seeds is a weak test, not "
                   f"significance: read the per-seed dots of the figure.")
    gap = rows.dropna(subset=["nominal_gap_points_mean"])
    if len(gap) >= 3:
        rho = gap["gain_points_mean"].corr(gap["nominal_gap_points_mean"], method="spearman")
        trend = ("rises with" if rho >= 0.5 else "falls as" if rho <= -0.5 else "does not follow")
        out.append(f"Across the {len(gap)} regimes the gain {trend} the nominal model's train-test gap "
                   f"(Spearman rank correlation {rho:+.2f}; the gap runs from "
                   f"{gap['nominal_gap_points_mean'].min():.2f} to {gap['nominal_gap_points_mean'].max():.2f} points).")
    return out


# The paper's ViT-B16 recipe (../shared/PAPER.md), beside which the page lists this experiment's setting.
PAPER_RECIPE = {"model": "ViT-B16 (86M parameters) on 224 px colour images",
                "data": "ImageNet: 1.28M training images, 1000 classes",
                "schedule": "300 epochs (~384M samples seen)",
                "optimiser": "AdamW (0.9, 0.95), weight decay 0.3, cosine schedule",
                "augmentation": "RandAugment (timm)",
                "attack": "PGD with 1-2 steps, l-inf eps 4/255"}


def setting_differences(model: Any, data_name: str, augment: Any, train: Any, table: pd.DataFrame) -> List[str]:
    """This experiment's setting beside the paper's, item by item, from the config the page stage reads."""
    vit = model.vit
    aug = (("RandAugment " + augment.auto_augment if augment.auto_augment else "crop and flip")
           if augment.enabled else "none")
    mix = train.mixup
    ours = {"model": f"timm ViT{' ' + vit.name if vit.name else ''} (embed {vit.embed_dim}, depth {vit.depth}, patch "
                     f"{vit.patch_size}) on {model.img_size} px images with {model.in_chans} channel(s)",
            "data": f"{data_name}: {table['train_images'].min():,}-{table['train_images'].max():,} training images, "
                    f"{model.num_classes} classes",
            "schedule": f"{table['epochs'].min()}-{table['epochs'].max()} epochs ({table['samples_seen'].min():,}-"
                        f"{table['samples_seen'].max():,} samples seen), warmup {train.warmup_epochs:g} epoch(s)",
            "optimiser": f"AdamW ({', '.join(f'{b:g}' for b in train.betas)}), weight decay {train.weight_decay:g}, "
                         f"cosine schedule, lr {train.lr:g}",
            "augmentation": aug + (f", MixUp {mix.mixup_alpha:g} / CutMix {mix.cutmix_alpha:g}"
                                   if mix.mixup_alpha or mix.cutmix_alpha else "")
                            + (f", label smoothing {train.label_smoothing:g}" if train.label_smoothing else ""),
            "attack": f"{train.attack.method.upper()} with {train.attack.steps} step(s), {train.attack.norm} eps "
                      f"{train.attack.eps:g}"}
    return [f"{k}: here {ours[k]}; the paper {PAPER_RECIPE[k]}." for k in PAPER_RECIPE]


def page_section(summary_path: Path, table_path: Path, figure_link: Optional[str],
                 setting_of: Any = None) -> List[str]:
    """The results page's section: the figure, the table, the generated statements and verdict, and, given the
    page stage's setting (model, data_name, augment, train), the setting beside the paper's (every sentence
    generated from the numbers and the config)."""
    summary = json.loads(summary_path.read_text())
    table = pd.read_csv(table_path)
    parts = ["## Does co-training raise clean accuracy? Gain over the nominal model against the training regime", "",
             f"Gain: {summary['gain']}. Gap: {summary['gap']}. The paper reports "
             f"{100 * PAPER['cotrained']:.2f}% vs {100 * PAPER['nominal']:.2f}% ({PAPER['setting']}).", ""]
    if figure_link:
        parts += [f"![Gain and train-test gap against the training-set size]({figure_link})", ""]
    shown = table[[c for c in table.columns if c not in ("family",)]]
    from .page import markdown_table

    parts += ["Accuracies in %, gains and gaps in points:", "", markdown_table(shown), ""]
    parts += [f"- {s}" for s in summary["statements"]] + [""]
    parts += [f"- {s}" for s in summary["trend"]] + ([""] if summary["trend"] else [])
    parts += ["### What the runs show about the claim", ""] + [f"- {s}" for s in verdict(table)] + [""]
    if setting_of is not None:
        setting = setting_differences(setting_of.model, setting_of.data_name, setting_of.augment, setting_of.train,
                                      table)
        parts += ["### This setting beside the paper's", "",
                  "Each item could decide whether adversarial examples act as a regulariser here:", ""]
        parts += [f"- {s}" for s in setting] + [""]
    return parts
