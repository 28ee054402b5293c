"""Performance measurements of advsoup (`make bench`): one table of ratios measured in one run.

Sections (each a module beside this file; BENCHMARKS.md explains every figure
and what it is compared with):
  train       our training step vs a plain PyTorch loop; co-training vs the cost model (2K + 6) / 3
  eval        clean, PGD and soup-sweep throughput, fused vs two passes, AutoAttack per image
  memory      peak memory at the demo size (measured) and at ViT-B16 224 px (counted on the meta device)
  workflow    snakemake -n on the study grid; no-op snakemake and dvc status on a finished demo
  compile     torch.compile on / off for the training step

Sizes come from params/experiments/demo.yaml. Absolute speeds depend on the
machine and on what else runs on it; ratios of CPU time measured interleaved
are the point (see common.py). The load average is printed before and after.

    python benchmarks/run.py [--only train eval] [--rounds 5] [--threads 1] [--demo-dir DIR]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from common import Table, load  # noqa: E402

SECTIONS = ("train", "eval", "memory", "workflow", "compile")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per ratio (median taken)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: what each job of the demo and study runs with)")
    p.add_argument("--aa-images", type=int, default=20,
                   help="images per AutoAttack cost measurement (fewer overstate the cost per image: small batches)")
    p.add_argument("--aa-attacks", nargs="+", default=["apgd-ce", "apgd-t", "fab-t", "square"],
                   help="AutoAttack's attacks to time (FAB-T and Square are the slow part of the standard version)")
    p.add_argument("--demo-dir", type=Path, help="a checkout where the demo has finished (workflow section)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = (f"{_cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} torch "
               f"thread(s), Python {platform.python_version()}")
    print(f"advsoup benchmarks on {machine}; load average (1/5 min) {load()}", flush=True)
    table = Table()
    t0 = time.time()
    if "train" in args.only:
        import train_step
        train_step.run(table, args.rounds)
    if "eval" in args.only:
        import evaluation
        evaluation.run(table, args.rounds, args.aa_images, args.aa_attacks)
    if "memory" in args.only:
        import memory
        memory.run(table)
    if "workflow" in args.only:
        import workflow
        workflow.run(table, args.demo_dir)
    if "compile" in args.only:
        import compiled
        compiled.run(table, args.rounds)
    table.note(f"machine: {machine}; load average at the end {load()}; {time.time() - t0:.0f} s in all")
    print()
    print(table.markdown())


if __name__ == "__main__":
    main()
