"""The published shift sets (ImageNet-C, -A, -R, -Sketch) as stages of the Snakemake DAG, on small generated trees
in their layouts: a tiny 1000-way ImageNet experiment trained on a 2-class ImageFolder, scored on every set by
`shift_real` (one job per run and set), then `shift_real_table` and `shift_real_figure`. A configured set that is
missing fails before any job; a set left out of the config is skipped; the synthetic suite is not in this DAG."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from advsoup.shift.layout import imagenet_synsets
from test_real_shifts import write_published_layouts
from test_workflow import TINY, advsoup, jobs_of, snakemake

CORRUPTIONS, SEVERITIES = ["fog", "contrast"], [1, 3]
SETS = ["imagenet_c", "imagenet_a", "imagenet_r", "imagenet_sketch"]
RUNS = ["token-s0"]  # a run with an adapter: every method; a run without one is scored in test_real_shifts.py


def counts(dry_run: str) -> dict:
    """{rule: number of jobs} of a dry run's job table."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", dry_run, re.M)
            if m.group(1) not in ("total", "jobid")}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """A 2-class ImageNet train/val tree (two real wnids, a colour per class) and the four shift sets in their
    published layouts under one root: ImageNet-C 2 corruptions x 2 severities, A and R with 2 of their 200
    classes, Sketch with 2 of the 1000; 3 tiny JPEGs per class folder."""
    base = tmp_path_factory.mktemp("real_dag")
    data = base / "imagenet"
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c, w in enumerate(imagenet_synsets()[:2]):
            (data / split / w).mkdir(parents=True)
            for k in range(n):
                img = rng.integers(0, 60, (40, 44, 3), dtype=np.uint8)
                img[..., c] += 150
                Image.fromarray(img).save(data / split / w / f"{k}.JPEG")
    return data, write_published_layouts(base / "shifts", CORRUPTIONS, SEVERITIES)


def experiment(tmp: Path, data: Path, **shift) -> Path:
    """A tiny ImageNet experiment: a 1000-way ViT on 32 px, one epoch, every job in the calling process."""
    cfg = {
        "experiment": "realshift",
        "data": {"name": "imagenet", "source_dir": str(data), "val_size": 0, "workers": 0},
        "model": {"img_size": 32, "in_chans": 3, "num_classes": 1000, "mean": [0.485, 0.456, 0.406],
                  "std": [0.229, 0.224, 0.225], "vit": {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}},
        "train": {"epochs": 1, "batch_size": 8, "log_every": 1},
        "evaluate": {"soup_weights": [0.0, 0.5, 1.0], "threads": 1},
        "shift": {"k": 2, "draws": 2,
                  "real": {"workers": 0, "batch_size": 8,
                           "imagenet_c": {"subset": 0, "corruptions": CORRUPTIONS, "severities": SEVERITIES}}},
        "launcher": {"executor": "inline", "resources": {s: {"cpus": 1} for s in ("train", "shift_real")}},
        "runs": {"token": {"training": "cotrain", "adapter": "token"}},
    }
    path = tmp / "realshift.yaml"
    path.write_text(yaml.safe_dump(OmegaConf.to_container(OmegaConf.merge(cfg, {"shift": shift}))))
    return path


def test_real_sets_through_the_dag(trees, tmp_path):
    """Every run on every configured set, each a job of its own; the table, summary and figure; provenance per set;
    an ImageNet-C edit reruns the ImageNet-C job only. About a minute on 2 idle cores (8 jobs, each in its own
    `advsoup` process: most of their time is importing torch)."""
    data, root = trees
    exp = experiment(tmp_path, data, imagenet_root=str(root))
    plan = counts(snakemake(tmp_path, "-n", "--configfile", str(exp)).stdout)
    assert plan["shift_real"] == len(RUNS) * len(SETS) and plan["shift_real_figure"] == 1, plan
    # ImageNet is read from files: the synthetic suite (held in memory) is not part of its DAG
    assert not {"shift_suite", "shift_reference", "shift_hard", "shift", "shift_table", "shift_figure"} & set(plan)

    snakemake(tmp_path, "shift_real_figure", "--configfile", str(exp))
    out = tmp_path / "results" / "realshift"
    for run in RUNS:
        weights = json.loads((out / "metrics" / run / "checkpoint.json").read_text())["weights_sha256"]
        for key in SETS:
            rec = json.loads((out / "metrics" / run / f"shift_{key}.json").read_text())
            assert rec["set"] == key.replace("_", "-") and rec["provenance"]["set"] == key
            assert rec["provenance"]["checkpoints"] == {"train": weights}
            assert rec["weights"] == [0.0, 0.5, 1.0] and rec["cost"]["forward_passes"] == 3 * rec["cost"]["images"]
        c = json.loads((out / "metrics" / run / "shift_imagenet_c.json").read_text())
        assert sorted(c["sets"]) == sorted(f"imagenet-c/{x}-{s}" for x in CORRUPTIONS for s in SEVERITIES)
        a = json.loads((out / "metrics" / run / "shift_imagenet_a.json").read_text())
        assert a["classes"] == 200 and a["sets"]["imagenet-a"]["size"] == 6  # masked to its 200 classes
    token_r = json.loads((out / "metrics" / "token-s0" / "shift_imagenet_r.json").read_text())
    for draw in token_r["sets"]["imagenet-r"]["adaptation"]:  # k-shot and oracle soup, per draw of the k images
        assert draw["oracle_soup"] >= draw["kshot_soup"] - 1e-9 and draw["kshot_w"] in (0.0, 0.5, 1.0)

    paper = pd.read_csv(out / "report" / "tables" / "shift_real_paper.csv")
    assert set(paper["variant"]) == {"cotrain/token"}
    assert set(paper["method"]) == {"clean_mode", "robust_mode", "kshot_soup", "oracle_soup"}
    assert paper["imagenet-c mean corruption error (%)"].notna().all()  # not all 15 x 5: the plain mean, labelled
    for col in ("imagenet-a top-1 (%)", "imagenet-r top-1 (%)", "imagenet-sketch top-1 (%)"):
        assert paper[col].between(0, 100).all(), col
    summary = json.loads((out / "report" / "summaries" / "shift_real_summary.json").read_text())
    assert summary["experiment"] == "realshift" and "plain mean corruption error" in summary["imagenet_c_normalisation"]
    assert summary["images"] == {"imagenet-c": 24, "imagenet-a": 6, "imagenet-r": 6, "imagenet-sketch": 6}
    curve = pd.read_csv(out / "report" / "tables" / "shift_real.csv")
    assert sorted(curve[curve["run"] == "token-s0"]["w"].unique()) == [0.0, 0.5, 1.0]
    assert (out / "report" / "figures" / "shift_real.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "logs" / "shift_real-token-s0-imagenet_c.log").is_file()
    where = advsoup(tmp_path, "where", "--config", str(exp)).stdout
    clean_a = summary["variants"]["cotrain/token"]["imagenet-a"]["clean_mode"]["top1"]["mean"]
    assert f"imagenet-a top-1 clean mode {clean_a:.1f}, k-shot soup" in where and "imagenet-c mean CE" in where

    assert "Nothing to be done" in snakemake(tmp_path, "shift_real_figure", "-n", "--configfile", str(exp)).stdout
    # a set's job reads that set's keys only: an ImageNet-C edit reruns its two jobs and the report, nothing else
    edit = counts(snakemake(tmp_path, "shift_real_figure", "-n", "--configfile", str(exp), "--config",
                            "shift={real: {imagenet_c: {severities: [3]}}}").stdout)
    assert edit.get("shift_real") == len(RUNS) and "train" not in edit, edit
    assert {"shift_real_table", "shift_real_figure"} <= set(edit)


def test_a_missing_configured_set_fails_before_any_job_and_an_unconfigured_one_is_skipped(trees, tmp_path):
    data, root = trees
    # configured (enabled, with a root) but not there: refused before any job, naming the path and the layout
    exp = experiment(tmp_path, data, imagenet_root=str(root),
                     real={"imagenet_sketch": {"root": str(tmp_path / "no-sketch")}})
    proc = snakemake(tmp_path, "--configfile", str(exp), check=False)
    msg = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"folder '{tmp_path / 'no-sketch'}' does not exist" in msg
    assert "<wnid>/*.JPEG (1000 wnid folders)" in msg and "shift.real.imagenet_sketch.enabled=false" in msg
    assert not (tmp_path / "results").exists()
    # a set with no root (no shift.imagenet_root, none of its own): left out of the DAG, not an error
    exp = experiment(tmp_path, data, real={k: {"root": str(root / f)} for k, f in
                                           (("imagenet_c", "imagenet-c"), ("imagenet_r", "imagenet-r"))})
    plan = counts(snakemake(tmp_path, "-n", "--configfile", str(exp)).stdout)
    assert plan["shift_real"] == len(RUNS) * 2, plan
    proc = advsoup(tmp_path, "shift_real", "--config", str(exp), "--run", "token-s0", "--set", "imagenet_a")
    assert proc.returncode == 2 and "--set imagenet_a: the set is not configured" in proc.stderr
    # no set at all on an ImageNet experiment: no shift study in the DAG, and the synthetic one is refused by name
    plan = counts(snakemake(tmp_path, "-n", "--configfile", str(experiment(tmp_path, data))).stdout)
    assert not {"shift_real", "shift_real_table", "shift_suite", "shift"} & set(plan), plan
    proc = advsoup(tmp_path, "shift_suite", "--config", str(exp))
    assert proc.returncode == 2 and "data.name=imagenet is read from files" in proc.stderr
    # the sets score 1000-way ImageNet models: configured for another dataset's experiment, refused up front
    proc = snakemake(tmp_path, "-n", "--configfile", str(TINY), "--config",
                     f"shift={{imagenet_root: {root}, real: {{imagenet_c: {{enabled: false}}}}}}",
                     check=False)
    assert proc.returncode != 0 and "model.num_classes" in proc.stdout + proc.stderr


def test_fashion_mnist_keeps_the_synthetic_shift_study(tmp_path):
    plan = jobs_of(snakemake(tmp_path, "-n", "--configfile", str(TINY)).stdout)
    assert {"shift_suite", "shift_reference", "shift_hard", "shift", "shift_table", "shift_figure"} <= plan
    assert not {"shift_real", "shift_real_table", "shift_real_figure"} & plan


def test_results_page_shows_the_real_shift_table(tmp_path):
    from advsoup.config import Paths, load_config
    from advsoup.report.page import write_page
    from advsoup.report.real_shifts import real_shift_tables

    paths = Paths(load_config([TINY], [f"results_dir={tmp_path}"]))
    draw = {"clean_mode": 0.3, "robust_mode": 0.2, "kshot_soup": 0.35, "kshot_w": 0.5, "oracle_soup": 0.4,
            "oracle_w": 0.5}
    rec = {"run": "token-s0", "training": "cotrain", "adapter": "token", "family": "vit", "seed": 0,
           "set": "imagenet-r", "weights": [0.0, 0.5, 1.0], "k": 2, "draws": 1, "classes": 200,
           "sets": {"imagenet-r": {"kind": "imagenet-r", "size": 10, "acc": {"0.00": 0.3, "0.50": 0.4, "1.00": 0.2},
                                   "adaptation": [draw]}}}
    (tmp_path / "r.json").write_text(json.dumps(rec))
    real_shift_tables([tmp_path / "r.json"], paths.tables, paths.real_shift_summary, "tiny")
    paths.summary.write_text(json.dumps({"attack": {"name": "PGD-3", "norm": "linf", "eps": 0.1, "steps": 3,
                                                    "step_size": 0.05, "restarts": 1, "random_start": True,
                                                    "subset": 100}, "runs": {}}))
    page = write_page(paths, tmp_path / "page.md").read_text()
    assert "## Real distribution shifts: the paper's table" in page and "imagenet-r 10" in page
    assert "| cotrain/token | kshot_soup | 35 | 0 |" in page
