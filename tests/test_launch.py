"""The submitit launcher on local subprocesses: failures carry the job's log, preemption resumes exactly."""
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest
import torch
from jobhelpers import LOCAL, history, quiet, signal_local_tasks, train_job, wait_for_line

from advsoup import launch
from advsoup.checkpoint import load_tensors
from advsoup.config import EXPERIMENTS_DIR, REPO_ROOT, ConfigError, Paths, ResourcesConfig, load_config, run_ids
from advsoup.train import train

# The job functions below live in this file, which the job's interpreter cannot import: ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

BIN = Path(sys.executable).parent


def crash(message: str) -> None:
    print("reading the input", flush=True)
    raise ValueError(message)


def torch_threads(threads: int) -> int:
    from advsoup.runtime import runtime_from_env
    runtime_from_env(threads)
    return torch.get_num_threads()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to tell 1 thread from all")
def test_a_local_job_runs_as_many_threads_as_its_stage_has_cpus(tmp_path):
    # The local executor has no cpus option: without the launcher's hint every job took one thread per core.
    assert launch.submit(torch_threads, 0, LOCAL, ResourcesConfig(cpus=1), "threads", tmp_path, echo=quiet) == 1
    assert launch.submit(torch_threads, 0, LOCAL, ResourcesConfig(cpus=2), "threads", tmp_path, echo=quiet) == 2
    assert launch.submit(torch_threads, 2, LOCAL, ResourcesConfig(cpus=1), "threads", tmp_path, echo=quiet) == 2


def test_a_crash_in_the_job_raises_with_its_log_tail(tmp_path):
    with pytest.raises(launch.LaunchError) as exc:
        launch.submit(crash, "train.lr is not a number", LOCAL, ResourcesConfig(cpus=1), "crash", tmp_path, echo=quiet)
    msg = str(exc.value)
    assert re.match(r"job \d+ \(crash\) failed: ValueError: train.lr is not a number\n", msg)
    assert f"log: {tmp_path}" in msg
    tail = msg.split("--- last lines of the job's log ---\n")[1]
    assert "Traceback" in tail and tail.rstrip().endswith("ValueError: train.lr is not a number")


def test_preempted_training_resumes_to_the_same_weights(tmp_path, prepared):
    """SIGUSR2 mid-epoch (what SLURM sends before the time limit): save, requeue, resume; bitwise the same."""
    # checkpoint_every=0: no periodic save, so a mid-epoch state can only come from the signal.
    job = train_job(tmp_path, prepared, "token-s0", "train.epochs=3", "train.log_every=1",
                    "train.checkpoint_every=0", "train.threads=1")
    sub = launch.start(train, job, LOCAL, ResourcesConfig(cpus=1), "preempt", tmp_path / "jobs", echo=quiet)
    wait_for_line(job.run_dir / "train.log", "epoch 1 step 3/8")
    signal_local_tasks(sub, signal.SIGUSR2)
    launch.wait(sub, "preempt", LOCAL, echo=quiet)

    log = (job.run_dir / "train.log").read_text()
    assert "received SIGUSR2" in log and "Requeued job" in sub.stdout()  # submitit logs INFO to stdout
    resumed_at = int(re.search(r"resuming token-s0 at step (\d+)/24", log).group(1))
    assert resumed_at >= 3 and resumed_at % 8 != 0, "resumed from an epoch end, not from the state saved on the signal"

    ref = train_job(tmp_path / "ref", prepared, "token-s0", "train.epochs=3", "train.threads=1")
    train(ref)
    got, want = load_tensors(job.run_dir / "model.safetensors"), load_tensors(ref.run_dir / "model.safetensors")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert history(job.history_file) == history(ref.history_file)  # epoch rows, statistics included


def test_a_crashing_job_stops_the_dag_and_leaves_nothing_to_trust(tmp_path, prepared):
    """A config the schema accepts but the job cannot run: Snakemake stops, shows the job's error, keeps nothing."""
    shutil.copytree(prepared, tmp_path / "data" / "prepared" / "fashion_mnist")
    tiny = EXPERIMENTS_DIR / "tiny.yaml"
    cfg = load_config([tiny])
    evaluations = [str(Paths(cfg).eval_file(r)) for r in run_ids(cfg)]  # targets: training, then evaluation
    cmd = [str(BIN / "snakemake"), *evaluations, "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--workflow-profile", str(REPO_ROOT / "workflow" / "profiles" / "local"), "--configfile", str(tiny)]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    # A learning rate the config accepts but training cannot survive: only the job can find out.
    proc = subprocess.run(cmd + ["--config", "train={lr: 1.0e+30}"], capture_output=True, text=True, env=env,
                          timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "failed: FloatingPointError: run " in out and "training diverged" in out
    assert "--- last lines of the job's log ---" in out and "Traceback" in out
    kept = [p for p in (tmp_path / "results").rglob("*")
            if p.name in ("model.safetensors", "model.json", "train_log.csv", "eval.json")]
    assert not kept
    dry = subprocess.run(cmd + ["-n"], capture_output=True, text=True, env=env, timeout=300).stdout
    assert any(line.split() == ["train", "2"] for line in dry.splitlines()), dry[-1500:]  # a rerun retrains


def test_the_slurm_job_script_asks_for_the_configured_resources(tmp_path):
    cfg = load_config([EXPERIMENTS_DIR / "tiny.yaml"], [
        "launcher.executor=slurm", "launcher.partition=gpu", "launcher.account=proj", "launcher.qos=high",
        "launcher.constraint=a100", "launcher.setup=[module load cuda/12.4]", "launcher.sbatch={exclude: node07}",
        "launcher.resources.train={gpus: 4, cpus: 8, mem_gb: 64, time_min: 1440, nodes: 2}",
        "launcher.resources.evaluate.gpus=1"])
    # Rendered without a cluster: this test must pass where SLURM was never installed.
    train_script = launch.slurm_script(cfg.launcher, cfg.launcher.resources["train"], "tiny-train-token-s0", tmp_path,
                                       distributed=True)
    for flag in ("job-name=tiny-train-token-s0", "partition=gpu", "account=proj", "qos=high", "constraint=a100",
                 "nodes=2", "ntasks-per-node=4", "gpus-per-node=4", "cpus-per-task=8", "mem=65536M", "time=1440",
                 "signal=USR2@120", "exclude=node07"):
        assert f"#SBATCH --{flag}\n" in train_script, flag
    assert "\nmodule load cuda/12.4\n" in train_script
    eval_script = launch.slurm_script(cfg.launcher, cfg.launcher.resources["evaluate"], "tiny-evaluate-token-s0", tmp_path)
    assert "#SBATCH --ntasks-per-node=1\n" in eval_script and "#SBATCH --gpus-per-node=1\n" in eval_script


@pytest.mark.parametrize("override, key", [("launcher.resources.train.nodes=2", "launcher.resources.train.nodes"),
                                           ("launcher.resources.evaluate.tasks=2", "launcher.resources.evaluate.nodes"),
                                           ("launcher.resources.shift.time_min=0", "launcher.resources.shift.time_min"),
                                           ("launcher.resources.aggregate.cpus=1", "launcher.resources.aggregate")])
def test_resources_the_launcher_cannot_honour_fail_before_any_job(override, key):
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        load_config([EXPERIMENTS_DIR / "tiny.yaml"], [override])  # local executor: one node
