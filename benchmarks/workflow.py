"""How long the workflow tools take before any job runs: Snakemake's dry run, a no-op run, `dvc status`.

Each command runs as a child process; its wall time and its CPU time (user +
system of the children) are reported. The dry run of the study's grid runs in
an empty directory, so every job of the grid is planned. The no-op run and
`dvc status` need a finished demo (``--demo-dir``, e.g. a git worktree where
the demo's Snakemake command ran): a no-op Snakemake run there plans nothing.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd: List[str], cwd: Path) -> Tuple[float, float, str]:
    """Wall seconds, CPU seconds (children) and the output's last line of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{out.stderr[-2000:]}")
    lines = (out.stdout + out.stderr).strip().splitlines()
    return wall, cpu, lines[-1] if lines else ""


def run(table, demo_dir: Optional[Path], study: str = "study") -> None:
    sec = "workflow tools (target: under 5 s each)"
    smk = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile")]
    with tempfile.TemporaryDirectory() as empty:
        wall, cpu, last = timed(smk + ["-n", "--quiet", "rules", "--configfile",
                                       str(REPO / "params" / "experiments" / f"{study}.yaml"),
                                       "--directory", empty], REPO)
        table.add(sec, f"snakemake -n on the {study} grid (every job planned)", f"{wall:.1f} s wall, {cpu:.1f} s CPU")
    if demo_dir is None:
        table.note("no-op snakemake and dvc status: skipped (give --demo-dir, a checkout with a finished demo)")
        return
    wall, cpu, last = timed(smk + ["--cores", "2", "--configfile", "params/experiments/demo.yaml"], demo_dir)
    if "Nothing to be done" not in last and "nothing to be done" not in last.lower():
        table.note(f"the no-op snakemake in {demo_dir} was not a no-op: {last}")
    table.add(sec, "snakemake on a finished demo (no-op)", f"{wall:.1f} s wall, {cpu:.1f} s CPU")
    wall, cpu, _ = timed([str(BIN / "dvc"), "status"], demo_dir)
    table.add(sec, "dvc status on a finished demo", f"{wall:.1f} s wall, {cpu:.1f} s CPU")
