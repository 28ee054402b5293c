"""Mean and spread over seeds, draws or shifts: one spelling for every table and summary."""
from __future__ import annotations

import statistics
from typing import Dict, Iterable


def mean_std(values: Iterable[float]) -> Dict[str, float]:
    """{"mean", "std"} rounded to 5 digits; the sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values]
    return {"mean": round(statistics.fmean(vals), 5),
            "std": round(statistics.stdev(vals), 5) if len(vals) > 1 else 0.0}
