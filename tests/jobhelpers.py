"""Helpers of the launcher, distributed and SLURM tests: training jobs, watching and signalling them."""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path

from advsoup.config import EXPERIMENTS_DIR, LauncherConfig, Paths, load_config, split_run_id
from advsoup.train import TrainJob

LOCAL = LauncherConfig(executor="local", poll_seconds=0.2)


def quiet(_: str) -> None:
    pass


def train_job(tmp_path: Path, prepared: Path, run_id: str, *overrides: str) -> TrainJob:
    """A run of the tiny experiment writing under tmp_path."""
    cfg = load_config([EXPERIMENTS_DIR / "tiny.yaml"], [f"results_dir={tmp_path}/results",
                                                       f"data.prepared_dir={prepared.parent}", *overrides])
    _, run, seed = split_run_id(cfg, run_id)
    paths = Paths(cfg)
    return TrainJob(run_id, run, seed, cfg.data, cfg.model, cfg.train, paths.prepared, paths.run_dir(run_id),
                    paths.history_file(run_id))


def wait_for_line(log: Path, text: str, timeout: float = 180) -> None:
    end = time.time() + timeout
    while not (log.is_file() and text in log.read_text()):
        assert time.time() < end, f"'{text}' did not appear in {log} within {timeout} s"
        time.sleep(0.01)  # the tests signal a job at this line: a late look could find it finished


def signal_local_tasks(sub, signum: int) -> None:
    """What SLURM does on preemption: signal every task of the job (not submitit's controller process)."""
    ctl = sub._process.pid
    pids = Path(f"/proc/{ctl}/task/{ctl}/children").read_text().split()
    assert pids, "the job has no running task"
    for pid in pids:
        os.kill(int(pid), signum)


def history(path: Path) -> list:
    """train_log.csv without its timing columns."""
    with path.open() as fh:
        return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in csv.DictReader(fh)]
