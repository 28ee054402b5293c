"""One launcher for every compute stage: submitit on SLURM or as local subprocesses.

Snakemake's rule calls ``advsoup <stage>``, which calls :func:`submit` (see
cli.JOB_STAGES): it submits a :class:`Task`, blocks until the job ends, and
on failure raises :class:`LaunchError` carrying the tail of the job's log.

Requeue: SLURM sends SIGUSR2 ``SIGNAL_DELAY_S`` before the time limit (and a
cluster's preemption sends SIGTERM or SIGUSR2). submitit then calls
:meth:`Task.checkpoint` and requeues the job; the resubmitted task calls the
same function again, and training resumes from the state it saved when the
signal arrived (see runtime.Preemption); the evaluate and soups stages continue
from the batches their partial file holds (advsoup.robust.stream). Other stages restart from scratch.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError
from submitit.helpers import DelayedSubmission

from .config import LauncherConfig, ResourcesConfig
from .runlock import process_alive, start_ticks

JOB_CPUS_ENV = "ADVSOUP_JOB_CPUS"  # a local job's launcher.resources.<stage>.cpus (see Task)

# Seconds between SLURM's warning signal and its time limit: enough to finish a step and save.
SIGNAL_DELAY_S = 120
# Ask SLURM for the state at least this often (submitit alone may wait 10 min to notice a job killed hard).
STATE_CHECK_S = 60
# How often a local job looks whether the process that submitted it still runs.
WATCH_S = 1.0


class LaunchError(RuntimeError):
    """A job that failed; the message holds its id, its log path and the log's tail."""


def watch_submitter(pid: int, start: str, period_s: float = WATCH_S) -> threading.Thread:
    """Kill this process once process ``pid`` (started at ``start``) is gone.

    submitit's local jobs outlive the process that submitted them: after a `kill -9` of `advsoup` they would
    keep training and saving while a rerun races them. SIGKILL, not SIGTERM: submitit's jobs ignore SIGTERM,
    and the training state saved last stays whole (checkpoints are atomic), so a rerun resumes from it.
    """
    def watch() -> None:
        while process_alive(pid, start):
            time.sleep(period_s)
        print(f"advsoup: the process that submitted this job (pid {pid}) is gone: stopping the job",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="advsoup-submitter-watch", daemon=True)
    thread.start()
    return thread


class Task:
    """A picklable call ``fn(job)`` that submitit requeues instead of losing on preemption.

    ``submitter``: (pid, start time) of the process a local job must not outlive (see watch_submitter).
    ``cpus``: the CPUs per task a local job was given (SLURM says it to its jobs itself: SLURM_CPUS_PER_TASK);
    ``runtime.set_threads`` reads it, so two one-CPU local jobs do not each start one thread per core.
    """

    def __init__(self, fn: Callable[[Any], Any], job: Any, submitter: Optional[Tuple[int, str]] = None,
                 cpus: int = 0) -> None:
        self.fn, self.job, self.submitter, self.cpus = fn, job, submitter, cpus

    def __call__(self) -> Any:
        if self.submitter is not None:
            watch_submitter(*self.submitter)
        if self.cpus:
            os.environ[JOB_CPUS_ENV] = str(self.cpus)
        return self.fn(self.job)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        # The state lives in the job's files (training saves it on the signal), not in this object.
        return DelayedSubmission(Task(self.fn, self.job, self.submitter, self.cpus))


def tasks_per_node(res: ResourcesConfig, distributed: bool) -> int:
    """Processes per node: one per GPU (or ``tasks``) for distributed stages, else one."""
    if not distributed:
        return 1
    return res.tasks or max(1, res.gpus)


def slurm_parameters(cfg: LauncherConfig, res: ResourcesConfig, name: str, distributed: bool = False) -> dict:
    """The sbatch options of a job: its stage's resources and the site's settings (no cluster needed)."""
    site = {k: v for k, v in (("partition", cfg.partition), ("account", cfg.account), ("qos", cfg.qos),
                              ("constraint", cfg.constraint)) if v}
    return dict(
        job_name=name, time=res.time_min, nodes=res.nodes, ntasks_per_node=tasks_per_node(res, distributed),
        cpus_per_task=res.cpus, mem=f"{int(res.mem_gb * 1024)}M", gpus_per_node=res.gpus or None,
        signal_delay_s=SIGNAL_DELAY_S, setup=list(cfg.setup) or None,
        additional_parameters=dict(cfg.sbatch) or None, **site)


def slurm_script(cfg: LauncherConfig, res: ResourcesConfig, name: str, folder: Path,
                 distributed: bool = False, command: str = "python -u -m submitit.core._submit") -> str:
    """The sbatch script a job would get, rendered on any machine.

    submitit's SlurmExecutor refuses to exist where ``srun`` is missing, so this renders with the
    function it uses itself (``_make_sbatch_string``) to check resources on a laptop or in tests.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=command, folder=folder / "%j",
                               **slurm_parameters(cfg, res, name, distributed))


def executor_for(cfg: LauncherConfig, res: ResourcesConfig, name: str, folder: Path,
                 distributed: bool = False) -> submitit.Executor:
    folder = folder / "%j"
    if cfg.executor == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=res.time_min, gpus_per_node=res.gpus,
                             tasks_per_node=tasks_per_node(res, distributed))
        return ex
    if cfg.executor != "slurm":
        raise LaunchError(f"{name}: launcher.executor '{cfg.executor}' submits no job (local or slurm do)")
    ex = submitit.SlurmExecutor(folder=folder)
    ex.update_parameters(**slurm_parameters(cfg, res, name, distributed))
    return ex


def log_tail(job: submitit.Job, lines: int = 40) -> str:
    """The job's last log lines: stderr (tracebacks, the stage's log), topped up with stdout's when short."""
    def read(getter: Callable[[], Any]) -> list:
        try:
            return (getter() or "").strip().splitlines()
        except Exception:  # the log may not exist when the job never started
            return []

    err = read(job.stderr)[-lines:]
    out = read(job.stdout)[len(err) - lines:] if len(err) < lines else []
    if out and err:
        return "\n".join(["(stdout)", *out, "(stderr)", *err])
    return "\n".join(out or err)


def _reason(exc: Exception, sub: submitit.Job) -> str:
    """One line: the exception the job raised, or how it ended without a result."""
    if isinstance(exc, FailedJobError):  # the message holds the job's traceback between dashed lines
        trace = str(exc).split("----------------------")[1] if "------" in str(exc) else str(exc)
        return [line for line in trace.splitlines() if line.strip()][-1].strip()
    if isinstance(exc, UncompletedJobError):
        return (f"it ended without a result (state {sub.state}): killed (time limit, memory, scancel, node "
                "failure) or crashed hard")
    return str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)


def start(fn: Callable[[Any], Any], job: Any, cfg: LauncherConfig, res: ResourcesConfig, name: str,
          folder: Path, distributed: bool = False, echo: Callable[[str], None] = print) -> submitit.Job:
    """Submit ``fn(job)``; ``folder`` (one sub-folder per job id) must be on a file system the nodes share."""
    # A local job runs on this machine and must die with this process; a SLURM job belongs to SLURM.
    local = cfg.executor == "local"
    submitter = (os.getpid(), start_ticks(os.getpid())) if local else None
    sub = executor_for(cfg, res, name, folder, distributed).submit(Task(fn, job, submitter, res.cpus if local else 0))
    echo(f"submitted {name} as {cfg.executor} job {sub.job_id}; log: {sub.paths.stderr}")
    return sub


def wait(sub: submitit.Job, name: str, cfg: LauncherConfig, echo: Callable[[str], None] = print) -> Any:
    """Block until the job ends (through requeues); its result, or LaunchError with its log's tail."""
    def cancel(signum: int, _frame: Any) -> None:  # Snakemake stopping the rule stops the job too
        sub.cancel(check=False)
        raise KeyboardInterrupt(f"signal {signum}: cancelled job {sub.job_id}")

    previous = {s: signal.signal(s, cancel) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        checked = time.monotonic()
        while True:
            force = time.monotonic() - checked > STATE_CHECK_S
            checked = time.monotonic() if force else checked
            if sub.done(force_check=force):
                break
            time.sleep(cfg.poll_seconds)
        try:
            result = sub.results()[0]  # rank 0's (every task returns)
        except Exception as exc:
            raise LaunchError(f"job {sub.job_id} ({name}) failed: {_reason(exc, sub)}\nlog: {sub.paths.stderr}\n"
                              f"--- last lines of the job's log ---\n{log_tail(sub)}") from None
        echo(f"job {sub.job_id} done; its log:\n{log_tail(sub, lines=10_000)}")
        return result
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def submit(fn: Callable[[Any], Any], job: Any, cfg: LauncherConfig, res: ResourcesConfig, name: str,
           folder: Path, distributed: bool = False, echo: Callable[[str], None] = print) -> Any:
    """Run ``fn(job)`` as a job of the configured executor and wait for its result.

    ``distributed``: start one task per GPU (or ``res.tasks``); ``fn`` must split its work over the ranks.
    """
    return wait(start(fn, job, cfg, res, name, folder, distributed, echo), name, cfg, echo)
