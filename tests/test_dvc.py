"""DVC on a throw-away copy of the repository: two commits of the tiny experiment, their diffs,
and a push/pull round trip into a fresh clone.

The copy holds the files DVC and Snakemake read (dvc.yaml, .dvc/, params/, Snakefile,
workflow/, src/) as the working tree has them now, and its jobs import advsoup from its own
src/. The pipeline runs once in full (~1 min) and once more for a param edit (evaluation only).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import pandas as pd
import pytest
import yaml

from advsoup.config import REPO_ROOT

BIN = Path(sys.executable).parent
TIMEOUT = 1800  # s per command: a full run takes ~1 min on an idle 2-core machine, far longer on a busy one
COPIED = ["dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvc/plots", ".dvcignore", ".gitignore", "Snakefile",
          "workflow", "params", "src"]
EXP = "tiny"
SNAKEMAKE = ["snakemake", "metrics", "--workflow-profile", "workflow/profiles/local", "--configfile",
             f"params/experiments/{EXP}.yaml"]
# What DVC versions: cached (data, checkpoints) and in git (metrics, tables, figures).
VERSIONED = ["data/prepared/fashion_mnist", f"data/shifts/{EXP}", f"results/runs/{EXP}", f"results/metrics/{EXP}",
             "results/tables", "results/summary.json", "figures/soup_curve.png"]


def sh(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    """Run cmd in cwd; when cwd is a repository, its own src/ provides advsoup.

    On a timeout the whole process group goes (dvc -> snakemake -> jobs), not just cmd.
    """
    env = {**env, "PYTHONPATH": str(cwd / "src")} if (cwd / "src" / "advsoup").is_dir() else env
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as p:
        try:
            out, err = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            raise
    proc = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def digests(root: Path) -> dict[str, str]:
    """sha256 of every versioned file under root."""
    out = {}
    for entry in VERSIONED:
        path = root / entry
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def flat(obj, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1}: how `dvc metrics diff` names nested numbers."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in flat(val, f"{prefix}{key}.").items()}
    return {prefix[:-1]: obj}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("home")  # the default remote ~/dvc-remote/advsoup lands here
    env = {k: v for k, v in os.environ.items() if k != "ADVSOUP_OVERRIDES"}
    env.update(PATH=f"{BIN}:{env['PATH']}", HOME=str(home), MPLCONFIGDIR=matplotlib.get_cachedir(),
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org")
    return env


@pytest.fixture(scope="module")
def history(tmp_path_factory, env) -> SimpleNamespace:
    """Repo A: commit 1 = the tiny experiment, commit 2 = the same with one more soup weight (0.25)."""
    repo = tmp_path_factory.mktemp("a") / "advsoup"
    repo.mkdir()
    for name in COPIED:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    pipeline = repo / "params" / "pipeline.yaml"
    pipeline.write_text(re.sub(r"(?m)^exp: \w+$", f"exp: {EXP}", pipeline.read_text()))
    assert yaml.safe_load(pipeline.read_text())["exp"] == EXP
    sh(["git", "init", "-q"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "code"], repo, env)

    first = sh(["dvc", "repro"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "tiny"], repo, env)
    weights = {p: p.stat().st_mtime_ns for p in (repo / "results" / "runs" / EXP).glob("*/model.safetensors")}

    exp_file = repo / "params" / "experiments" / f"{EXP}.yaml"
    text = exp_file.read_text()
    assert text.count("soup_weights: [0.0, 0.5, 1.0]") == 1
    exp_file.write_text(text.replace("soup_weights: [0.0, 0.5, 1.0]", "soup_weights: [0.0, 0.25, 0.5, 1.0]"))
    second = sh(["dvc", "repro"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "soup weight 0.25"], repo, env)
    return SimpleNamespace(repo=repo, first=first.stdout + first.stderr, second=second.stdout + second.stderr,
                           weights=weights)


def git_show(repo: Path, rev: str, path: str, env: dict) -> str:
    return sh(["git", "show", f"{rev}:{path}"], repo, env).stdout


def test_dag_runs_data_then_experiment_then_figures(history, env):
    dot = sh(["dvc", "dag", "--dot"], history.repo, env).stdout
    edges = set(re.findall(r'"(\w+)" -> "(\w+)"', dot))
    assert edges == {("prepare", "shift_suite"), ("prepare", "experiment"), ("shift_suite", "experiment"),
                     ("experiment", "figures")}, dot


def test_a_param_edit_reruns_the_soups_but_not_training(history):
    for stage in ("prepare", "shift_suite", "experiment", "figures"):
        assert f"Running stage '{stage}'" in history.first
    # Snakemake's job table of the second run: the soup sweep, neither training nor evaluation
    jobs = dict(re.findall(r"(?m)^(\w+)\s+(\d+)$", history.second.split("Job stats:")[1].split("total")[0]))
    assert jobs.get("soups") == "1" and not {"train", "evaluate"} & set(jobs), history.second[-3000:]
    assert {p.parent.name for p in history.weights} >= {"nominal-s0", "token-s0"}
    assert all(p.stat().st_mtime_ns == t for p, t in history.weights.items()), "a checkpoint was rewritten"


def test_metrics_and_params_diff_show_the_change(history, env):
    params = json.loads(sh(["dvc", "params", "diff", "HEAD~1", "--json"], history.repo, env).stdout)
    assert params == {f"params/experiments/{EXP}.yaml": {
        "evaluate.soup_weights": {"old": [0.0, 0.5, 1.0], "new": [0.0, 0.25, 0.5, 1.0]}}}

    out = json.loads(sh(["dvc", "metrics", "diff", "HEAD~1", "--json"], history.repo, env).stdout)
    diff = out["results/summary.json"]
    # The new soup weight's accuracies appear; the other weights keep theirs (same attack seed).
    for acc in ("clean_acc", "robust_acc"):
        assert diff[f"runs.token-s0.soup.0.25.{acc}"]["old"] is None
    old = flat(json.loads(git_show(history.repo, "HEAD~1", "results/summary.json", env)))
    new = flat(json.loads(git_show(history.repo, "HEAD", "results/summary.json", env)))
    changed = {k for k in new if isinstance(new[k], (int, float)) and not isinstance(new[k], bool)
               and old.get(k) != new[k]}
    assert set(diff) == changed, "dvc metrics diff is not the difference of the two committed summaries"
    for k in changed:
        assert diff[k]["old"] == old.get(k) and diff[k]["new"] == new[k], k
    table = sh(["dvc", "metrics", "diff", "HEAD~1"], history.repo, env).stdout
    assert "results/summary.json" in table and "runs.token-s0.soup.0.25.robust_acc" in table


def _specs(html: str) -> dict[str, dict]:
    """The Vega-Lite specs embedded in the HTML page of `dvc plots`, by title."""
    decoder, specs = json.JSONDecoder(), {}
    for m in re.finditer(r"var spec = ", html):
        spec, _ = decoder.raw_decode(html, m.end())
        specs[spec["title"]] = spec
    return specs


def test_plots_diff_draws_both_commits(history, env, tmp_path):
    sh(["dvc", "plots", "diff", "HEAD~1", "HEAD", "-o", str(tmp_path / "plots")], history.repo, env)
    specs = _specs((tmp_path / "plots" / "index.html").read_text())
    soup = next(s for t, s in specs.items() if t.startswith("Soup curve"))
    for rev in ("HEAD~1", "HEAD"):
        drawn = {(r["run"], float(r["w"]), float(r["robust_acc"]), float(r["clean_acc"]))
                 for r in soup["data"]["values"] if r["rev"] == rev}
        table = pd.read_csv(io.StringIO(git_show(history.repo, rev, "results/tables/soups.csv", env)))
        assert drawn == {(r.run, r.w, r.robust_acc, r.clean_acc) for r in table.itertuples()}, rev
    assert soup["encoding"]["strokeDash"]["field"] == "rev" and soup["encoding"]["color"]["field"] == "run"
    for title in ("Training loss", "Training accuracy on clean images"):
        drawn = {(r["rev"], r["run"]) for r in specs[title]["data"]["values"]}
        assert drawn == {(rev, run) for rev in ("HEAD~1", "HEAD") for run in ("nominal-s0", "token-s0")}, title
    # the nominal run has no adversarial examples: only the co-trained run is drawn
    assert {r["run"] for r in specs["Training accuracy on adversarial images"]["data"]["values"]
            if r["train_adv_acc"] != ""} == {"token-s0"}
    images = sorted(p.name for p in (tmp_path / "plots" / "static").iterdir())
    assert images == ["HEAD_figures_soup_curve.png", "HEAD~1_figures_soup_curve.png"], images


def test_push_then_pull_restores_everything_and_snakemake_has_nothing_to_do(history, env, tmp_path):
    sh(["dvc", "push"], history.repo, env)
    remote = Path(env["HOME"]) / "dvc-remote" / "advsoup"
    assert remote.is_dir() and any(remote.rglob("*")), "the default remote is not under ~/dvc-remote/advsoup"
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(history.repo), str(clone)], tmp_path, env)

    # Without pulling: figures and tables again, from the metric files in git alone.
    for out in ("results/tables", "results/summary.json", "figures/soup_curve.png"):
        path = clone / out
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out = sh(["dvc", "repro", "--allow-missing", "figures"], clone, env).stdout
    assert "Running stage 'figures'" in out
    assert not any(f"Running stage '{s}'" in out for s in ("prepare", "shift_suite", "experiment")), out
    assert not (clone / "data").exists() and not (clone / "results" / "runs").exists()
    assert sh(["git", "status", "--porcelain"], clone, env).stdout == "", "figures/tables differ from the commit"

    sh(["dvc", "pull"], clone, env)
    assert digests(clone) == digests(history.repo)
    assert "up to date" in sh(["dvc", "status"], clone, env).stdout

    assert "Nothing to be done" in sh(SNAKEMAKE + ["-n"], clone, env).stdout
    # Even with every restored data set and checkpoint newer than what was computed from it ...
    future = time.time() + 3600
    for path in [clone / "data" / "prepared" / "fashion_mnist", clone / "data" / "shifts" / EXP,
                 *(clone / "results" / "runs" / EXP).rglob("*")]:
        os.utime(path, (future, future))
    assert "Nothing to be done" in sh(SNAKEMAKE + ["-n"], clone, env).stdout
    # ... which Snakemake would retrain on without the rules' ancient() inputs.
    for rules in (clone / "workflow" / "rules").glob("*.smk"):
        rules.write_text(re.sub(r"ancient\(([^()]*(?:\([^()]*\))?[^()]*)\)", r"\1", rules.read_text()))
    jobs = sh(SNAKEMAKE + ["-n"], clone, env).stdout
    assert re.search(r"(?m)^train\s+2$", jobs), jobs[-2000:]
