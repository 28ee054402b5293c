"""Where a job runs: device, threads, torch.distributed from the submitit/SLURM environment, preemption.

Gradients are averaged with an explicit all-reduce after backward rather than
through DistributedDataParallel: PGD calls the model many times per step
asking autograd for input gradients only, which DDP's reducer does not expect.

Preemption: submitit's handler for SIGUSR2 (SLURM's warning before the time
limit, or a cluster's preemption notice) checkpoints and requeues the job the
moment the signal lands, e.g. between the two files of a training state. A
trainer that asks for it (``preemptible=True``) gets SIGUSR2 and SIGTERM noted
instead; at its next step boundary it saves and calls :meth:`Runtime.hand_over`:
after SIGUSR2 submitit requeues the job; after SIGTERM alone (scancel, or a
preemption that SLURM requeues itself) the process just ends. Requeueing on
SIGTERM would bring back jobs that a user or Snakemake cancelled.
"""
from __future__ import annotations

import logging
import os
import platform
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, NoReturn, Optional

import torch
import torch.distributed as dist

from .launch import JOB_CPUS_ENV

log = logging.getLogger("advsoup")


class Preemption:
    """SIGUSR2 and SIGTERM, held until the trainer has saved."""

    def __init__(self) -> None:
        self.requeue = False  # SIGUSR2 came
        self.stop = False  # SIGTERM came
        self._submitit_handler: Optional[Callable[[int, Any], Any]] = None

    def install(self) -> None:
        """Take over the signals inside a submitit job; elsewhere (inline, tests) leave them alone."""
        import submitit

        usr = submitit.JobEnvironment._usr_sig()
        handler = signal.getsignal(usr)
        if not callable(handler) or threading.current_thread() is not threading.main_thread():
            return
        self._submitit_handler = handler
        for s in (usr, signal.SIGTERM):
            signal.signal(s, self._note)

    def _note(self, signum: int, _frame: Any) -> None:
        requeue = signum != signal.SIGTERM
        if not (self.requeue or self.stop):
            log.warning("received %s: saving the training state after this step, then %s",
                        signal.Signals(signum).name, "requeueing" if requeue else "stopping")
        self.requeue, self.stop = self.requeue or requeue, self.stop or not requeue

    def requeue_job(self) -> None:
        """submitit's handler: on rank 0 it calls Task.checkpoint, requeues the job and exits."""
        import submitit

        assert self._submitit_handler is not None
        self._submitit_handler(submitit.JobEnvironment._usr_sig(), None)


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    preemption: Preemption = field(default_factory=Preemption)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sync_gradients(self, model: torch.nn.Module) -> None:
        if self.world_size == 1:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def average(self, stats: Dict[str, float]) -> Dict[str, float]:
        """Per-rank statistics of equal shards -> their mean over ranks."""
        if self.world_size == 1:
            return stats
        values = torch.tensor(list(stats.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return dict(zip(stats, (values / self.world_size).tolist()))

    def preempted(self) -> bool:
        """True on every rank once any rank got a signal, so that all stop at the same step."""
        p = self.preemption
        if self.world_size == 1:
            return p.requeue or p.stop
        flags = torch.tensor([float(p.requeue), float(p.stop)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        # Only what went into the reduction decides, so every rank answers the same. A signal handled while
        # it ran is not in it, and must not be overwritten either: it stays noted for the next step's check.
        agreed = bool(flags[0]), bool(flags[1])
        p.requeue, p.stop = p.requeue or agreed[0], p.stop or agreed[1]
        return any(agreed)

    def hand_over(self) -> NoReturn:
        """After saving: requeue the job (SIGUSR2) or end (SIGTERM alone); this process ends either way."""
        if self.world_size > 1:
            dist.barrier()  # rank 0 has finished writing the state
        if self.preemption.requeue:
            self.preemption.requeue_job()  # rank 0 does not come back from this
        log.info("rank %d stops: training state saved", self.rank)
        raise SystemExit(0 if self.preemption.requeue else 128 + signal.SIGTERM)


def set_threads(threads: int, tasks_on_node: int = 1) -> None:
    """torch threads: the configured number, else the CPUs this task was given (by SLURM or the local launcher),
    else the cores it may run on, shared by the node's tasks."""
    n = (threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or int(os.environ.get(JOB_CPUS_ENV, 0))
         or len(os.sched_getaffinity(0)) // tasks_on_node)
    torch.set_num_threads(max(1, n))


def platform_record() -> Dict[str, Any]:
    """What computed a result besides the code and the config, for its record: the same code and seed give bitwise
    the same numbers only on the same kind of machine (torch picks kernels by the CPU's vector instructions
    (``cpu_capability``) or the GPU, and sums in an order that depends on the thread count)."""
    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": _cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "gpu": torch.cuda.get_device_name() if cuda else None, "threads": torch.get_num_threads(),
            "world_size": dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:  # Linux: the marketing name; platform.processor() is often just the arch
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _port(job_id: str) -> int:
    # Below Linux's ephemeral range (32768+); tasks of one job agree on it, jobs sharing a node rarely collide.
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    return 20000 + int(digits) % 10000


def runtime_from_env(threads: int = 0, preemptible: bool = False) -> Runtime:
    """One process, or one rank of the tasks submitit started (SLURM tasks or local subprocesses).

    ``preemptible``: the caller checks :meth:`Runtime.preempted` between steps and saves.
    """
    env = None
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        env = submitit.JobEnvironment()
    rank, world_size, local_rank = (env.global_rank, env.num_tasks, env.local_rank) if env else (0, 1, 0)
    set_threads(threads, max(1, world_size // (env.num_nodes if env else 1)))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    rt = Runtime(device, rank, world_size)
    if preemptible:
        rt.preemption.install()
    if world_size > 1 and not dist.is_initialized():
        host = env.hostnames[0] if env.num_nodes > 1 else "127.0.0.1"
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://{host}:{_port(env.job_id)}",
                                rank=rank, world_size=world_size)
    return rt
