"""The real shift sets' tables, summary and figure, from the shift-real metric files alone (no model, no torch).

<tables>/shift_real.csv          accuracy of every run at every soup weight per set (ImageNet-C: mean over its
                                 settings) and per ImageNet-C setting (column ``setting``)
<tables>/shift_real_draws.csv    every method per run, set and draw of the k images: top-1 or, for ImageNet-C,
                                 mCE and mean corruption error (what the spreads are over)
<tables>/shift_real_paper.csv    the table the paper reports, per variant and method: ImageNet-C mCE (lower is
                                 better), ImageNet-A, -R and -Sketch top-1; mean and std over seeds x draws
<summary>                        the same numbers as JSON, with how ImageNet-C was normalised
<figure>                         accuracy against soup weight, a panel per set, a line per variant

mCE is Hendrycks & Dietterich's (2019): per benchmark corruption, the error
summed over severities 1-5 divided by AlexNet's, averaged over the 15
corruptions, in % (AlexNet = 100). It is reported only when the files hold all
15 x 5 settings; otherwise the table gives the plain mean corruption error
(1 - accuracy, averaged over the settings present), labelled so. On a subset
(shift.real.imagenet_c.subset) both are estimates from those images.
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

from ..atomic import write_csv, write_json  # noqa: E402
from ..config import BENCHMARK_CORRUPTIONS  # noqa: E402
from ..shift.names import REAL_METHODS, REAL_SETS  # noqa: E402
from ..stats import mean_std  # noqa: E402
from .aggregate import variant_name  # noqa: E402
from .figures import save_figure  # noqa: E402

# AlexNet's ImageNet-C error per benchmark corruption, averaged over severities 1-5 (Hendrycks & Dietterich
# 2019; the values of their robustness repository, used by AugMix and others to normalise mCE).
ALEXNET_ERR = dict(zip(BENCHMARK_CORRUPTIONS, (
    0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816, 0.826572, 0.819324,
    0.564592, 0.853204, 0.646056, 0.717840, 0.606500)))
SEVERITIES = (1, 2, 3, 4, 5)
MCE, MEAN_CE, TOP1 = "mce", "mean_corruption_error", "top1"
COLUMNS = {("imagenet-c", MCE): "imagenet-c mCE (%, AlexNet = 100)",
           ("imagenet-c", MEAN_CE): "imagenet-c mean corruption error (%)",
           ("imagenet-a", TOP1): "imagenet-a top-1 (%)", ("imagenet-r", TOP1): "imagenet-r top-1 (%)",
           ("imagenet-sketch", TOP1): "imagenet-sketch top-1 (%)"}
TITLES = {"imagenet-c": "ImageNet-C (mean over its settings)", "imagenet-a": "ImageNet-A (200 classes)",
          "imagenet-r": "ImageNet-R (200 classes)", "imagenet-sketch": "ImageNet-Sketch"}


def _read(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"metric file '{path}' is missing: run the shift-real stage for it")
    return json.loads(path.read_text())


def _mce_applies(sets: Dict[str, Any]) -> bool:
    present = {(s.get("corruption"), s.get("severity")) for s in sets.values()}
    return all((c, v) in present for c in BENCHMARK_CORRUPTIONS for v in SEVERITIES)


def _scores(set_name: str, sets: Dict[str, Any], acc: Dict[str, float]) -> Dict[str, float]:
    """The paper's numbers of one set from the accuracy of each of its settings: top-1, or for ImageNet-C
    the mean corruption error and (when all 15 x 5 settings are there) the AlexNet-normalised mCE, in %."""
    if set_name != "imagenet-c":
        return {TOP1: 100 * acc[set_name]}
    out = {MEAN_CE: 100 * float(np.mean([1 - a for a in acc.values()]))}
    if _mce_applies(sets):
        err = {(sets[k]["corruption"], sets[k]["severity"]): 1 - a for k, a in acc.items()}
        out[MCE] = 100 * float(np.mean([np.mean([err[c, v] for v in SEVERITIES]) / ALEXNET_ERR[c]
                                        for c in BENCHMARK_CORRUPTIONS]))
    return out


def _per_draw(sets: Dict[str, Any]) -> Dict[str, List[Dict[str, float]]]:
    """method -> one {setting: accuracy} per draw. A run without an adapter: clean mode on every image."""
    first = next(iter(sets.values()))
    if "adaptation" not in first:
        return {"clean_mode": [{k: s["acc"]["0.00"] for k, s in sets.items()}]}
    return {m: [{k: s["adaptation"][d][m] for k, s in sets.items()} for d in range(len(first["adaptation"]))]
            for m in REAL_METHODS}


def _normalisation(records: List[Dict[str, Any]]) -> str:
    c_sets = [r["sets"] for r in records if r["set"] == "imagenet-c"]
    if not c_sets:
        return "no ImageNet-C file"
    if all(_mce_applies(s) for s in c_sets):
        return ("mCE: corruption errors over severities 1-5 divided by AlexNet's (Hendrycks & Dietterich 2019), "
                "averaged over the 15 benchmark corruptions; AlexNet = 100")
    have = c_sets[0].values()
    corruptions = sorted({s["corruption"] for s in have})
    return (f"plain mean corruption error (no AlexNet normalisation): the files hold {', '.join(corruptions)} x "
            f"{len({s['severity'] for s in have})} severities; mCE needs the 15 benchmark corruptions x 5 severities")


def real_shift_tables(files: Sequence[Path], tables_dir: Path, summary_path: Path,
                      experiment: str) -> Dict[str, Any]:
    records = [_read(f) for f in files]
    curve_rows: List[Dict[str, Any]] = []
    draw_rows: List[Dict[str, Any]] = []
    pooled: Dict[tuple, List[float]] = {}  # (variant, set, method, score) -> values over seeds x draws
    images: Dict[str, int] = {}
    for rec in records:
        variant, set_name, sets = variant_name(rec), rec["set"], rec["sets"]
        ids = {"run": rec["run"], "variant": variant, "seed": rec["seed"], "set": set_name}
        for w in rec["weights"]:
            accs = {k: s["acc"][f"{w:.2f}"] for k, s in sets.items()}
            curve_rows.append({**ids, "setting": "", "w": w, "acc": float(np.mean(list(accs.values())))})
            if set_name == "imagenet-c":
                curve_rows += [{**ids, "setting": k, "corruption": sets[k]["corruption"],
                                "severity": sets[k]["severity"], "w": w, "acc": a} for k, a in accs.items()]
        for method, draws in _per_draw(sets).items():
            for d, acc in enumerate(draws):
                scores = _scores(set_name, sets, acc)
                w = None  # the chosen weight; ImageNet-C chooses one per setting (in its metric file)
                if method in ("kshot_soup", "oracle_soup") and set_name in sets:
                    w = sets[set_name]["adaptation"][d][method.replace("_soup", "_w")]
                draw_rows.append({**ids, "method": method, "draw": d, **scores, "w": w})
                for score, v in scores.items():
                    pooled.setdefault((variant, set_name, method, score), []).append(v)
        images[set_name] = max(images.get(set_name, 0), sum(s["size"] for s in sets.values()))
    summary: Dict[str, Any] = {"experiment": experiment, "imagenet_c_normalisation": _normalisation(records),
                               "images": images, "variants": {}}
    for (variant, set_name, method, score), values in sorted(pooled.items()):
        per = summary["variants"].setdefault(variant, {}).setdefault(set_name, {}).setdefault(method, {})
        per[score] = {**mean_std(values), "samples": len(values)}
    paper_rows = []
    for variant, per_set in summary["variants"].items():
        for method in REAL_METHODS:
            row: Dict[str, Any] = {"variant": variant, "method": method}
            for (set_name, score), column in COLUMNS.items():
                s = per_set.get(set_name, {}).get(method, {}).get(score)
                row[column], row[f"{column} std"] = (s["mean"], s["std"]) if s else (None, None)
            if any(v is not None for k, v in row.items() if k not in ("variant", "method")):
                paper_rows.append(row)
    for name, rows in (("shift_real", curve_rows), ("shift_real_draws", draw_rows), ("shift_real_paper", paper_rows)):
        write_csv(tables_dir / f"{name}.csv", pd.DataFrame(rows))
    write_json(summary_path, summary)
    return summary


def real_shift_figure(tables_dir: Path, out: Path) -> Path:
    """Top-1 accuracy against soup weight, a panel per real set: a line per variant with an adapter (mean over
    seeds, band = std), a dotted line per variant without one (its only model, at every weight)."""
    curve = pd.read_csv(tables_dir / "shift_real.csv")
    curve = curve[curve["setting"].isna()].copy()  # the per-set rows (ImageNet-C: mean over its settings)
    curve["acc"] *= 100
    sets = [s for s in REAL_SETS if s in set(curve["set"])]
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, max(1, len(sets)), figsize=(5.2 * max(1, len(sets)), 4.6), squeeze=False,
                             layout="constrained")
    variants = sorted(curve["variant"].unique())
    palette = dict(zip(variants, sns.color_palette(n_colors=len(variants))))
    for ax, set_name in zip(axes[0], sets):
        mine = curve[curve["set"] == set_name]
        swept = mine.groupby("variant")["w"].nunique()
        soups = mine[mine["variant"].isin(swept[swept > 1].index)]
        if not soups.empty:
            sns.lineplot(data=soups, x="w", y="acc", hue="variant", palette=palette, marker="o", errorbar="sd",
                         ax=ax)
        for variant in swept[swept == 1].index:
            ax.axhline(mine[mine["variant"] == variant]["acc"].mean(), ls=":", color=palette[variant],
                       label=f"{variant} (no adapter)")
        ax.set(xlabel="soup weight w (0 = clean mode, 1 = robust mode)", ylabel="top-1 accuracy (%)",
               title=TITLES[set_name], xlim=(-0.03, 1.03))
        ax.legend(fontsize=8, title="variant", title_fontsize=8)
    fig.suptitle("Real distribution shifts: clean accuracy (no attack) at every soup weight; "
                 "bands show the spread over seeds", fontsize=10)
    return save_figure(fig, out, dpi=110)
