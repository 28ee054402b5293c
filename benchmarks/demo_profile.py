"""Where a finished demo's time went, per job, and its expected wall time on an idle machine.

Reads, in a checkout where the demo's Snakemake command has run:
  * each job's Snakemake benchmark file (results/<exp>/logs/benchmarks/*.tsv:
    wall seconds, CPU seconds, peak memory);
  * the newest Snakemake log with finished jobs (.snakemake/log/): every job,
    its inputs and outputs (hence the dependencies), the wall time of the jobs
    without a benchmark file (the small report jobs) and of the whole run.
Then it replays the DAG on ``--cores`` cores, each job taking its CPU time
(every demo job runs one torch thread, so on an idle core its wall time is
about its CPU time; on a loaded machine CPU time is inflated too, so the
estimate errs high), jobs that others wait on first, as cores free up.

    python benchmarks/demo_profile.py DEMO_DIR [--cores 2] [--experiment demo]
"""
from __future__ import annotations

import argparse
import csv
import re
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Set, Tuple


def parse_log(demo_dir: Path) -> Tuple[Dict[str, dict], float]:
    """The jobs of the newest Snakemake run: name ('rule' or 'rule:run'), inputs, outputs, wall seconds."""
    logs = [p for p in (demo_dir / ".snakemake" / "log").glob("*.snakemake.log")
            if "Finished jobid" in p.read_text()]
    if not logs:
        raise SystemExit(f"no Snakemake log with a finished job in {demo_dir}/.snakemake/log")
    text = max(logs, key=lambda p: p.stat().st_mtime).read_text()
    stamp = first = None
    by_id: Dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        if m := re.match(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", line):
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            first = first or stamp
        elif m := re.match(r"(?:local)?rule (\w+):", line):
            cur = {"rule": m.group(1), "run": None, "inputs": [], "outputs": [], "start": stamp}
        elif cur is not None and (m := re.match(r"\s+(input|output): (.*)", line)):
            cur[m.group(1) + "s"] = [f.strip() for f in m.group(2).split(",")]
        elif cur is not None and (m := re.match(r"\s+wildcards: run=(\S+)", line)):
            cur["run"] = m.group(1)
        elif cur is not None and (m := re.match(r"\s+jobid: (\d+)", line)):
            by_id[m.group(1)] = cur
        elif (m := re.match(r"Finished jobid: (\d+)", line)) and m.group(1) in by_id:
            by_id[m.group(1)]["wall"] = (stamp - by_id[m.group(1)]["start"]).total_seconds()
    jobs = {}
    for j in by_id.values():
        j["name"] = j["rule"] + (f":{j['run']}" if j["run"] else "")
        jobs[j["name"]] = j
    return jobs, ((stamp - first).total_seconds() if first else 0.0)


def dependencies(jobs: Dict[str, dict]) -> Dict[str, Set[str]]:
    """A job depends on the jobs that write its inputs (a directory output covers the files under it)."""
    def writes(job: dict, f: str) -> bool:
        return any(f == o or f.startswith(o.rstrip("/") + "/") for o in job["outputs"])
    return {n: {m for m, other in jobs.items() if m != n and any(writes(other, f) for f in j["inputs"])}
            for n, j in jobs.items()}


def benchmarks(demo_dir: Path, experiment: str) -> Dict[str, Dict[str, float]]:
    out = {}
    for f in sorted((demo_dir / "results" / experiment / "logs" / "benchmarks").glob("*.tsv")):
        row = next(csv.DictReader(f.open(), delimiter="\t"))
        stage, _, run = f.stem.partition("-")
        out[stage + (f":{run}" if run else "")] = {"wall": float(row["s"]), "cpu": float(row["cpu_time"]),
                                                   "rss_mb": float(row["max_rss"])}
    return out


def _waiting_on(job: str, deps: Dict[str, Set[str]]) -> int:
    """How many jobs wait on this one, directly or not."""
    seen: Set[str] = set()
    frontier = [j for j, ds in deps.items() if job in ds]
    while frontier:
        j = frontier.pop()
        if j not in seen:
            seen.add(j)
            frontier += [k for k, ds in deps.items() if j in ds]
    return len(seen)


def replay(deps: Dict[str, Set[str]], cost: Dict[str, float], cores: int) -> float:
    """Finish time of the DAG on `cores` cores, one core per job, each started as soon as it can."""
    pending = sorted(cost, key=lambda j: (-_waiting_on(j, deps), -cost[j]))
    done_at: Dict[str, float] = {}
    busy: List[float] = []  # finish times of the running jobs
    now = 0.0
    while pending:
        busy = [t for t in busy if t > now]
        ready = [j for j in pending if all(done_at.get(d, float("inf")) <= now for d in deps[j])]
        if ready and len(busy) < cores:
            job = ready[0]
            done_at[job] = now + cost[job]
            busy.append(done_at[job])
            pending.remove(job)
        else:
            now = min(t for t in list(done_at.values()) + busy if t > now)
    return max(done_at.values())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("demo_dir", type=Path)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--experiment", default="demo")
    args = p.parse_args(argv)
    jobs, run_wall = parse_log(args.demo_dir)
    deps = dependencies(jobs)
    bench = benchmarks(args.demo_dir, args.experiment)
    cost, rows = {}, []
    for name, job in jobs.items():
        b = bench.get(name)
        wall = job.get("wall", 0.0)
        cost[name] = b["cpu"] if b else wall
        rows.append((name, b["wall"] if b else wall, b["cpu"] if b else None, b["rss_mb"] if b else None))
    rows.sort(key=lambda r: -(r[2] if r[2] is not None else r[1]))
    print("| job | wall s (this run) | CPU s | peak RSS MB |\n| --- | ---: | ---: | ---: |")
    for name, wall, cpu, rss in rows:
        print(f"| {name} | {wall:.0f} | {'' if cpu is None else f'{cpu:.0f}'} | "
              f"{'' if rss is None else f'{rss:.0f}'} |")
    est = replay(deps, cost, args.cores)
    print(f"\nthis run: {run_wall / 60:.1f} min wall; the jobs' CPU time (report jobs: their wall time) "
          f"{sum(cost.values()) / 60:.1f} min; replayed on {args.cores} idle cores: {est / 60:.1f} min")


if __name__ == "__main__":
    main()
