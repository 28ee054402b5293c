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


def test_the_whole_dag_on_the_tiny_experiment(workdir):
    snakemake(workdir, "--configfile", str(TINY))
    summary = json.loads((workdir / "results" / "summary.json").read_text())
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
    runs = pd.read_csv(workdir / "results" / "tables" / "runs.csv")
    assert list(runs["run"]) == ["nominal-s0", "token-s0"]
    png = workdir / "figures" / "soup_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    run_dir = workdir / "results" / "runs" / "tiny" / "token-s0"
    assert {"model.safetensors", "model.json", "config.yaml"} <= {p.name for p in run_dir.iterdir()}
    history = pd.read_csv(workdir / "results" / "metrics" / "tiny" / "token-s0" / "train_log.csv")
    assert list(history["epoch"]) == [1] and history["train_adv_acc"].iloc[0] > 0
    # nothing left to do; an evaluation-only edit reruns evaluation, not training
    assert "Nothing to be done" in snakemake(workdir, "-n", "--configfile", str(TINY)).stdout
    out = snakemake(workdir, "-n", "--configfile", str(TINY), "--config", "evaluate={robust_subset: 50}").stdout
    jobs = [line.split()[0] for line in out.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()]
    assert "evaluate" in jobs and "train" not in jobs
