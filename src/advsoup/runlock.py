"""One writer per run: a lock file in the run folder, held by the training process.

Two trainers of one run would overwrite each other's state and weights and
leave a folder whose config and weights come from different runs. The lock
is a file created with ``O_CREAT | O_EXCL``, which is atomic on local disks
and on the shared file systems clusters use (NFSv3+, Lustre, GPFS, BeeGFS),
unlike flock/fcntl locks that NFS may not carry between hosts. It records who
holds it (host, pid, SLURM job id, start time) so a refusal names the holder.

A lock outlives a process killed hard (SIGKILL, node failure). It is stale,
and taken over, only when that is certain:
- same host (same host name and boot): the holder's process is gone (its pid
  is free, a zombie, or another process's now: another start time);
- another host: the holder is an earlier start of this very SLURM job (same
  job id, lower SLURM_RESTART_COUNT: SLURM requeues a job only once its
  previous start has ended).
A lock held from another host by another job cannot be judged from here (its
pid means nothing on this host), and neither can one from before a reboot
(twin host names would look the same), so it is refused with the way to
check and clear it by hand. Takeover is serialised by a second O_EXCL file, so two
processes that find the same stale lock do not both take it.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

LOCK_NAME = "train.lock"
# The holder writes its record right after creating the file: a reader waits this long for it.
RECORD_WAIT_S = 2.0


class RunLocked(RuntimeError):
    """The run folder is held by another trainer (or its lock cannot be judged)."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> Optional[list]:
    """Fields of /proc/<pid>/stat after the command name (state is [0], start time [19]); None if absent."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (tells a reused pid apart); '' without /proc."""
    stat = _proc_stat(pid)
    return stat[19] if stat else ""


def process_alive(pid: int, start: str) -> bool:
    """Whether the process that wrote a lock on this host still runs (a reused pid does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    stat = _proc_stat(pid)
    if stat is None:  # no /proc (not Linux): the pid exists, trust it
        return True
    return stat[0] not in ("Z", "X") and (not start or stat[19] == start)


def _here(holder: Dict[str, Any]) -> bool:
    """Whether a lock was written on this machine since it booted: only then do its pid and start time mean
    anything here."""
    return holder.get("host") == socket.gethostname() and holder.get("boot_id", "") == _boot_id()


def _restarts() -> int:
    """How often SLURM has restarted (requeued) this job; 0 for its first start and outside SLURM."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def _describe(holder: Dict[str, Any]) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, since {holder.get('started')}"


class RunLock:
    """``with RunLock(run_dir):`` holds the run for this process; released on exit, exceptions included."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.token = uuid.uuid4().hex
        self.held = False

    def _record(self) -> Dict[str, Any]:
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
                "slurm_restart": _restarts(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "proc_start": start_ticks(pid),
                "boot_id": _boot_id(), "token": self.token}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(self._record()) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.held = True
        return True

    def _read(self) -> tuple[str, Optional[Dict[str, Any]]]:
        """The lock's text and record; None when it vanished. Waits briefly for a record being written."""
        end = time.monotonic() + RECORD_WAIT_S
        while True:
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                return "", None
            try:
                return text, json.loads(text)
            except json.JSONDecodeError:
                if time.monotonic() > end:
                    raise RunLocked(f"lock file '{self.path}' holds no readable record (its writer died while "
                                    f"creating it?); if no trainer of this run is running, delete it and retry") \
                        from None
                time.sleep(0.05)

    def _stale(self, holder: Dict[str, Any]) -> bool:
        if _here(holder):
            return not process_alive(int(holder.get("pid", 0)), holder.get("proc_start", ""))
        # An earlier start of this job, requeued. Two trainers inside one allocation share the job id, not this.
        job = os.environ.get("SLURM_JOB_ID", "")
        return bool(job) and holder.get("slurm_job_id") == job and int(holder.get("slurm_restart", 0)) < _restarts()

    def _take_over(self, stale_text: str) -> bool:
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            raise RunLocked(f"another process is taking over the stale lock '{self.path}'; retry in a moment "
                            f"(if '{guard}' is older than a minute, its taker died: delete it)") from None
        try:
            try:
                if self.path.read_text() == stale_text:  # nobody took it since we judged it stale
                    self.path.unlink()
            except FileNotFoundError:
                pass
            return self._create()
        finally:
            os.close(fd)
            guard.unlink()

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a lock released or taken over while we look: look again
            if self._create():
                return self
            text, holder = self._read()
            if holder is None:
                continue
            if self._stale(holder):
                if self._take_over(text):
                    return self
                continue
            where = "this host" if _here(holder) else "another host or boot, which this process cannot check"
            raise RunLocked(
                f"run folder '{self.path.parent}' is being trained by another process ({_describe(holder)}, on "
                f"{where}): wait for it or stop it (kill {holder.get('pid')}"
                + (f" / scancel {holder['slurm_job_id']}" if holder.get("slurm_job_id") else "")
                + f"); if it is gone for sure, delete '{self.path}'")
        raise RunLocked(f"lock file '{self.path}' kept changing while it was taken; retry")

    def release(self) -> None:
        """Remove the lock if it is still ours (a lock someone took over as stale is theirs now)."""
        if not self.held:
            return
        self.held = False
        try:
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()
        except (FileNotFoundError, json.JSONDecodeError):
            pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextmanager
def hold_run(run_dir: Path, rt: Any) -> Iterator[None]:
    """Rank 0 of runtime ``rt`` holds the run's lock for the block; every rank raises when it could not.

    All ranks agree first: a refused rank 0 alone would leave the others waiting in a collective forever.
    """
    lock, refused = RunLock(run_dir), None
    if rt.is_main:
        try:
            lock.acquire()
        except RunLocked as exc:
            refused = exc
    if rt.average({"refused": float(refused is not None)})["refused"] > 0:
        raise refused or RunLocked(f"run folder '{run_dir}' is held by another trainer (see rank 0's log)")
    try:
        yield
    finally:
        lock.release()
