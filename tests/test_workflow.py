"""The Snakemake DAG end to end on the tiny experiment, as `make demo` runs it (local profile)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from advsoup.config import REPO_ROOT

BIN = Path(sys.executable).parent
TINY = REPO_ROOT / "params" / "experiments" / "tiny.yaml"


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
           "--workflow-profile", str(REPO_ROOT / "workflow" / "profiles" / "local"), *args]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def workdir(tmp_path, prepared):
    # Reuse the session's prepared data so the DAG skips `prepare`, as after `dvc pull`.
    target = tmp_path / "data" / "prepared" / "fashion_mnist"
    shutil.copytree(prepared, target)
    return tmp_path


def test_dry_run_lists_the_dag(workdir):
    out = snakemake(workdir, "-n", "--configfile", str(TINY)).stdout
    for rule, count in (("train", 2), ("evaluate", 2), ("soups", 1), ("aggregate", 1), ("figures", 1)):
        assert any(line.split() == [rule, str(count)] for line in out.splitlines()), (rule, out[-1500:])


def test_bad_config_fails_before_any_job(workdir):
    proc = snakemake(workdir, "--configfile", str(TINY), "--config", "train={attack: {eps: -1}}", check=False)
    assert proc.returncode != 0
    assert "train.attack.eps" in proc.stdout + proc.stderr
    assert not (workdir / "results").exists()


def jobs_of(dry_run: str) -> set:
    """The rule names of a dry run's job table."""
    return {line.split()[0] for line in dry_run.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()
            and line.split()[0] not in ("total", "jobid:")}


def advsoup(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.run([str(BIN / "advsoup"), *args], capture_output=True, text=True, env=env, cwd=workdir,
                          timeout=300)


def test_the_whole_dag_on_the_tiny_experiment(workdir):
    # In parts first, as `make study BATCH=i/n` runs a study longer than a session: each batch makes only its
    # share of the per-run metric files, and the run without a batch then has only the report left to make.
    root = workdir / "results" / "tiny"
    metric_files = lambda: {p.relative_to(root) for p in (root / "metrics").rglob("*.json")}
    snakemake(workdir, "metrics", "--batch", "metrics=1/2", "--configfile", str(TINY))
    first = metric_files()
    snakemake(workdir, "metrics", "--batch", "metrics=2/2", "--configfile", str(TINY))
    assert set() < first < metric_files() and not (root / "report").exists()
    assert jobs_of(snakemake(workdir, "-n", "--configfile", str(TINY)).stdout) == {
        "aggregate", "figures", "adapters", "shift_table", "shift_figure", "results_page", "all"}
    snakemake(workdir, "--configfile", str(TINY))
    summary = json.loads((root / "report" / "summaries" / "summary.json").read_text())
    assert summary["experiment"] == "tiny"
    assert summary["attack"] == {"name": "PGD-3", "norm": "linf", "eps": 0.1, "steps": 3, "step_size": 0.05,
                                 "restarts": 1, "random_start": True, "subset": 100}
    assert set(summary["runs"]) == {"nominal-s0", "token-s0"}
    token = summary["runs"]["token-s0"]
    assert token["domain_parameters"] == 64
    assert sorted(token["soup"]) == ["0.00", "0.50", "1.00"]
    for r in summary["runs"].values():
        for mode in ("clean_mode", "robust_mode"):
            assert 0.1 < r[mode]["clean_acc"] <= 1.0  # above chance after one epoch
            assert 0.0 <= r[mode]["robust_acc"] <= r[mode]["clean_acc"] + 0.05
    # the soup's end points are the two modes (same attack seed, same subset)
    assert token["soup"]["0.00"] == {k: token["clean_mode"][k] for k in ("clean_acc", "robust_acc")}
    assert token["soup"]["1.00"] == {k: token["robust_mode"][k] for k in ("clean_acc", "robust_acc")}
    runs = pd.read_csv(root / "report" / "tables" / "runs.csv")
    assert list(runs["run"]) == ["nominal-s0", "token-s0"]
    for png in ("soup_curve.png", "adapters.png", "shift.png"):
        png = root / "report" / "figures" / png
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    run_dir = root / "runs" / "token-s0"
    assert {"model.safetensors", "model.json", "config.yaml"} <= {p.name for p in run_dir.iterdir()}
    history = pd.read_csv(root / "metrics" / "token-s0" / "train_log.csv")
    assert list(history["epoch"]) == [1] and history["train_adv_acc"].iloc[0] > 0
    # every metric says what it was computed from: the checkpoint's sha256 and the config slice's digest
    record = json.loads((root / "metrics" / "token-s0" / "checkpoint.json").read_text())
    assert record["weights_sha256"] == json.loads((run_dir / "model.json").read_text())["weights_sha256"]
    for name in ("eval.json", "soups.json", "robustness.json", "shift.json"):
        prov = json.loads((root / "metrics" / "token-s0" / name).read_text())["provenance"]
        assert prov["checkpoints"] == {"train": record["weights_sha256"]}, name
        assert prov["upstream"]["train"] == record["provenance"]["config_digest"], name
    # nothing left to do; an evaluation-only edit reruns evaluation, not training
    assert "Nothing to be done" in snakemake(workdir, "-n", "--configfile", str(TINY)).stdout
    jobs = jobs_of(snakemake(workdir, "-n", "--configfile", str(TINY), "--config",
                             "evaluate={robust_subset: 50}").stdout)
    assert {"evaluate", "robustness", "soups"} <= jobs and "train" not in jobs
    # A data stage that reruns reruns what reads its output in the same invocation. With ancient() data
    # inputs Snakemake planned the data stage alone (a data.* edit: prepare only) and left stale metrics.
    jobs = jobs_of(snakemake(workdir, "-n", "--configfile", str(TINY), "--config", "shift={sketch: false}").stdout)
    assert {"shift_suite", "shift", "shift_table"} <= jobs and not jobs & {"train", "shift_hard"}, jobs
    jobs = jobs_of(snakemake(workdir, "-n", "--configfile", str(TINY), "--forcerun", "prepare").stdout)
    assert {"prepare", "train", "evaluate", "soups", "robustness", "shift", "aggregate"} <= jobs, jobs

    # A fresh clone has no Snakemake metadata: the recorded provenance alone decides. A soup-grid edit
    # reruns the soups and the shift sweeps (both measure every soup weight) and the report, nothing else.
    shutil.rmtree(workdir / ".snakemake")
    assert "Nothing to be done" in snakemake(workdir, "-n", "--configfile", str(TINY)).stdout
    jobs = jobs_of(snakemake(workdir, "-n", "--configfile", str(TINY), "--config",
                             "evaluate={soup_weights: [0.0, 1.0]}").stdout)
    assert {"soups", "shift", "aggregate", "figures"} <= jobs and not jobs & {"train", "evaluate", "robustness"}

    # A training edit retrains, and every metric of the retrained runs is recomputed in the same run.
    before = {r: json.loads((root / "metrics" / r / "eval.json").read_text()) for r in ("nominal-s0", "token-s0")}
    out = snakemake(workdir, "--configfile", str(TINY), "--config", "train={epochs: 2}").stdout
    record = json.loads((root / "metrics" / "token-s0" / "checkpoint.json").read_text())
    for name in ("eval.json", "soups.json", "robustness.json", "shift.json"):
        prov = json.loads((root / "metrics" / "token-s0" / name).read_text())["provenance"]
        assert prov["checkpoints"] == {"train": record["weights_sha256"]}, (name, out[-2000:])
    after = json.loads((root / "report" / "summaries" / "summary.json").read_text())["runs"]
    assert all(after[r]["clean_mode"] != before[r]["clean_mode"] for r in before)
    assert "Nothing to be done" in snakemake(workdir, "-n", "--configfile", str(TINY), "--config",
                                             "train={epochs: 2}").stdout


def test_two_experiments_keep_their_own_reports_and_a_stale_metric_is_refused(tmp_path):
    """Everything an experiment makes lives under its name; aggregation refuses another checkpoint's metric."""
    from advsoup import provenance
    from advsoup.config import Paths, load_config
    from advsoup.stages import run as run_stage

    def fake_run(exp: str, acc: float) -> Paths:
        cfg = load_config([TINY], [f"experiment={exp}", f"results_dir={tmp_path}/results"])
        paths = Paths(cfg)
        for r in ("nominal-s0", "token-s0"):
            rec = provenance.record(cfg, "train", r)
            paths.metrics_dir(r).mkdir(parents=True)
            paths.checkpoint_record(r).write_text(json.dumps({"weights_sha256": f"sha-{r}", "provenance": rec}))
            paths.history_file(r).write_text("epoch,train_loss,train_clean_acc,train_adv_acc\n1,1.0,0.5,0.2\n")
            token = r.startswith("token")
            mode = lambda w: {"clean_acc": acc, "robust_acc": acc / 2, "w": w}  # noqa: E731
            metrics = {"run": r, "seed": 0, "training": "cotrain" if token else "nominal", "family": "vit",
                       "adapter": "token" if token else "none", "domain_parameters": 64 if token else 0,
                       "seeds": [0], "test_images": 300, "clean_mode": mode(0.0), "robust_mode": mode(1.0),
                       "attack": {"name": "PGD-3", "norm": "linf", "eps": 0.1, "steps": 3, "step_size": 0.05,
                                  "restarts": 1, "random_start": True, "subset": 100}}
            files = [("evaluate", paths.eval_file(r), metrics), ("robustness", paths.robustness_file(r),
                                                                   {"run": r, "status": "pass", "failed": [],
                                                                    "skipped": [], "n_passed": 1, "n_checks": 1})]
            if token:
                soup = {**metrics, "soup": [{"w": w, "clean_acc": acc, "robust_acc": acc / 2}
                                            for w in (0.0, 0.5, 1.0)]}
                files.append(("soups", paths.soup_file(r), soup))
            for stage, path, data in files:
                prov = provenance.record(cfg, stage, r, {"train": f"sha-{r}"})
                path.write_text(json.dumps({**data, "provenance": prov}))
        run_stage(cfg, "aggregate")
        run_stage(cfg, "figures")
        return paths

    first, second = fake_run("first", 0.8), fake_run("second", 0.6)
    for paths, acc in ((first, 0.8), (second, 0.6)):
        summary = json.loads(paths.summary.read_text())
        assert summary["runs"]["token-s0"]["clean_mode"]["clean_acc"] == acc
        assert (paths.figures / "soup_curve.png").stat().st_size > 20_000
        where = advsoup(tmp_path, "where", "--config", str(TINY), f"experiment={paths.cfg.experiment}",
                        f"results_dir={tmp_path}/results").stdout
        assert f"{paths.report}/" in where and f"clean mode {100 * acc:5.1f}% clean" in where
        # the listing names what this experiment wrote, not every file some experiment could write
        assert "soup_curve.png" in where and "shift" not in where.split("metrics")[0], where

    # a metric file that claims another checkpoint than the run's current one is refused, naming both
    evals = json.loads(first.eval_file("token-s0").read_text())
    evals["provenance"]["checkpoints"]["train"] = "sha-of-an-older-model"
    first.eval_file("token-s0").write_text(json.dumps(evals))
    proc = advsoup(tmp_path, "aggregate", "--config", str(TINY), "experiment=first", f"results_dir={tmp_path}/results")
    assert proc.returncode == 1
    assert f"{first.eval_file('token-s0')} was computed from checkpoint sha-of-an-ol" in proc.stderr
    assert "run token-s0" in proc.stderr and "sha-token-s0" in proc.stderr
