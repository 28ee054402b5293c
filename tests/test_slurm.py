"""On a real single-node SLURM (scripts/slurm/start.sh): the tiny experiment through the slurm profile,
a training job preempted and requeued, and a job killed hard.

The session fixture starts the cluster (installing Debian's packages on a fresh machine) and stops
it again unless it was already running. Not root, or neither SLURM nor apt-get: skipped, saying why.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import torch
from jobhelpers import history, quiet, train_job, wait_for_line

from advsoup import launch
from advsoup.checkpoint import load_tensors
from advsoup import stages
from advsoup.config import (EXPERIMENTS_DIR, REPO_ROOT, LauncherConfig, Paths, ResourcesConfig, dotlist,
                            load_config, run_ids, soup_run_ids)
from advsoup.train import train

pytestmark = pytest.mark.slurm
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SCRIPTS = REPO_ROOT / "scripts" / "slurm"
STATE = Path(os.environ.get("ADVSOUP_SLURM_STATE", "/var/tmp/advsoup-slurm"))
SLURM = LauncherConfig(executor="slurm", poll_seconds=0.5)
RES = ResourcesConfig(cpus=1, mem_gb=2)
BIN = Path(sys.executable).parent
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL"}


def controller_runs() -> bool:
    try:
        pid = int((STATE / "run" / "slurmctld.pid").read_text())
        return Path(f"/proc/{pid}/comm").read_text().strip() == "slurmctld"
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.skip("the test cluster needs root: scripts/slurm/start.sh runs SLURM's daemons")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and there is no apt-get to install Debian's packages")
    started_here = not controller_runs()
    t0 = time.time()
    proc = subprocess.run(["bash", str(SCRIPTS / "start.sh")], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"scripts/slurm/start.sh failed:\n{proc.stdout}{proc.stderr[-4000:]}", pytrace=False)
    print(f"\nSLURM up in {time.time() - t0:.0f} s:\n{proc.stdout}")
    yield
    if started_here:
        subprocess.run(["bash", str(SCRIPTS / "stop.sh")], capture_output=True, timeout=300)


def accounting(job_ids: list, timeout: float = 60) -> dict:
    """sacct's allocation records, {job id: [record per run]} (a requeued job has one per run)."""
    end = time.time() + timeout
    while True:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", ",".join(job_ids),
                              "-o", "JobID,JobName,State,AllocCPUS,ReqMem,ExitCode"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        records = {}
        for line in out.splitlines():
            jid, name, state, cpus, mem, code = line.split("|")
            records.setdefault(jid, []).append(dict(name=name, state=state.split()[0], cpus=cpus, mem=mem, exit=code))
        if set(records) == set(job_ids) and all(r[-1]["state"] in FINAL for r in records.values()):
            return records
        assert time.time() < end, f"sacct has no final record of every job in {timeout} s:\n{out}"
        time.sleep(1)


def test_tiny_experiment_through_the_slurm_profile(slurm_cluster, tmp_path, prepared):
    """Every compute rule of the tiny experiment's soup study as a SLURM job; training on 2 ranks (gloo)."""
    shutil.copytree(prepared, tmp_path / "data" / "prepared" / "fashion_mnist")
    tiny = EXPERIMENTS_DIR / "tiny.yaml"
    # A --config replaces the profile's config entry, so it names the executor again.
    overrides = "launcher={executor: slurm, resources: {train: {tasks: 2}}}"
    cfg = load_config([tiny], dotlist({"launcher": {"executor": "slurm", "resources": {"train": {"tasks": 2}}}}))
    paths = Paths(cfg)
    targets = [str(paths.summary), str(paths.figures / "soup_curve.png")]
    cmd = [str(BIN / "snakemake"), *targets, "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--workflow-profile", str(REPO_ROOT / "workflow" / "profiles" / "slurm"), "--configfile", str(tiny),
           "--config", overrides]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    summary = json.loads((tmp_path / paths.summary).read_text())
    assert summary["experiment"] == "tiny" and set(summary["runs"]) == set(run_ids(cfg))
    assert (tmp_path / paths.figures / "soup_curve.png").stat().st_size > 20_000
    # Every job: named after its stage, its files under the experiment's logs/, accounted COMPLETED with
    # the CPUs and memory asked for (training: 2 tasks of launcher.resources.train.cpus each).
    ids = {d.parent.name: d.name for d in (tmp_path / paths.logs / "jobs").glob("*/[0-9]*")}
    expected = {f"{stage}-{r}" for stage in ("train", "evaluate") for r in run_ids(cfg)} | \
        {f"soups-{r}" for r in soup_run_ids(cfg)}
    assert expected <= set(ids), sorted(ids)
    records = accounting(list(ids.values()))
    for name, jid in ids.items():
        stage = next(name[:-len(r) - 1] for r in run_ids(cfg) if name.endswith(f"-{r}"))
        distributed, res = stages.get(stage).distributed, stages.resources(cfg, stage)
        (record,) = records[jid]
        assert record == dict(name=f"tiny-{name}", state="COMPLETED", cpus=str(res.cpus * (2 if distributed else 1)),
                              mem=f"{res.mem_gb:g}G", exit="0:0"), (name, record)
        rule_log = (tmp_path / paths.logs / f"{name}.log").read_text()
        assert f"submitted tiny-{name} as slurm job {jid}" in rule_log and f"job {jid} done" in rule_log
    train_log = (tmp_path / paths.run_dir("token-s0") / "train.log").read_text()
    assert "64 domain-specific parameters" in train_log
    assert (tmp_path / paths.logs / "jobs" / "train-token-s0" / ids["train-token-s0"] /
            f"{ids['train-token-s0']}_1_log.err").read_text().count("INFO epoch 1 step 8/8") == 1  # rank 1 trained


def test_cancelled_then_preempted_training_resumes_exactly(slurm_cluster, tmp_path, prepared):
    """scancel (SIGTERM): save and stop, no requeue; the next submission resumes. Then SIGUSR2, which
    SLURM sends before the time limit: save and requeue. Final weights: those of an uninterrupted run."""
    job = train_job(tmp_path, prepared, "token-s0", "train.epochs=3", "train.log_every=1",
                    "train.checkpoint_every=0", "train.threads=1")
    log = job.run_dir / "train.log"

    first = launch.start(train, job, SLURM, RES, "cancel", tmp_path / "jobs", echo=quiet)
    wait_for_line(log, "epoch 1 step 3/8")
    subprocess.run(["scancel", first.job_id], check=True, timeout=30)
    with pytest.raises(launch.LaunchError, match=r"ended without a result \(state CANCELLED"):
        launch.wait(first, "cancel", SLURM, echo=quiet)
    assert [r["state"] for r in accounting([first.job_id])[first.job_id]] == ["CANCELLED"]  # not requeued
    saved = json.loads((job.run_dir / "state.json").read_text())["step"]
    assert saved >= 3 and saved % 8 != 0, "no mid-epoch state saved on SIGTERM"

    second = launch.start(train, job, SLURM, RES, "preempt", tmp_path / "jobs", echo=quiet)
    epoch, i = divmod(saved + 2 - 1, 8)
    wait_for_line(log, f"epoch {epoch + 1} step {i + 1}/8")
    subprocess.run(["scancel", "--signal=USR2", second.job_id], check=True, timeout=30)
    # Slurm holds a requeued job for 2 minutes (Reason=BeginTime); let it start now.
    end = time.time() + 60
    while "BeginTime" not in subprocess.run(["squeue", "-h", "-j", second.job_id, "-o", "%r"],
                                            capture_output=True, text=True, timeout=30).stdout:
        assert time.time() < end, "the job was not requeued"
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={second.job_id}", "StartTime=now"], check=True, timeout=30)
    launch.wait(second, "preempt", SLURM, echo=quiet)
    assert [r["state"] for r in accounting([second.job_id])[second.job_id]] == ["REQUEUED", "COMPLETED"]
    resumed = [int(k) for k in re.findall(r"resuming token-s0 at step (\d+)/24", log.read_text())]
    assert resumed[0] == saved and resumed[1] >= saved + 2, resumed

    ref = train_job(tmp_path / "ref", prepared, "token-s0", "train.epochs=3", "train.threads=1")
    train(ref)
    got, want = load_tensors(job.run_dir / "model.safetensors"), load_tensors(ref.run_dir / "model.safetensors")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert history(job.history_file) == history(ref.history_file)


def die(_: str) -> None:
    print("about to be killed", flush=True)
    os._exit(3)  # no traceback and no result file, as after the kernel's OOM killer


def test_a_job_killed_hard_fails_fast_with_its_log(slurm_cluster, tmp_path):
    t0 = time.time()
    with pytest.raises(launch.LaunchError, match=r"\(die\) failed: it ended without a result \(state FAILED\)") as exc:
        launch.submit(die, "", SLURM, ResourcesConfig(cpus=1, mem_gb=1), "die", tmp_path, echo=quiet)
    assert time.time() - t0 < 60  # sacct reports the failure; submitit alone could wait much longer
    assert "about to be killed" in str(exc.value).split("--- last lines of the job's log ---")[1]
