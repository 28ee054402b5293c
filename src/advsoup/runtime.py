"""Where a job runs: device, threads, and torch.distributed from the SLURM/submitit environment.

Gradients are averaged with an explicit all-reduce after backward rather than
through DistributedDataParallel: PGD calls the model many times per step
asking autograd for input gradients only, which DDP's reducer does not expect.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

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


def set_threads(threads: int) -> None:
    """torch threads: the configured number, else the CPUs this job was given."""
    n = threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, n))


def runtime_from_env(threads: int = 0) -> Runtime:
    """Single process by default; distributed when submitit/SLURM started several tasks."""
    set_threads(threads)
    device = torch.device("cuda", _local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    world_size = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    if world_size == 1:
        return Runtime(device)
    if not dist.is_initialized():
        try:
            import submitit

            env = submitit.JobEnvironment()
            rank, world_size = env.global_rank, env.num_tasks
            os.environ.setdefault("MASTER_ADDR", env.hostnames[0])
        except RuntimeError:  # not inside a submitit job: torchrun-style variables
            rank = int(os.environ["RANK"])
        os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 1000))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return Runtime(device, dist.get_rank(), dist.get_world_size())


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
