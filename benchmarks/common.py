"""What every benchmark section shares: the demo's config, CPU-time measurement, and the table.

Timing is CPU time of this process (``time.process_time``): on a machine that
other jobs share, a step's CPU time moves far less than its wall time, and with
a fixed number of torch threads the ratio of CPU times is the ratio of work.
Variants are measured interleaved (A B C, A B C, ...) and each ratio is the
median of the per-round ratios, so a load change hits every variant alike.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from advsoup.config import EXPERIMENTS_DIR, Config, load_config


def demo_config() -> Config:
    return load_config([EXPERIMENTS_DIR / "demo.yaml"])


def demo_batch(cfg: Config):
    """One training batch of the demo's shape (random pixels and labels, seeded): what the step benchmarks time."""
    import torch

    m, b = cfg.model, cfg.train.batch_size
    torch.manual_seed(0)
    return torch.rand(b, m.in_chans, m.img_size, m.img_size), torch.randint(0, m.num_classes, (b,))


def cpu_seconds(fn: Callable[[], object], n: int) -> float:
    """CPU seconds of this process per call of ``fn`` over ``n`` calls."""
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n


def interleaved(variants: Dict[str, Callable[[], object]], rounds: int, calls: int,
                warmup: int = 2) -> Dict[str, List[float]]:
    """CPU seconds per call of every variant, ``rounds`` times, the variants taking turns."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    out: Dict[str, List[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for k, fn in variants.items():
            out[k].append(cpu_seconds(fn, calls))
    return out


def ratio(times: Dict[str, List[float]], num: str, den: str) -> float:
    """Median over rounds of time(num) / time(den), each round's pair measured back to back."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def median(xs: List[float]) -> float:
    return statistics.median(xs)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


@dataclass
class Table:
    """Rows of (section, figure, measured, compared with); printed once, at the end."""
    rows: List[tuple] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def add(self, section: str, figure: str, measured: str, compared: str = "") -> None:
        self.rows.append((section, figure, measured, compared))
        print(f"  {figure}: {measured}" + (f"   [{compared}]" if compared else ""), flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def markdown(self, header: Optional[str] = None) -> str:
        lines = [header] if header else []
        lines += ["| section | figure | measured | compared with |", "| --- | --- | --- | --- |"]
        lines += [f"| {s} | {f} | {m} | {c} |" for s, f, m, c in self.rows]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines)
