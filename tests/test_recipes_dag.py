"""The full-scale recipes as DAGs, checked on a login node without a cluster: `snakemake -n` with the slurm
profile lists every job with the resources its SLURM job asks for, and ImageNet's prepared data is the file list
(never the 150 GB under data.source_dir) for Snakemake and DVC alike. (The dry runs' time is measured, not
asserted: under 5 s each on 2 idle cores, see the README's cluster walkthrough.)"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from advsoup.config import EXPERIMENTS_DIR, load_config
from advsoup.launch import tasks_per_node
from advsoup.stages import JOB_STAGES, get

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RECIPES = ["imagenet_vitb16", "cifar10"]


def dry_run(workdir: Path, exp: str) -> str:
    cmd = [str(BIN / "snakemake"), "-n", "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
           "--workflow-profile", str(REPO_ROOT / "workflow" / "profiles" / "slurm"),
           "--configfile", str(EXPERIMENTS_DIR / f"{exp}.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def jobs(out: str) -> list:
    """Every job block of a dry run: {rule, threads, resources: {key: value}, input, output}."""
    found = []
    for block in re.split(r"\n(?=rule \w+:\n)", out):
        m = re.match(r"rule (\w+):\n", block)
        if not m:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, re.M))
        res = dict(kv.split("=", 1) for kv in fields.get("resources", "").split(", ") if "=" in kv)
        found.append({"rule": m.group(1), "threads": fields.get("threads"), "resources": res,
                      "input": fields.get("input"), "output": fields.get("output")})
    return found


@pytest.mark.parametrize("exp", RECIPES)
def test_the_recipes_dry_run_lists_every_job_with_its_slurm_resources(tmp_path, exp):
    out = dry_run(tmp_path, exp)
    listed = jobs(out)
    table = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M)}
    assert table.pop("total") == len(listed) == sum(table.values())
    cfg = load_config([EXPERIMENTS_DIR / f"{exp}.yaml"], ["launcher.executor=slurm"])
    submitted = [j for j in listed if j["rule"] in JOB_STAGES]
    assert {"train", "evaluate", "soups", "robustness"} <= {j["rule"] for j in submitted}
    for j in submitted:
        res = cfg.launcher.resources[j["rule"]]
        want = {"runtime": res.time_min, "nodes": res.nodes, "cpus_per_task": res.cpus, "gpus_per_node": res.gpus,
                "tasks_per_node": tasks_per_node(res, get(j["rule"]).distributed), "mem_mb": int(res.mem_gb * 1024)}
        assert {k: int(j["resources"].get(k, -1)) for k in want} == want, j
        assert int(j["threads"]) == res.cpus, j
    for j in listed:
        if j["rule"] not in JOB_STAGES:  # the rest run on the login node: no SLURM job, no SLURM resources
            assert "runtime" not in j["resources"], j
    if exp == "imagenet_vitb16":
        train = next(j for j in submitted if j["rule"] == "train")
        assert (train["resources"]["nodes"], train["resources"]["tasks_per_node"]) == ("4", "8")  # 32 GPUs
        prepare = next(j for j in listed if j["rule"] == "prepare")
        assert prepare["input"] is None and prepare["output"] == "data/prepared/imagenet", prepare


def test_dvc_prepares_the_experiments_dataset_and_never_depends_on_its_source(tmp_path):
    """dvc.yaml's prepare stage writes data/prepared/<dataset> (for ImageNet: manifest + file lists); no stage
    declares data.source_dir as a dependency or an output; params/pipeline.yaml's dataset is its exp's."""
    from dvc.repo import Repo

    pipeline = yaml.safe_load((REPO_ROOT / "params" / "pipeline.yaml").read_text())
    assert pipeline["dataset"] == load_config([EXPERIMENTS_DIR / f"{pipeline['exp']}.yaml"]).data.name
    subprocess.run([str(BIN / "dvc"), "init", "-q", "--no-scm"], cwd=tmp_path, check=True)
    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(REPO_ROOT / "params", tmp_path / "params")
    for exp in RECIPES:
        cfg = load_config([EXPERIMENTS_DIR / f"{exp}.yaml"])
        (tmp_path / "params" / "pipeline.yaml").write_text(
            yaml.safe_dump({**pipeline, "exp": exp, "dataset": cfg.data.name, "profile": "slurm"}))
        stages = {s.name: s for s in Repo(str(tmp_path)).index.stages}
        prepared = f"data/prepared/{cfg.data.name}"
        assert [o.def_path for o in stages["prepare"].outs] == [prepared]
        assert prepared in [d.def_path for d in stages["experiment"].deps]
        source = cfg.data.source_dir.rstrip("/")
        for stage in stages.values():
            for path in [d.def_path for d in stage.deps] + [o.def_path for o in stage.outs]:
                assert not str(path).startswith(source), (exp, stage.name, path)
