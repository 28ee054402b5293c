"""One launcher for every compute stage: submitit on SLURM, as local subprocesses, or inline.

Snakemake's rule calls ``advsoup <stage>``, which builds the job and calls
:func:`submit`: it submits a :class:`Task`, blocks until the job ends, and on
failure raises :class:`LaunchError` carrying the tail of the job's log. A
Task is requeued by submitit on preemption (SIGUSR2) or time-out and the
resubmitted training resumes from its last saved state.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any, Callable

import submitit
from submitit.helpers import DelayedSubmission

from .config import LauncherConfig, ResourcesConfig


class LaunchError(RuntimeError):
    """A job that failed; the message holds its id, its log path and the log's tail."""


class Task:
    """A picklable call ``fn(job)`` that submitit requeues instead of losing on preemption."""

    def __init__(self, fn: Callable[[Any], Any], job: Any) -> None:
        self.fn, self.job = fn, job

    def __call__(self) -> Any:
        return self.fn(self.job)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        # The trainer saves its state atomically as it goes; the resubmitted task resumes from it.
        return DelayedSubmission(Task(self.fn, self.job))


def executor_for(cfg: LauncherConfig, res: ResourcesConfig, name: str, folder: Path) -> submitit.Executor:
    folder = folder / "%j"
    if cfg.executor == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=res.time_min, gpus_per_node=res.gpus, cpus_per_task=res.cpus,
                             tasks_per_node=max(1, res.gpus))
        return ex
    ex = submitit.SlurmExecutor(folder=folder)
    extra = {k: v for k, v in (("partition", cfg.partition), ("account", cfg.account), ("qos", cfg.qos),
                               ("constraint", cfg.constraint)) if v}
    ex.update_parameters(
        job_name=name, time=res.time_min, cpus_per_task=res.cpus, mem=f"{int(res.mem_gb * 1024)}M",
        ntasks_per_node=max(1, res.gpus), gpus_per_node=res.gpus or None, signal_delay_s=120, **extra)
    return ex


def log_tail(job: submitit.Job, lines: int = 40) -> str:
    text = ""
    for getter in (job.stderr, job.stdout):
        try:
            text = getter() or ""
        except Exception:  # the log may not exist when the job never started
            text = ""
        if text.strip():
            break
    return "\n".join(text.strip().splitlines()[-lines:])


def submit(fn: Callable[[Any], Any], job: Any, cfg: LauncherConfig, res: ResourcesConfig, name: str,
           folder: Path, echo: Callable[[str], None] = print) -> Any:
    """Run ``fn(job)`` with the configured executor and wait for its result.

    ``folder`` holds submitit's files (one sub-folder per job id); it must be on
    a file system that the compute nodes share.
    """
    if cfg.executor == "inline":
        return fn(job)
    ex = executor_for(cfg, res, name, folder)
    sub = ex.submit(Task(fn, job))
    echo(f"submitted {name} as {cfg.executor} job {sub.job_id}; log: {sub.paths.stderr}")

    def cancel(signum: int, _frame: Any) -> None:  # Snakemake stopping the rule stops the job too
        sub.cancel(check=False)
        raise KeyboardInterrupt(f"signal {signum}: cancelled job {sub.job_id}")

    previous = {s: signal.signal(s, cancel) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not sub.done():
            time.sleep(cfg.poll_seconds)
        try:
            result = sub.result()
            echo(f"job {sub.job_id} done; its log:\n{log_tail(sub, lines=10_000)}")
            return result
        except Exception as exc:
            raise LaunchError(f"job {sub.job_id} ({name}) failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                              f"\nlog: {sub.paths.stderr}\n--- last lines ---\n{log_tail(sub)}") from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
