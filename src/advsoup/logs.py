"""Logging to the run's log file and the console, and tqdm progress that suits both."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Iterable, Optional, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
LOGGER = "advsoup"


def setup_logging(log_file: Optional[Path] = None) -> logging.Logger:
    """Log INFO to stderr and, if given, append to ``log_file`` (the run's log)."""
    log = logging.getLogger(LOGGER)
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.propagate = False
    return log


def progress(it: Iterable[T], desc: str, total: Optional[int] = None) -> Iterable[T]:
    """A tqdm bar; when stderr is a file (Snakemake/SLURM logs) it updates every 10 s, not per step."""
    tty = sys.stderr.isatty()
    return tqdm(it, desc=desc, total=total, mininterval=0.1 if tty else 10.0, dynamic_ncols=tty,
                file=sys.stderr, leave=tty)
