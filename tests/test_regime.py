"""The training-regime experiment (issue 15): per-run training-set size and epochs, the accuracy on the run's own
training images, the regime report (gain over the nominal model against the training-set size) and its DAG."""
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from advsoup import stages
from advsoup.config import EXPERIMENTS_DIR, ConfigError, Paths, load_config
from advsoup.config.preflight import preflight
from advsoup.data.prepared import balanced_order, load_split, load_training_split
from advsoup.report.regime import regime_report, regime_table, run_rows, schedules

TINY = EXPERIMENTS_DIR / "tiny.yaml"
REGIME = EXPERIMENTS_DIR / "regime.yaml"


# ---- per-run options ------------------------------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("runs.token.train_size=0", "runs.token.train_size"),
    ("runs.token.epochs=0", "runs.token.epochs"),
    ("evaluate.train_subset=-1", "evaluate.train_subset"),
    ("report.targets=[regime,soup_curve]", "report.targets[1]"),
    ("report.targets=[]", "report.targets"),
])
def test_bad_per_run_and_report_options_name_their_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")) as err:
        load_config([TINY], [override])
    assert "command line" in str(err.value)


@pytest.mark.parametrize("override, key, what", [
    ("runs.token.train_size=59500", "runs.token.train_size", "exceed the 60000 training images"),
    ("runs.token.train_size=32", "runs.token.train_size", "fewer than train.batch_size=64"),
])
def test_a_runs_training_set_is_checked_before_any_job(override, key, what):
    cfg = load_config([TINY], [override])  # valid value by value: only the whole config says it cannot work
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")) as err:
        preflight(cfg, "tiny.yaml")
    assert what in str(err.value) and "tiny.yaml" in str(err.value)
    preflight(load_config([TINY], ["runs.token.train_size=59000"]), "tiny.yaml")  # 59000 + 1000 = 60000 fits


def test_a_runs_train_size_and_epochs_reach_its_stages_as_data_and_train_keys():
    cfg = load_config([TINY], ["runs.token.train_size=300", "runs.token.epochs=2"])
    s = stages.config_slice(cfg, "train", "token-s0")
    assert (s["data"].train_size, s["train"].epochs) == (300, 2)
    assert s["run"].train_size is None and s["run"].epochs is None  # one value, one place
    for stage in ("evaluate", "soups", "robustness"):
        assert stages.config_slice(cfg, stage, "token-s0")["data"].train_size == 300
    other = stages.config_slice(cfg, "train", "nominal-s0")  # the run without its own keeps the experiment's
    assert (other["data"].train_size, other["train"].epochs) == (512, 1)
    # a run of 300 images for 2 epochs is the run the experiment-wide keys would make: same digests
    same = load_config([TINY], ["data.train_size=300", "train.epochs=2"])
    for stage in ("train", "evaluate", "soups"):
        assert stages.config_digest(cfg, stage, "token-s0") == stages.config_digest(same, stage, "token-s0")
    assert stages.config_digest(cfg, "train", "nominal-s0") != stages.config_digest(same, "train", "nominal-s0")
    # measuring the training accuracy re-evaluates (its digest moves), and retrains nothing
    measured = load_config([TINY], ["runs.token.train_size=300", "runs.token.epochs=2", "evaluate.train_subset=100"])
    assert stages.config_digest(measured, "evaluate", "token-s0") != stages.config_digest(cfg, "evaluate", "token-s0")
    for stage in ("train", "soups", "robustness", "shift"):
        assert stages.config_digest(measured, stage, "token-s0") == stages.config_digest(cfg, stage, "token-s0")


def test_smaller_training_sets_are_nested_prefixes_of_one_order_disjoint_from_validation(prepared):
    labels = load_split(prepared, "train").labels
    order = balanced_order(labels)
    sets = {}
    for n in (250, 500, 2500, 5000):
        split = load_split(prepared, "train", n)
        assert np.bincount(split.labels, minlength=10).tolist() == [n // 10] * 10  # class-balanced
        sets[n] = set(np.sort(order[:n]).tolist())
    assert sets[250] < sets[500] < sets[2500] < sets[5000]
    # the validation split is the END of the same order: no training set of any size touches it
    val = load_training_split(prepared, "validation", 0, 59000, 1000)
    val_idx = set(order[len(labels) - 1000:].tolist())
    assert len(val) == 1000 and not (val_idx & set(order[:59000].tolist()))


# ---- accuracy on the run's own training images ------------------------------------------------

def test_evaluate_measures_clean_accuracy_on_the_runs_own_training_images(tiny_cfg, tmp_path):
    import torch

    from advsoup.robust.evaluate import clean_accuracy, load_run, train_images_measured

    assert [train_images_measured(300, k) for k in (100, 0, 1000)] == [100, 300, 300]
    assert train_images_measured(0, 100) == 100 and train_images_measured(0, 0) == 0  # 0 = whole split
    over = [f"results_dir={tmp_path}/results", f"data.prepared_dir={tiny_cfg.data.prepared_dir}",
            "launcher.executor=inline", f"launcher.log_dir={tmp_path}/logs", "runs.nominal.train_size=256",
            "runs.nominal.epochs=2", "evaluate.autoattack.enabled=false", "evaluate.robust_subset=20"]
    cfg = load_config([TINY], over)
    stages.run(cfg, "train", "nominal-s0")
    paths = Paths(cfg)
    stages.run(cfg, "evaluate", "nominal-s0")
    plain = json.loads(paths.eval_file("nominal-s0").read_text())
    assert "train_accuracy" not in plain  # not asked for: not measured (the old behaviour)
    assert (plain["train_images"], plain["epochs"]) == (256, 2)  # what the checkpoint was trained on and for

    measured = load_config([TINY], over + ["evaluate.train_subset=100"])
    assert stages.run(measured, "evaluate", "nominal-s0") is None
    rec = json.loads(paths.eval_file("nominal-s0").read_text())
    got = rec["train_accuracy"]
    assert got["images"] == 100
    model = load_run(paths.run_dir("nominal-s0"), cfg.model, torch.device("cpu"))
    x, y = load_split(Path(tiny_cfg.data.prepared_dir) / "fashion_mnist", "train", 100).tensors()
    assert got["clean_mode"]["clean_acc"] == round(clean_accuracy(model, x, y, 0.0, 50, torch.device("cpu")), 5)
    assert got["robust_mode"]["clean_acc"] == got["clean_mode"]["clean_acc"]  # no adapter: one network
    assert rec["provenance"]["config_digest"] == stages.config_digest(measured, "evaluate", "nominal-s0")
    assert rec["clean_mode"] == plain["clean_mode"]  # the test numbers do not move


# ---- the report from synthetic eval files -------------------------------------------------------

def _eval(run, training, adapter, seed, n, epochs, test, train=None):
    rec = {"run": f"{run}-s{seed}", "training": training, "adapter": adapter, "family": "vit", "seed": seed,
           "train_images": n, "epochs": epochs, "clean_mode": {"w": 0.0, "clean_acc": test, "robust_acc": 0.0},
           "robust_mode": {"w": 1.0, "clean_acc": test, "robust_acc": 0.1}}
    if train is not None:
        rec["train_accuracy"] = {"images": min(n, 1000), "clean_mode": {"w": 0.0, "clean_acc": train}}
    return rec


def _synthetic(tmp_path):
    """Nominal and token at 2500 and 20000 images; gains +2, +1, +3 points at 2500, -1, 0, -2 at 20000."""
    recs = []
    for seed, (g_small, g_big) in enumerate([(0.02, -0.01), (0.01, 0.0), (0.03, -0.02)]):
        recs += [_eval("nominal_n2500", "nominal", "none", seed, 2500, 32, 0.80 + seed / 100, 0.95),
                 _eval("token_n2500", "cotrain", "token", seed, 2500, 32, 0.80 + seed / 100 + g_small, 0.90),
                 _eval("nominal_n20000", "nominal", "none", seed, 20000, 4, 0.86, 0.88 + seed / 100),
                 _eval("token_n20000", "cotrain", "token", seed, 20000, 4, 0.86 + g_big, 0.87)]
    files = []
    for rec in recs:
        f = tmp_path / "metrics" / rec["run"] / "eval.json"
        f.parent.mkdir(parents=True)
        f.write_text(json.dumps(rec))
        files.append(f)
    return files


def test_the_regime_table_pairs_seeds_and_gives_gain_and_gap(tmp_path):
    table = regime_table(run_rows([json.loads(f.read_text()) for f in _synthetic(tmp_path)]))
    assert list(table["train_images"]) == [2500, 20000] and set(table["variant"]) == {"cotrain/token"}
    small, big = table.iloc[0], table.iloc[1]
    assert small["seeds"] == 3 and small["samples_seen"] == 80000
    assert math.isclose(small["gain_points_mean"], 2.0) and math.isclose(small["gain_points_std"], 1.0)
    assert math.isclose(big["gain_points_mean"], -1.0) and math.isclose(big["gain_points_std"], 1.0)
    # nominal gap: train 95% - test 80/81/82% = 15/14/13 points; at 20k: 88/89/90% - 86% = 2/3/4 points
    assert math.isclose(small["nominal_gap_points_mean"], 14.0) and math.isclose(small["nominal_gap_points_std"], 1.0)
    assert math.isclose(big["nominal_gap_points_mean"], 3.0)
    assert math.isclose(small["nominal_clean_acc_mean"], 0.81) and math.isclose(small["clean_acc_mean"], 0.83)
    # the co-trained model's own gap at 2500: 90% - 82/82/85% -> 8, 8, 5 points
    assert math.isclose(small["gap_points_mean"], 7.0)


def test_a_size_run_with_the_long_schedule_only_lies_on_the_long_line():
    """regime.yaml's grid: long (~160k samples) and short (40k) at 2.5k/5k/20k, long only at 59k (3 epochs).
    The 59k point belongs to the long line; ranking epochs within each size put it on the short one."""
    grid = [(2500, 64), (2500, 16), (5000, 32), (5000, 8), (20000, 8), (20000, 2), (59000, 3)]
    table = pd.DataFrame([{"variant": "cotrain/token", "train_images": n, "epochs": e, "samples_seen": n * e}
                          for n, e in grid])
    line = dict(zip(zip(table["train_images"], table["epochs"]), schedules(table)))
    assert line[(59000, 3)] == line[(2500, 64)] == "64/32/8/3 epochs at 2.5k/5k/20k/59k"
    assert line[(2500, 16)] == line[(20000, 2)] == "16/8/2 epochs at 2.5k/5k/20k"


def test_the_regime_report_writes_figure_table_statements_and_page_section(tmp_path):
    from advsoup.report.page import write_page

    out = tmp_path / "report"
    summary = regime_report("synthetic", _synthetic(tmp_path), out / "summaries" / "regime.json", out / "tables" / "regime.csv",
                            out / "figures" / "regime.png")
    assert (out / "figures" / "regime.png").read_bytes()[:4] == b"\x89PNG"
    assert pd.read_csv(out / "tables" / "regime.csv")["gain_points_mean"].tolist() == [2.0, -1.0]
    first, second = summary["statements"]
    assert first.startswith("At 2,500 training images (32 epochs, 80,000 samples seen) the ViT co-trained with the "
                            "class-token adapter (clean mode) is 2.00 ± 1.00 points above the nominal model: "
                            "83.00% vs 81.00%")
    assert "nominal model's train-test gap is 14.00 ± 1.00 points" in first
    assert "1.00 ± 1.00 points below the nominal model (within one standard deviation of zero): 85.00%" in second
    # one line per variant and schedule: the gain at each size along it
    assert summary["trend"] == ["The ViT co-trained with the class-token adapter (clean mode), 32/4 epochs at 2.5k/20k "
                                "(80,000 samples seen): gain +2.00 ± 1.00 at 2.5k, -1.00 ± 1.00 at 20k."]
    # the results page shows it without the full report (no summary.json: an experiment with only this report)
    cfg = load_config([TINY], [f"results_dir={tmp_path}/results", "experiment=synthetic"])
    paths = Paths(cfg)
    paths.report.parent.mkdir(parents=True)
    out.rename(paths.report)
    page = write_page(paths, tmp_path / "docs" / "synthetic.md").read_text()
    assert first in page and "![Gain and train-test gap" in page and "regime.png" in page
    assert "### What the runs show about the claim" in page and "in 1 of 2 regimes" in page
    assert "| cotrain/token | 2500 | 32 |" in page


# ---- the experiment file and its DAG ----------------------------------------------------------

def test_the_regime_experiment_is_valid_and_asks_only_for_its_report():
    cfg = load_config([REGIME])
    preflight(cfg, str(REGIME))
    assert cfg.report.targets == ["regime"] and cfg.evaluate.train_subset is not None
    sizes = {r.train_size for r in cfg.runs.values()}
    assert len(sizes) >= 3 and all(r.train_size for r in cfg.runs.values())
    for name, run in cfg.runs.items():  # every co-trained run has its nominal twin (same size, epochs, seeds)
        if run.training == "cotrain":
            assert any(o.training == "nominal" and o.family == run.family and o.train_size == run.train_size
                       and o.epochs == run.epochs and o.seeds == run.seeds for o in cfg.runs.values()), name


def _regime_tiny(tmp_path) -> Path:
    """tiny.yaml as a regime experiment: two sizes, one seed, one epoch."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg.update(experiment="regime_tiny", report={"targets": ["regime"]})
    cfg["evaluate"].update(train_subset=200, robust_subset=20, autoattack={"enabled": False})
    cfg["runs"] = {f"{kind}_n{n}": {"training": t, "adapter": a, "train_size": n, "epochs": 1, "seeds": [0]}
                   for n in (256, 512) for kind, t, a in (("nominal", "nominal", "none"), ("token", "cotrain", "token"))}
    path = tmp_path / "regime_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_regime_dag_runs_train_evaluate_regime_and_the_page_only(workdir, tmp_path):
    from test_workflow import jobs_of, snakemake

    exp = _regime_tiny(tmp_path)
    dry = snakemake(workdir, "-n", "--configfile", str(exp)).stdout
    assert jobs_of(dry) == {"train", "evaluate", "regime", "results_page", "all"}, dry[-1500:]
    # DVC's experiment stage (the target `metrics`) makes the metric files the report reads, nothing more
    dry = snakemake(workdir, "-n", "metrics", "--configfile", str(exp)).stdout
    assert jobs_of(dry) == {"train", "evaluate", "metrics"}, dry[-1500:]
    snakemake(workdir, "--configfile", str(exp))
    root = workdir / "results" / "regime_tiny"
    table = pd.read_csv(root / "report" / "tables" / "regime.csv")
    assert table["train_images"].tolist() == [256, 512] and (table["seeds"] == 1).all()
    summary = json.loads((root / "report" / "summaries" / "regime.json").read_text())
    assert summary["provenance"]["stage"] == "regime"
    assert list(summary["regimes"]) == ["cotrain/token n256 e1", "cotrain/token n512 e1"]
    for n, row in zip((256, 512), summary["regimes"].values()):
        ev = {k: json.loads((root / "metrics" / f"{k}_n{n}-s0" / "eval.json").read_text()) for k in ("nominal", "token")}
        assert ev["nominal"]["train_accuracy"]["images"] == 200
        gain = 100 * (ev["token"]["clean_mode"]["clean_acc"] - ev["nominal"]["clean_mode"]["clean_acc"])
        assert math.isclose(row["gain_points_mean"], round(gain, 3), abs_tol=1e-6)
    page = (workdir / "docs" / "results" / "regime_tiny.md").read_text()
    assert summary["statements"][0] in page
    assert not (root / "metrics" / "token_n256-s0" / "soups.json").exists()
    # nothing left to do: a second invocation runs no job
    assert "Nothing to be done" in snakemake(workdir, "-n", "--configfile", str(exp)).stdout
    # `advsoup report` (DVC's figures stage) runs the same report stages: the same table, the page again
    table_bytes = (root / "report" / "tables" / "regime.csv").read_bytes()
    shutil.rmtree(root / "report")
    (workdir / "docs" / "results" / "regime_tiny.md").unlink()
    proc = subprocess.run([str(Path(sys.executable).parent / "advsoup"), "report", "--config", str(exp)], cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.findall(r"advsoup report: (\w+)", proc.stdout) == ["regime", "results_page"]
    assert (root / "report" / "tables" / "regime.csv").read_bytes() == table_bytes
    assert summary["statements"][0] in (workdir / "docs" / "results" / "regime_tiny.md").read_text()


@pytest.fixture
def workdir(tmp_path, prepared):
    target = tmp_path / "work" / "data" / "prepared" / "fashion_mnist"
    shutil.copytree(prepared, target)
    return tmp_path / "work"


def test_the_verdict_says_where_the_gain_clears_the_seeds_spread_and_whether_it_follows_overfitting():
    from advsoup.report.regime import setting_differences, verdict

    rows = [("vit:cotrain/token", n, e, g, s, gap) for n, e, g, s, gap in
            ((2500, 64, 0.5, 1.0, 20.0), (5000, 32, -0.2, 0.8, 12.0), (20000, 8, -2.0, 0.5, 3.0))]
    table = pd.DataFrame([{"variant": v, "train_images": n, "epochs": e, "samples_seen": n * e, "seeds": 3,
                           "gain_points_mean": g, "gain_points_std": s, "nominal_gap_points_mean": gap}
                          for v, n, e, g, s, gap in rows])
    first, weak, trend = verdict(table)
    assert first.startswith("No regime of the 3 shows co-training above the nominal model by more than one")
    assert "not reproduced here. Below it by more than one: " in first and "20,000 images x 8 epochs (-2.00 ± 0.50)" in first
    assert "over 3 seeds is a weak test" in weak
    # gains 0.5, -0.2, -2.0 against gaps 20, 12, 3: the same order
    assert "the gain rises with the nominal model's train-test gap (Spearman rank correlation +1.00" in trend
    table.loc[0, "gain_points_mean"] = 1.5
    assert verdict(table)[0].startswith("Co-training lies above the nominal model by more than one standard deviation"
                                        " of the paired differences in 1 of 3 regimes: the ViT co-trained with the "
                                        "class-token adapter (clean mode) at 2,500 images x 64 epochs (+1.50 ± 1.00)")
    cfg = load_config([REGIME])
    lines = setting_differences(cfg.model, cfg.data.name, cfg.data.augment, cfg.train, table)
    assert lines[0].startswith("model: here timm ViT (embed 64, depth 4, patch 7) on 28 px images with 1 channel(s)")
    assert "data: here fashion_mnist: 2,500-20,000 training images, 10 classes" in lines[1]
    assert "augmentation: here none; the paper RandAugment (timm)." in lines
