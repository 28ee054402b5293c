"""`dvc repro` runs any experiment: one read from files (ImageNet's folder layout, no synthetic shift study) and
one that asks a single question (report.targets: [regime]). dvc.yaml's three stages are the same for both; what
runs inside them follows the experiment (advsoup.stages.metric_stages and report_stages), and `dvc metrics show`
lists the summaries that experiment's report writes, with no missing file.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from advsoup.config import EXPERIMENTS_DIR
from test_dvc import EXP as TINY_EXP, env, make_repo, sh  # noqa: F401  (env is a fixture)
from test_scale import IMAGENET, image_folder  # noqa: F401  (image_folder is a fixture)

TINY = EXPERIMENTS_DIR / f"{TINY_EXP}.yaml"


def _repo_for(tmp_path: Path, env: dict, name: str, dataset: str, overrides: list[str]) -> Path:
    """A repository copy whose params/pipeline.yaml names a new experiment file: tiny.yaml with overrides."""
    repo = make_repo(tmp_path, env)
    exp = OmegaConf.merge(OmegaConf.load(TINY), OmegaConf.from_dotlist([f"experiment={name}", *overrides]))
    OmegaConf.save(exp, repo / "params" / "experiments" / f"{name}.yaml")
    pipeline = repo / "params" / "pipeline.yaml"
    text = re.sub(r"(?m)^exp: \w+$", f"exp: {name}", pipeline.read_text())
    pipeline.write_text(re.sub(r"(?m)^dataset: \w+$", f"dataset: {dataset}", text))
    pipe = yaml.safe_load(pipeline.read_text())
    assert (pipe["exp"], pipe["dataset"]) == (name, dataset)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", name], repo, env)
    return repo


def _jobs(out: str) -> set:
    """The rules of Snakemake's job table in a `dvc repro` output."""
    return set(re.findall(r"(?m)^(\w+)\s+\d+$", out.split("Job stats:")[1].split("total")[0]))


def _repro_and_check(repo: Path, env: dict, name: str) -> tuple[str, dict]:
    proc = sh(["dvc", "repro"], repo, env)
    out = proc.stdout + proc.stderr
    for stage in ("prepare", "experiment", "figures"):
        assert f"Running stage '{stage}'" in out, out[-3000:]
    assert "up to date" in sh(["dvc", "status"], repo, env).stdout
    shown = sh(["dvc", "metrics", "show", "--json"], repo, env)
    assert "failed to load" not in shown.stderr, shown.stderr
    metrics = json.loads(shown.stdout)
    files = {Path(p).name: v["data"] for rev in metrics.values() for p, v in rev["data"].items()}
    assert (repo / "docs" / "results" / f"{name}.md").is_file()
    return out, files


@pytest.mark.slow
def test_dvc_repro_runs_an_imagenet_experiment(tmp_path, env, image_folder):  # noqa: F811
    """The generated ImageFolder through DVC: prepare writes the file list, the experiment stage trains, evaluates,
    runs the soups and the checks (no synthetic shift study for a dataset read from files), the figures stage runs
    the ImageNet report (about 3 min on a loaded 2-core machine)."""
    name = "imagenet_tiny"
    repo = _repo_for(tmp_path, env, name, "imagenet", [
        "data.name=imagenet", f"data.source_dir={image_folder}", "data.val_size=0", *IMAGENET,
        "data.train_size=40", "train.batch_size=10", "evaluate.autoattack.subset=8", "evaluate.robust_subset=20",
        "evaluate.robustness.subset=8"])
    out, files = _repro_and_check(repo, env, name)
    assert _jobs(out) == {"train", "evaluate", "soups", "robustness", "metrics"}, out[-3000:]
    assert (repo / "data" / "prepared" / "imagenet" / "train_files.tsv").is_file()
    assert set(files) == {"summary.json", "adapter_parameters.json"}
    assert files["adapter_parameters.json"]["adapters"]["vit_b16 token"]["domain_parameters"] == 768
    assert set(files["summary.json"]["runs"]) == {"nominal-s0", "token-s0"}
    report = repo / "results" / name / "report"
    assert (report / "figures" / "soup_curve.png").is_file() and not (report / "figures" / "shift.png").exists()


@pytest.mark.slow
def test_dvc_repro_runs_an_experiment_with_report_targets(tmp_path, env):
    """report.targets: [regime]: the experiment stage trains and evaluates only, the figures stage writes the
    regime report and the page (about 2 min)."""
    name = "regime_tiny"
    runs = {f"{kind}_n{n}": {"training": t, "adapter": a, "train_size": n, "epochs": 1, "seeds": [0]}
            for n in (256, 512) for kind, t, a in (("nominal", "nominal", "none"), ("token", "cotrain", "token"))}
    repo = _repo_for(tmp_path, env, name, "fashion_mnist", [
        "report.targets=[regime]", "evaluate.train_subset=200", "evaluate.robust_subset=20",
        "evaluate.autoattack.enabled=false"])
    exp_file = repo / "params" / "experiments" / f"{name}.yaml"
    exp = yaml.safe_load(exp_file.read_text())
    exp["runs"] = runs
    exp_file.write_text(yaml.safe_dump(exp))
    sh(["git", "commit", "-qam", "regime runs"], repo, env)
    out, files = _repro_and_check(repo, env, name)
    assert _jobs(out) == {"train", "evaluate", "metrics"}, out[-3000:]
    assert set(files) == {"regime.json"}
    # every regime's numbers are DVC metrics (keyed, not a list: DVC drops lists)
    regimes = files["regime.json"]["regimes"]
    assert [r["train_images"] for r in regimes.values()] == [256, 512]
    assert all(isinstance(r["gain_points_mean"], float) for r in regimes.values())
    assert not list((repo / "results" / name / "metrics").rglob("soups.json"))
