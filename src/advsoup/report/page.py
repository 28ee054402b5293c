"""The results page of an experiment (docs/results/<experiment>.md), generated from its report folder.

Nothing on the page is typed by hand: the tables are the report's CSV files,
the figures are linked from the report, and the header says when and at
which commit the page was made, which checkpoints the numbers come from and
which code computed the metric files.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional

import pandas as pd

from ..atomic import write_text
from ..config import Paths, grid_run_ids
from ..provenance import KEY, code_version
from .aggregate import attack_label


def _code_label(code: Dict[str, str]) -> str:
    """A code version as the page names it: its commit, and where that is not the whole story its source hash."""
    clean = " + " not in code["commit"] and not code["commit"].startswith("unknown")
    return code["commit"] if clean else f"{code['commit']} (source sha256 {code['source_sha256'][:12]})"


def _platform_label(plat: Dict[str, Any]) -> str:
    """A platform as the page names it: GPU or CPU (with its vector instructions), torch, threads, ranks."""
    device = plat["gpu"] or f"{plat['cpu']} ({plat['cpu_capability']})"
    ranks = f" x {plat['world_size']} ranks" if plat.get("world_size", 1) > 1 else ""
    return f"{device}, torch {plat['torch']}, {plat['threads']} thread{'s' * (plat['threads'] != 1)}{ranks}"


def _record_counts(paths: Paths, key: str, label: Callable[[Dict[str, Any]], str], missing: str) -> str:
    """How many of the experiment's metric files record each value of their provenance's ``key``."""
    counts: Counter = Counter()
    for path in sorted((paths.root / "metrics").rglob("*.json")):
        prov = json.loads(path.read_text()).get(KEY) or {}
        counts[label(prov[key]) if key in prov else None] += 1
    versions = [f"{text}: {n}" for text, n in counts.items() if text is not None]
    if counts[None]:
        versions.append(f"{missing}: {counts[None]}")
    return "; ".join(versions) or "no metric files"


def _code_versions(paths: Paths) -> str:
    """Which code computed the experiment's metric files, with how many records each."""
    return _record_counts(paths, "code", _code_label, "not recorded (written before records named their code)")


def _platforms(paths: Paths) -> str:
    """On what the experiment's metric files were computed, with how many records each."""
    return _record_counts(paths, "platform", _platform_label,
                          "not recorded (written before records named their platform)")


def _fmt(col: str, value) -> str:
    if pd.isna(value):
        return ""
    if isinstance(value, float) and "acc" in col:
        return f"{100 * value:.1f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def markdown_table(df: pd.DataFrame) -> str:
    """A CSV table as Markdown; accuracies in %, empty cells for missing values."""
    cols = [c for c in df.columns if not df[c].isna().all()]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_fmt(c, row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _link(page: Path, target: Path) -> str:
    return os.path.relpath(target, page.parent)


def _checkpoints(paths: Paths) -> List[str]:
    out = []
    for run in grid_run_ids(paths.cfg.runs):
        rec = paths.checkpoint_record(run)
        sha = json.loads(rec.read_text())["weights_sha256"][:12] if rec.is_file() else "(no record)"
        out.append(f"{run} {sha}")
    return out


def write_page(paths: Paths, page: Path, setting_of: Optional[SimpleNamespace] = None) -> Path:
    """The page; ``setting_of`` (model, data_name, augment, train: the page stage's slice) lets the regime section
    set this experiment's setting beside the paper's."""
    regime = paths.regime_summary  # advsoup.report.regime: an experiment may have only this report
    if not paths.summary.is_file() and not regime.is_file():
        raise FileNotFoundError(f"{paths.summary} is missing: run `advsoup aggregate` (or `snakemake`) for "
                                f"experiment '{paths.cfg.experiment}' first")
    summary: Dict = json.loads(paths.summary.read_text()) if paths.summary.is_file() else {}
    seeds = sorted({s for r in paths.cfg.runs.values() for s in r.seeds})
    robust = (f" Robust accuracy in the tables: {attack_label(summary['attack'])} unless a column names another "
              f"attack." if summary else "")
    parts = [f"# Results: experiment `{paths.cfg.experiment}`", "",
             f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC with the code at "
             f"{_code_label(code_version())} by "
             f"`advsoup results_page --config params/experiments/{paths.cfg.experiment}.yaml`, from "
             f"`{paths.report}/`. Seeds: {', '.join(map(str, seeds))}.{robust}", "",
             "Every number below was computed from these checkpoints (run, sha256 prefix; "
             "aggregation refuses a metric computed from any other): " + "; ".join(_checkpoints(paths)) + ".", "",
             "Code that computed the metric files (records per version; recorded for the reader, never compared: "
             "a code change reruns nothing by itself): " + _code_versions(paths) + ".", "",
             "Platforms that computed them (bitwise equal numbers need the same kind of machine; recorded, never "
             "compared): " + _platforms(paths) + ".", ""]
    if regime.is_file():
        from .regime import page_section

        fig = paths.figures / "regime.png"
        parts += page_section(regime, paths.tables / "regime.csv", _link(page, fig) if fig.is_file() else None,
                              setting_of)
    adapters = paths.tables / "adapters.csv"
    if adapters.is_file():
        parts += ["## Adapters: one row per variant (mean and std over seeds, accuracies in %)", "",
                  markdown_table(pd.read_csv(adapters)), ""]
    checks = summary.get("masking_checks")
    if checks:
        parts += [f"Gradient-masking checks: **{checks['status']}** ({checks['n_passed']} of {checks['n_checks']} "
                  f"passed)." + ("".join(f"\n- FAILED {f}" for f in checks["failed"])), ""]
    for name, title in (("soup_curve.png", "Soup curves"), ("adapters.png", "Adapter table as a figure"),
                        ("shift.png", "Distribution shifts")):
        fig = paths.figures / name
        if fig.is_file():
            parts += [f"## {title}", "", f"![{title}]({_link(page, fig)})", ""]
    if paths.shift_summary.is_file():
        shift = json.loads(paths.shift_summary.read_text())
        rows = [{"variant": v, "k": s["k"], "clean_mode_acc": s["average"]["clean_mode"]["mean"],
                 "kshot_soup_acc": s["average"]["kshot_soup"]["mean"],
                 "oracle_soup_acc": s["average"]["oracle_soup"]["mean"],
                 "kshot_gain_points": round(100 * s["kshot_gain_over_clean"]["mean"], 2),
                 "kshot_gain_std_points": round(100 * s["kshot_gain_over_clean"]["std"], 2)}
                for v, s in shift["variants"].items()]
        parts += ["## Shifts: average over the shift sets (accuracies in %)", "",
                  markdown_table(pd.DataFrame(rows)), ""]
    real = paths.tables / "shift_real_paper.csv"
    if paths.real_shift_summary.is_file() and real.is_file():
        summary_real = json.loads(paths.real_shift_summary.read_text())
        parts += ["## Real distribution shifts: the paper's table (mean and std over seeds x draws)", "",
                  f"ImageNet-C: {summary_real['imagenet_c_normalisation']} (lower is better); ImageNet-A, -R and "
                  f"-Sketch: top-1 in %. Images scored per set: "
                  + ", ".join(f"{k} {v:,}" for k, v in summary_real["images"].items()) + ".", "",
                  markdown_table(pd.read_csv(real)), ""]
        fig = paths.figures / "shift_real.png"
        if fig.is_file():
            parts += [f"![Real distribution shifts]({_link(page, fig)})", ""]
    write_text(page, "\n".join(parts))
    return page
