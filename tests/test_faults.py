"""Faults a user meets: two trainers on one run, damaged data and checkpoints, configs that cannot work.

Each gets one error naming the thing at fault and the way out, and leaves no output a rerun would trust.
"""
from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from jobhelpers import train_job

from advsoup import checkpoint as ckpt
from advsoup.config import EXPERIMENTS_DIR, ConfigError, ModelConfig, load_config
from advsoup.config.preflight import preflight
from advsoup.data.sources import DataFileError, load_raw, read_idx
from advsoup.models import build_model
from advsoup.runlock import LOCK_NAME, RunLock, RunLocked
from advsoup.train import train

RAW = Path("/usr/share/datasets/fashion-mnist")
TINY = EXPERIMENTS_DIR / "tiny.yaml"


# ---- one trainer per run -------------------------------------------------------------------

def _hold(run_dir: Path, **env: str) -> subprocess.Popen:
    """Another process holding the run's lock, as a second `advsoup train` would; returns once it holds it."""
    code = ("import sys, time; from pathlib import Path; from advsoup.runlock import RunLock\n"
            "RunLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_trainer_of_a_run_refuses_naming_the_holder(tmp_path, prepared):
    job = train_job(tmp_path, prepared, "nominal-s0", "data.train_size=192")
    holder = _hold(job.run_dir, SLURM_JOB_ID="4242")
    try:
        with pytest.raises(RunLocked) as exc:
            train(job)
    finally:
        holder.kill()
        holder.wait()
    msg = str(exc.value)
    assert f"pid {holder.pid} on {socket.gethostname()}, SLURM job 4242" in msg
    assert "kill" in msg and "scancel 4242" in msg and str(job.run_dir / LOCK_NAME) in msg
    assert sorted(p.name for p in job.run_dir.iterdir()) == [LOCK_NAME]  # nothing written: no config.yaml


def test_the_lock_of_a_killed_trainer_is_taken_over_and_released(tmp_path, prepared):
    job = train_job(tmp_path, prepared, "nominal-s0", "train.threads=1", "data.train_size=192")
    holder = _hold(job.run_dir)
    holder.send_signal(signal.SIGKILL)  # SIGKILL: the lock file stays behind
    holder.wait()
    assert json.loads((job.run_dir / LOCK_NAME).read_text())["pid"] == holder.pid
    train(job)
    assert (job.run_dir / "model.safetensors").is_file()
    assert not (job.run_dir / LOCK_NAME).exists()  # released when training ended


def _fake_lock(run_dir: Path, **fields) -> None:
    record = RunLock(run_dir)._record()
    record.update(fields)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps(record))


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path):
    _fake_lock(tmp_path, pid=os.getpid(), proc_start="1")  # a live pid, but another process's start time
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["proc_start"] != "1"


@pytest.mark.parametrize("job, restarts", [("556", "0"), ("556", "1"), ("555", "0")])
def test_a_lock_from_another_host_is_refused(tmp_path, monkeypatch, job, restarts):
    """Another job, or another trainer in the same allocation (same job id, same start): its pid means nothing
    here, so the lock is never guessed stale."""
    _fake_lock(tmp_path, host="node-17", pid=1, slurm_job_id="555", slurm_restart=0)
    monkeypatch.setenv("SLURM_JOB_ID", job)
    monkeypatch.setenv("SLURM_RESTART_COUNT", restarts)
    with pytest.raises(RunLocked, match="pid 1 on node-17, SLURM job 555.*another host or boot, which this "
                                        "process cannot check.*scancel 555"):
        RunLock(tmp_path).acquire()


def test_a_requeued_slurm_job_takes_over_the_lock_of_its_earlier_start(tmp_path, monkeypatch):
    _fake_lock(tmp_path, host="node-17", pid=1, slurm_job_id="555", slurm_restart=0)
    monkeypatch.setenv("SLURM_JOB_ID", "555")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # SLURM requeues a job only once its earlier start ended
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == socket.gethostname()


# ---- local jobs die with the process that submitted them ---------------------------------------

SUBMITTER = """
import os, sys, time
from pathlib import Path
from advsoup import launch
from advsoup.config import LauncherConfig, ResourcesConfig

def work(pid_file):
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(120)

launch.submit(work, sys.argv[1], LauncherConfig(executor="local", poll_seconds=0.2), ResourcesConfig(cpus=1),
              "sleeper", Path(sys.argv[2]), echo=lambda _: None)
"""


def test_a_local_job_dies_when_its_submitter_is_killed(tmp_path):
    script, pid_file = tmp_path / "submit.py", tmp_path / "job.pid"
    script.write_text(SUBMITTER)
    submitter = subprocess.Popen([sys.executable, str(script), str(pid_file), str(tmp_path / "jobs")])
    try:
        end = time.time() + 60
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.time() < end and submitter.poll() is None, "the job never started"
            time.sleep(0.05)
        job_pid = int(pid_file.read_text())
    finally:
        submitter.kill()  # kill -9 of the `advsoup` process a user sees
        submitter.wait()
    end = time.time() + 10
    while Path(f"/proc/{job_pid}").exists() and Path(f"/proc/{job_pid}/stat").read_text().split()[2] != "Z":
        if time.time() > end:
            os.kill(job_pid, signal.SIGKILL)
            pytest.fail("the local job kept running after its submitter was killed")
        time.sleep(0.1)


# ---- damaged raw data --------------------------------------------------------------------------

def test_a_truncated_gzip_is_named(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes((RAW / path.name).read_bytes()[:2000])
    with pytest.raises(DataFileError, match=f"'{path}': the gzip stream ends early: the file is truncated"):
        read_idx(path, 1)


def test_an_idx_file_cut_inside_its_header_is_named(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(RAW / path.name) as fh:
        path.write_bytes(gzip.compress(fh.read(10)))
    with pytest.raises(DataFileError, match=f"'{path}': cut inside its header \\(10 of 16 bytes\\)"):
        read_idx(path, 3)


def test_a_file_that_is_not_idx_is_named(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"<html>Not Found</html>")  # what a failed download leaves
    with pytest.raises(DataFileError, match=f"'{path}': not an unsigned-byte IDX file \\(bad magic number"):
        read_idx(path, 1)


def test_an_idx_file_with_missing_bytes_is_named(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    with gzip.open(RAW / f"{path.name}.gz") as fh:
        path.write_bytes(fh.read()[:-7])
    with pytest.raises(DataFileError, match="truncated: its header says 10000 = 10000 bytes, it holds 9993"):
        read_idx(path, 1)


def _raw_folder(tmp_path: Path, **swap: str) -> Path:
    """The dataset's four files as links, some pointing at the wrong file."""
    folder = tmp_path / "raw"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (folder / f"{name}.gz").symlink_to(RAW / f"{swap.get(name, name)}.gz")
    return folder


def test_a_labels_file_in_place_of_images_is_named(tmp_path):
    folder = _raw_folder(tmp_path, **{"t10k-images-idx3-ubyte": "t10k-labels-idx1-ubyte"})
    with pytest.raises(DataFileError, match="t10k-images-idx3-ubyte.gz': holds labels \\(1 dimension\\) where "
                                            "images \\(3 dimensions\\) belong"):
        load_raw("fashion_mnist", str(folder), False, tmp_path)


def test_images_and_labels_of_different_counts_are_named(tmp_path):
    folder = _raw_folder(tmp_path, **{"t10k-labels-idx1-ubyte": "train-labels-idx1-ubyte"})
    with pytest.raises(DataFileError, match="t10k-images-idx3-ubyte.gz' holds 10000 images but .*"
                                            "t10k-labels-idx1-ubyte.gz' 60000 labels"):
        load_raw("fashion_mnist", str(folder), False, tmp_path)


# ---- checks the config alone decides, before any job ---------------------------------------------

def _cfg(*overrides: str):
    return load_config([TINY], list(overrides))


@pytest.mark.parametrize("overrides, key", [
    (["train.attack.steps=0"], "train.attack.steps"),
    (["train.attack.eps=0"], "train.attack.eps"),
    (["train.attack.steps=2", "train.attack.step_size=0.01"], "train.attack.step_size"),
    (["train.batch_size=1024"], "train.batch_size"),
    (["data.train_size=0", "data.val_size=0", "train.batch_size=70000"], "train.batch_size"),
    (["data.train_size=60000"], "data.train_size"),
    (["results_dir=/etc/passwd/results"], "results_dir"),
    (["launcher.log_dir=/sys/advsoup-logs"], "launcher.log_dir"),
    (["data.prepared_dir=/etc/hostname/prepared"], "data.prepared_dir"),
])
def test_preflight_names_the_key_and_the_file(overrides, key):
    with pytest.raises(ConfigError) as exc:
        preflight(_cfg(*overrides), str(TINY))
    msg = str(exc.value)
    assert msg.startswith(f"{TINY}: bad value for '{key}'") and "\n" not in msg


def test_an_unknown_dataset_is_refused_with_the_config():
    with pytest.raises(ConfigError, match="^command line: bad value for 'data.name': unknown dataset 'mnist'"):
        _cfg("data.name=mnist")


def test_preflight_accepts_what_can_run(tmp_path):
    preflight(_cfg(f"results_dir={tmp_path}/new/results"), str(TINY))
    assert not (tmp_path / "new").exists()  # the check makes nothing
    nominal = _cfg("train.attack.steps=0")  # a grid without adversarial training never runs the training attack
    nominal.runs = {k: r for k, r in nominal.runs.items() if r.training == "nominal"}
    preflight(nominal, str(TINY))


def test_an_experiment_file_that_is_not_yaml_is_named_in_one_line(tmp_path):
    exp = tmp_path / "broken.yaml"
    exp.write_text("runs: [token\n  training: cotrain\n")
    with pytest.raises(ConfigError) as exc:
        load_config([exp])
    assert str(exc.value).startswith(f"{exp}: not valid YAML: ") and "line 2" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_an_empty_grid_is_blamed_on_the_experiment_file(tmp_path):
    exp = tmp_path / "empty.yaml"
    exp.write_text("experiment: empty\ndata: {train_size: 512}\n")
    with pytest.raises(ConfigError, match=f"^{exp}: the experiment defines no runs"):
        load_config([exp], ["train.lr=0.01"])


# ---- non-finite losses and weights, damaged training states ----------------------------------------

def test_a_diverging_run_stops_with_a_clear_error_and_keeps_nothing(tmp_path, prepared):
    job = train_job(tmp_path, prepared, "nominal-s0", "train.lr=1e30", "train.warmup_epochs=0", "train.threads=1")
    with pytest.raises(FloatingPointError, match="run nominal-s0: the loss is (nan|inf) at step \\d+ .* training "
                                                 "diverged.*Lower train.lr"):
        train(job)
    left = {p.name for p in job.run_dir.iterdir()}
    assert not left & {"model.safetensors", "model.json", "state.json"}
    assert not job.history_file.exists()


def test_nan_weights_are_refused_at_load(tmp_path):
    model = build_model(ModelConfig(), "vit", "token")
    ckpt.save_model(tmp_path, model, {"family": "vit", "adapter": "token"})
    tensors = ckpt.load_tensors(tmp_path / "model.safetensors")
    tensors["net.head.weight"].fill_(float("nan"))
    # The tampering of the issue: NaN weights with their hash recomputed, so the file passes the hash check.
    ckpt.save_model(tmp_path, _with(model, tensors), {"family": "vit", "adapter": "token"})
    with pytest.raises(ckpt.CheckpointError, match="holds non-finite values \\(NaN or inf\\) in 'net.head.weight'"):
        ckpt.load_weights(tmp_path, build_model(ModelConfig(), "vit", "token"))


def _with(model: torch.nn.Module, tensors: dict) -> torch.nn.Module:
    model.load_state_dict(tensors)
    return model


def test_a_damaged_training_state_names_the_restart_and_restart_trains_afresh(tmp_path, prepared):
    job = train_job(tmp_path, prepared, "nominal-s0", "train.threads=1", "data.train_size=192")
    train(job, stop_after_steps=2)
    (state,) = job.run_dir.glob("state-*.safetensors")
    state.write_bytes(state.read_bytes()[:-100])  # a copy cut short
    command = f"advsoup train --config {TINY} --run nominal-s0 --restart"
    with pytest.raises(ckpt.CheckpointError) as exc:
        train(job, restart_command=command)
    assert str(exc.value).startswith(f"damaged training state in '{job.run_dir}'")
    assert str(exc.value).endswith(f"To discard it and train the run from the start: {command}")
    train(job, restart=True, restart_command=command)
    log = (job.run_dir / "train.log").read_text()
    assert log.count("resuming") == 0 and (job.run_dir / "model.safetensors").is_file()
    assert not state.exists()


def test_a_restarted_job_requeued_resumes_its_own_state(tmp_path, prepared):
    """A job submitted with --restart carries one token through its requeues: only older states are discarded."""
    job = train_job(tmp_path, prepared, "nominal-s0", "train.threads=1", "data.train_size=192")
    train(job, stop_after_steps=1)  # the state from before the restart
    train(job, stop_after_steps=1, restart="token-1")  # preempted after one step of the restarted run
    assert "resuming" not in (job.run_dir / "train.log").read_text()
    train(job, restart="token-1")  # the requeued job: same token
    assert "resuming nominal-s0 at step 1/3" in (job.run_dir / "train.log").read_text()


# ---- outputs readable by the group -----------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_checkpoints_follow_the_umask_like_every_output(tmp_path, umask, mode):
    model = build_model(ModelConfig(), "vit", "token")
    opt = torch.optim.AdamW(model.parameters())
    old = os.umask(umask)
    try:
        ckpt.save_model(tmp_path, model, {"family": "vit"})
        ckpt.save_state(tmp_path, model, opt, {"step": 0}, {"cpu": torch.get_rng_state()})
    finally:
        os.umask(old)
    files = sorted(tmp_path.iterdir())
    assert {p.name.split("-")[0] for p in files} == {"model.safetensors", "model.json", "state", "state.json"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(mode) for p in files}
