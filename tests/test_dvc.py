"""DVC on throw-away copies of the repository.

A copy holds the files DVC and Snakemake read (dvc.yaml, .dvc/, params/, Snakefile,
workflow/, src/) as the working tree has them now, and its jobs import advsoup from its own
src/. Fast: the stage graph, and a push/pull round trip of the data stages. Slow: two commits
of the tiny experiment (the whole pipeline once, then the soup sweep again for a param edit),
their diffs, and a push/pull round trip of data, checkpoints and metrics into a fresh clone.
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

from advsoup.report.aggregate import training_table
from advsoup.config import REPO_ROOT

BIN = Path(sys.executable).parent
TIMEOUT = 1800  # s per command: generous, the whole tiny pipeline slows down a lot on a busy machine
COPIED = ["dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvc/plots", ".dvcignore", ".gitignore", "Snakefile",
          "workflow", "params", "src"]
EXP = "tiny"
# What DVC versions: cached (data, checkpoints) and in git (metrics, tables, figures).
VERSIONED = ["data/prepared/fashion_mnist", f"results/{EXP}/runs", f"results/{EXP}/metrics",
             f"results/{EXP}/report/tables", f"results/{EXP}/report/summaries/summary.json",
             f"results/{EXP}/report/figures/soup_curve.png"]
SUMMARY = f"results/{EXP}/report/summaries/summary.json"


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


def make_repo(root: Path, env: dict) -> Path:
    """A git repository holding a copy of the pipeline, set to run the tiny experiment: one commit."""
    repo = root / "advsoup"
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
    return repo


def test_dag_runs_data_then_experiment_then_figures(tmp_path, env):
    dot = sh(["dvc", "dag", "--dot"], make_repo(tmp_path, env), env).stdout
    edges = set(re.findall(r'"(\w+)" -> "(\w+)"', dot))
    assert edges == {("prepare", "experiment"), ("experiment", "figures")}, dot


def test_the_site_file_in_pipeline_yaml_reaches_every_stage(tmp_path, env):
    """params/pipeline.yaml `site:` layers a site file over the experiment file in every stage: a data.source_dir
    set there is the one prepare reads (the error names it), and DVC tracks the file as each stage's params."""
    repo = make_repo(tmp_path, env)
    nowhere = tmp_path / "no-such-dataset"
    (repo / "params" / "my-site.yaml").write_text(f"data: {{source_dir: {nowhere}}}\n")
    pipeline = repo / "params" / "pipeline.yaml"
    pipeline.write_text(re.sub(r"(?m)^site: .*$", "site: params/my-site.yaml", pipeline.read_text()))
    assert yaml.safe_load(pipeline.read_text())["site"] == "params/my-site.yaml"
    proc = sh(["dvc", "repro", "prepare"], repo, env, check=False)
    assert proc.returncode != 0
    assert str(nowhere) in proc.stdout + proc.stderr and "data.source_dir" in proc.stdout + proc.stderr
    status = json.loads(sh(["dvc", "status", "--json"], repo, env).stdout)
    for stage in ("prepare", "experiment", "figures"):
        changed = json.dumps(status[stage])
        assert "params/my-site.yaml" in changed, (stage, changed)


def test_data_round_trip_through_the_default_remote(tmp_path, env):
    """The data stage for real, pushed to ~/dvc-remote/advsoup and pulled into a fresh clone."""
    repo = make_repo(tmp_path, env)
    sh(["dvc", "repro", "prepare"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "data"], repo, env)
    sh(["dvc", "push"], repo, env)
    remote = Path(env["HOME"]) / "dvc-remote" / "advsoup"
    assert remote.is_dir() and any(remote.rglob("*")), "the default remote is not under ~/dvc-remote/advsoup"
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "data").exists()
    sh(["dvc", "pull", "prepare"], clone, env)
    data = [Path("data/prepared/fashion_mnist")]
    files = {root / f.relative_to(repo / root) for root in data for f in (repo / root).rglob("*") if f.is_file()}
    assert {f.name for f in files} >= {"manifest.json", "train_images.npy", "test_labels.npy"}
    for f in files:
        assert (clone / f).read_bytes() == (repo / f).read_bytes(), f
    status = sh(["dvc", "status", "prepare"], clone, env).stdout
    assert "up to date" in status, status


def test_training_table_stacks_every_runs_log(tmp_path):
    """results/tables/training.csv, what the training-curve plots read: one row per run and epoch."""
    logs = {"nominal-s0": "epoch,train_loss,train_clean_acc\n1,2.0,0.3\n2,1.5,0.5\n",
            "token-s0": "epoch,train_loss,train_clean_acc,train_adv_acc\n1,2.2,0.2,0.1\n2,1.7,0.4,0.2\n"}
    for run, text in logs.items():
        (tmp_path / run).mkdir()
        (tmp_path / run / "train_log.csv").write_text(text)
    out = tmp_path / "tables" / "training.csv"
    training_table({run: tmp_path / run / "train_log.csv" for run in logs}, out)
    table = pd.read_csv(out)
    assert list(table.columns) == ["run", "epoch", "train_loss", "train_clean_acc", "train_adv_acc"]
    assert list(zip(table["run"], table["epoch"])) == [("nominal-s0", 1), ("nominal-s0", 2), ("token-s0", 1),
                                                      ("token-s0", 2)]
    assert table["train_adv_acc"].isna().sum() == 2 and table["train_adv_acc"].iloc[3] == 0.2
    with pytest.raises(FileNotFoundError, match="missing-s0.*run the train stage"):
        training_table({"missing-s0": tmp_path / "missing-s0" / "train_log.csv"}, out)


@pytest.fixture(scope="module")
def history(tmp_path_factory, env) -> SimpleNamespace:
    """Repo A: commit 1 = the tiny experiment, commit 2 = the same with one more soup weight (0.25)."""
    repo = make_repo(tmp_path_factory.mktemp("a"), env)
    first = sh(["dvc", "repro"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "tiny"], repo, env)
    weights = {p: p.stat().st_mtime_ns for p in (repo / "results" / EXP / "runs").glob("*/model.safetensors")}

    exp_file = repo / "params" / "experiments" / f"{EXP}.yaml"
    text = exp_file.read_text()
    assert text.count("soup_weights: [0.0, 0.5, 1.0]") == 1
    exp_file.write_text(text.replace("soup_weights: [0.0, 0.5, 1.0]", "soup_weights: [0.0, 0.25, 0.5, 1.0]"))
    second = sh(["dvc", "repro"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "soup weight 0.25"], repo, env)
    return SimpleNamespace(repo=repo, first=first.stdout + first.stderr, second=second.stdout + second.stderr,
                           weights=weights)


def experiment_cmd(repo: Path) -> list[str]:
    """The Snakemake command of DVC's experiment stage, as `dvc repro` runs it."""
    cmd = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["experiment"]["cmd"]
    pipeline = yaml.safe_load((repo / "params" / "pipeline.yaml").read_text())
    for key, value in {**pipeline, "profile": "local", "exp": EXP}.items():  # DVC's vars
        cmd = cmd.replace(f"${{{key}}}", str(value))
    return cmd.split()


def git_show(repo: Path, rev: str, path: str, env: dict) -> str:
    return sh(["git", "show", f"{rev}:{path}"], repo, env).stdout


@pytest.mark.slow
def test_a_param_edit_reruns_the_soups_but_not_training(history):
    for stage in ("prepare", "experiment", "figures"):
        assert f"Running stage '{stage}'" in history.first
    # Snakemake's job table of the second run: the soup sweep, neither training nor evaluation
    jobs = dict(re.findall(r"(?m)^(\w+)\s+(\d+)$", history.second.split("Job stats:")[1].split("total")[0]))
    assert jobs.get("soups") == "1" and not {"train", "evaluate"} & set(jobs), history.second[-3000:]
    assert {p.parent.name for p in history.weights} >= {"nominal-s0", "token-s0"}
    assert all(p.stat().st_mtime_ns == t for p, t in history.weights.items()), "a checkpoint was rewritten"


@pytest.mark.slow
def test_metrics_and_params_diff_show_the_change(history, env):
    params = json.loads(sh(["dvc", "params", "diff", "HEAD~1", "--json"], history.repo, env).stdout)
    assert params == {f"params/experiments/{EXP}.yaml": {
        "evaluate.soup_weights": {"old": "[0.0, 0.5, 1.0]", "new": "[0.0, 0.25, 0.5, 1.0]"}}}

    out = json.loads(sh(["dvc", "metrics", "diff", "HEAD~1", "--json"], history.repo, env).stdout)
    diff = out[SUMMARY]
    # The new soup weight's accuracies appear; the other weights keep theirs (same attack seed).
    for acc in ("clean_acc", "robust_acc"):
        assert diff[f"runs.token-s0.soup.0.25.{acc}"]["old"] is None
    old = flat(json.loads(git_show(history.repo, "HEAD~1", SUMMARY, env)))
    new = flat(json.loads(git_show(history.repo, "HEAD", SUMMARY, env)))
    # numbers, and the strings of the summary's provenance (the config digest changed with the soup grid)
    changed = {k for k in new if isinstance(new[k], (int, float, str)) and not isinstance(new[k], bool)
               and old.get(k) != new[k]}
    assert "provenance.config_digest" in changed
    assert set(diff) == changed, "dvc metrics diff is not the difference of the two committed summaries"
    for k in changed:
        assert diff[k]["old"] == old.get(k) and diff[k]["new"] == new[k], k
    table = sh(["dvc", "metrics", "diff", "HEAD~1"], history.repo, env).stdout
    assert SUMMARY in table and "runs.token-s0.soup.0.25.robust_acc" in table


def _specs(html: str) -> dict[str, dict]:
    """The Vega-Lite specs embedded in the HTML page of `dvc plots`, by title."""
    decoder, specs = json.JSONDecoder(), {}
    for m in re.finditer(r"var spec = ", html):
        spec, _ = decoder.raw_decode(html, m.end())
        specs[spec["title"]] = spec
    return specs


@pytest.mark.slow
def test_plots_diff_draws_both_commits(history, env, tmp_path):
    sh(["dvc", "plots", "diff", "HEAD~1", "HEAD", "-o", str(tmp_path / "plots")], history.repo, env)
    specs = _specs((tmp_path / "plots" / "index.html").read_text())
    soup = next(s for t, s in specs.items() if t.startswith("Soup curve"))
    for rev in ("HEAD~1", "HEAD"):
        drawn = {(r["run"], float(r["w"]), float(r["robust_acc"]), float(r["clean_acc"]))
                 for r in soup["data"]["values"] if r["rev"] == rev}
        table = pd.read_csv(io.StringIO(git_show(history.repo, rev, f"results/{EXP}/report/tables/soups.csv", env)))
        assert drawn == {(r.run, r.w, r.robust_acc, r.clean_acc) for r in table.itertuples()}, rev
    assert soup["encoding"]["strokeDash"]["field"] == "rev" and soup["encoding"]["color"]["field"] == "run"
    for title in ("Training loss", "Training accuracy on clean images"):
        drawn = {(r["rev"], r["run"]) for r in specs[title]["data"]["values"]}
        assert drawn == {(rev, run) for rev in ("HEAD~1", "HEAD") for run in ("nominal-s0", "token-s0")}, title
    # the nominal run has no adversarial examples: only the co-trained run is drawn
    assert {r["run"] for r in specs["Training accuracy on adversarial images"]["data"]["values"]
            if r["train_adv_acc"] != ""} == {"token-s0"}
    images = {p.name for p in (tmp_path / "plots" / "static").iterdir()}
    assert {f"HEAD_results_{EXP}_report_figures_soup_curve.png", f"HEAD~1_results_{EXP}_report_figures_soup_curve.png"} <= images, images


@pytest.mark.slow
def test_push_then_pull_restores_everything_and_snakemake_has_nothing_to_do(history, env, tmp_path):
    sh(["dvc", "push"], history.repo, env)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(history.repo), str(clone)], tmp_path, env)

    # Without pulling, after an edit of the figure code: the report again, from the metric files in git alone:
    # its summaries, tables and figures byte-identical to the committed ones; the results page names the clone's
    # commit.
    with open(clone / "src" / "advsoup" / "report" / "figures.py", "a") as fh:
        fh.write("# an edit\n")
    out = sh(["dvc", "repro", "--allow-missing", "figures"], clone, env).stdout
    assert "Running stage 'figures'" in out
    assert not any(f"Running stage '{s}'" in out for s in ("prepare", "experiment")), out
    assert not (clone / "data").exists() and not (clone / "results" / EXP / "runs").exists()
    changed = sh(["git", "status", "--porcelain"], clone, env).stdout.split("\n")
    assert sorted(line[3:] for line in changed if line) == [f"docs/results/{EXP}.md", "dvc.lock",
                                                            "src/advsoup/report/figures.py"], changed

    sh(["dvc", "pull"], clone, env)
    assert digests(clone) == digests(history.repo)
    assert "up to date" in sh(["dvc", "status"], clone, env).stdout

    assert "Nothing to be done" in sh(experiment_cmd(clone) + ["-n"], clone, env).stdout
    # Even with every restored data set and checkpoint newer than what was computed from it ...
    future = time.time() + 3600
    for path in [clone / "data" / "prepared" / "fashion_mnist", *(clone / "results" / EXP / "runs").rglob("*")]:
        os.utime(path, (future, future))
    assert "Nothing to be done" in sh(experiment_cmd(clone) + ["-n"], clone, env).stdout
    # ... which Snakemake would recompute from without the rules' ancient() inputs: every evaluation reads the
    # restored checkpoints. (The data directories are aged(): set to 1970 when the DAG is built, so even then
    # they retrain nothing.)
    for rules in (clone / "workflow" / "rules").glob("*.smk"):
        rules.write_text(re.sub(r"ancient\(([^()]*(?:\([^()]*\))?[^()]*)\)", r"\1", rules.read_text()))
    jobs = sh(experiment_cmd(clone) + ["-n"], clone, env).stdout
    assert re.search(r"(?m)^evaluate\s+2$", jobs) and not re.search(r"(?m)^train\s", jobs), jobs[-2000:]


def _pulled_clone(history, env, tmp_path) -> Path:
    sh(["dvc", "push"], history.repo, env)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(history.repo), str(clone)], tmp_path, env)
    sh(["dvc", "pull"], clone, env)
    return clone


def _jobs(out: str) -> dict:
    """Snakemake's job table (rule -> count) from a `dvc repro` output."""
    if "Job stats:" not in out:
        return {}
    return dict(re.findall(r"(?m)^(\w+)\s+(\d+)$", out.split("Job stats:")[1].split("total")[0]))


@pytest.mark.slow
def test_in_a_fresh_clone_a_soup_grid_edit_reruns_the_soups_and_nothing_retrains(history, env, tmp_path):
    """No Snakemake metadata in a fresh clone: the results' recorded provenance alone decides."""
    clone = _pulled_clone(history, env, tmp_path)
    weights = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (clone / "results" / EXP / "runs").rglob("model.safetensors")}
    exp_file = clone / "params" / "experiments" / f"{EXP}.yaml"
    exp_file.write_text(exp_file.read_text().replace("soup_weights: [0.0, 0.25, 0.5, 1.0]",
                                                     "soup_weights: [0.0, 0.75, 1.0]"))
    proc = sh(["dvc", "repro"], clone, env)
    out = proc.stdout + proc.stderr
    jobs = _jobs(out)
    # the soups and the shift sweeps measure every soup weight: they rerun; nothing else does
    assert jobs.get("soups") == "1" and not {"train", "evaluate", "robustness"} & set(jobs), out[-3000:]
    soups = json.loads((clone / "results" / EXP / "metrics" / "token-s0" / "soups.json").read_text())
    assert sorted(r["w"] for r in soups["soup"]) == [0.0, 0.75, 1.0]
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in weights} == weights


@pytest.mark.slow
def test_a_training_edit_recomputes_every_metric_and_metrics_diff_shows_it(history, env, tmp_path):
    clone = _pulled_clone(history, env, tmp_path)
    exp_file = clone / "params" / "experiments" / f"{EXP}.yaml"
    exp_file.write_text(exp_file.read_text().replace("  epochs: 1\n", "  epochs: 2\n"))
    out = sh(["dvc", "repro"], clone, env)
    jobs = _jobs(out.stdout + out.stderr)
    assert {"train", "evaluate", "soups", "robustness", "shift"} <= set(jobs), (out.stdout + out.stderr)[-3000:]
    metrics = clone / "results" / EXP / "metrics"
    for run in ("nominal-s0", "token-s0"):
        sha = json.loads((metrics / run / "checkpoint.json").read_text())["weights_sha256"]
        for name in ("eval.json", "robustness.json", "shift.json") + (("soups.json",) if run == "token-s0" else ()):
            assert json.loads((metrics / run / name).read_text())["provenance"]["checkpoints"] == {"train": sha}
    diff = json.loads(sh(["dvc", "metrics", "diff", "HEAD", "--json"], clone, env).stdout)[SUMMARY]
    for run in ("nominal-s0", "token-s0"):
        assert f"runs.{run}.clean_mode.clean_acc" in diff, sorted(diff)[:20]


@pytest.mark.slow
def test_dvc_exp_run_with_the_experiment_file_named_and_exp_show_lists_it(history, env, tmp_path):
    """The README's form `dvc exp run -S <file>:<key>=<value>` (the plain `-S key=value` looks for params.yaml)."""
    clone = _pulled_clone(history, env, tmp_path)
    key = f"params/experiments/{EXP}.yaml:evaluate.soup_weights"
    proc = sh(["dvc", "exp", "run", "-n", "three-weights", "-S", f"{key}=[0.0,0.5,1.0]"], clone, env)
    jobs = _jobs(proc.stdout + proc.stderr)
    assert jobs.get("soups") == "1" and not {"train", "evaluate"} & set(jobs), (proc.stdout + proc.stderr)[-3000:]
    rows = json.loads(sh(["dvc", "exp", "show", "--json"], clone, env).stdout)
    exps = {e["name"]: e for row in rows for e in row.get("experiments") or [] for e in e["revs"]}
    data = exps["three-weights"]["data"]
    assert data["params"][f"params/experiments/{EXP}.yaml"]["data"]["evaluate"]["soup_weights"] == [0.0, 0.5, 1.0]
    summary = data["metrics"][SUMMARY]["data"]
    assert sorted(float(w) for w in summary["runs"]["token-s0"]["soup"]) == [0.0, 0.5, 1.0]
    plain = sh(["dvc", "exp", "run", "-S", "evaluate.soup_weights=[0.0,1.0]"], clone, env, check=False)
    assert plain.returncode != 0 and "evaluate" in plain.stderr + plain.stdout
