"""Every record names the code that computed it (advsoup.provenance.code_of) and, for a compute stage, the platform
(advsoup.runtime.platform_record); the results page lists both for its metric files: a reader can tell results of
different code or machines apart, although neither reruns anything. On a throw-away git repository, the tiny
experiment's adapters stage (a report stage) and a short training run."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import torch

from advsoup import stages
from advsoup.cli import main
from advsoup.config import EXPERIMENTS_DIR, Paths, load_config
from advsoup.provenance import KEY, code_of, code_version
from advsoup.report.page import _code_versions, _platforms


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def test_the_code_version_is_the_commit_and_the_exact_source(tmp_path):
    pkg = tmp_path / "repo" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "notes.txt").write_text("not code\n")
    loose = code_of(pkg)
    assert loose["commit"].startswith("unknown")  # no git checkout: the source hash alone names the code
    _git(pkg.parent, "init", "-q")
    _git(pkg.parent, "add", "-A")
    _git(pkg.parent, "commit", "-q", "-m", "one")
    code_of.cache_clear()
    head = subprocess.run(["git", "-C", str(pkg), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    clean = code_of(pkg)
    assert clean == {"commit": head, "source_sha256": loose["source_sha256"]}
    (pkg / "notes.txt").write_text("still not code\n")  # only source files enter the hash
    (pkg / "a.py").write_text("x = 2\n")
    code_of.cache_clear()
    edited = code_of(pkg)
    assert edited["commit"] == f"{head} + uncommitted changes" and edited["source_sha256"] != clean["source_sha256"]
    (pkg / "a.py").write_text("x = 1\n")
    code_of.cache_clear()
    assert code_of(pkg)["source_sha256"] == clean["source_sha256"]


def test_a_stage_record_names_its_code_and_the_page_counts_the_versions(tmp_path):
    assert main(["adapters", "--config", str(EXPERIMENTS_DIR / "tiny.yaml"), f"results_dir={tmp_path}"]) == 0
    record = json.loads((tmp_path / "tiny" / "report" / "summaries" / "adapter_parameters.json").read_text())
    assert record[KEY]["code"] == code_version()
    assert "platform" not in record[KEY]  # a report stage: nothing it computes depends on the machine
    assert len(code_version()["source_sha256"]) == 64 and code_version()["commit"]

    paths = Paths(load_config([EXPERIMENTS_DIR / "tiny.yaml"], [f"results_dir={tmp_path}"]))
    metrics = paths.root / "metrics"
    old = {"commit": "1111aaaa2222", "source_sha256": "a" * 64}
    edited = {"commit": "1111aaaa2222 + uncommitted changes", "source_sha256": "b" * 64}
    for run, code in (("r-s0", old), ("r-s1", old), ("r-s2", edited), ("r-s3", None)):
        (metrics / run).mkdir(parents=True)
        prov = {"stage": "evaluate", **({"code": code} if code else {})}
        (metrics / run / "eval.json").write_text(json.dumps({KEY: prov}))
    assert _code_versions(paths) == ("1111aaaa2222: 2; 1111aaaa2222 + uncommitted changes (source sha256 "
                                     "bbbbbbbbbbbb): 1; not recorded (written before records named their code): 1")
    shutil.rmtree(metrics)
    assert _code_versions(paths) == "no metric files"


def test_a_compute_record_names_the_platform_it_ran_on_and_the_page_counts_them(tiny_cfg, tmp_path):
    # train.threads=1 while the test session runs 2 threads: the record holds the threads the stage ran on
    cfg = load_config([EXPERIMENTS_DIR / "tiny.yaml"], [
        f"results_dir={tmp_path}/results", f"data.prepared_dir={tiny_cfg.data.prepared_dir}",
        "launcher.executor=inline", "runs.nominal.train_size=100", "runs.nominal.epochs=1", "train.threads=1"])
    stages.run(cfg, "train", "nominal-s0")
    paths = Paths(cfg)
    plat = json.loads(paths.checkpoint_record("nominal-s0").read_text())[KEY]["platform"]
    assert plat["torch"] == torch.__version__ and plat["threads"] == 1 and plat["world_size"] == 1
    assert plat["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and plat["cpu"]
    assert plat["gpu"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else None)

    run_dir = paths.metrics_dir("nominal-s0")
    (run_dir / "eval.json").write_text(json.dumps({KEY: {"stage": "evaluate"}}))  # from before platform records
    gpu = {**plat, "gpu": "NVIDIA A100-SXM4-80GB", "threads": 8, "world_size": 4}
    (run_dir / "soups.json").write_text(json.dumps({KEY: {"stage": "soups", "platform": gpu}}))
    here = plat["gpu"] or f"{plat['cpu']} ({plat['cpu_capability']})"
    assert _platforms(paths) == (f"{here}, torch {torch.__version__}, 1 thread: 1; NVIDIA A100-SXM4-80GB, torch "
                                 f"{torch.__version__}, 8 threads x 4 ranks: 1; not recorded (written before "
                                 f"records named their platform): 1")
