"""A result never outlives its inputs: what every output was computed from, and whether it still holds.

Every stage's record (its metric JSON, or checkpoint.json for training) carries
``provenance``: the digest of the config slice the stage read, the digests of
its upstream stages' slices, and the sha256 of every checkpoint it loaded.
Whether an output is current is decided from those records alone, so it holds
in a fresh clone, after ``dvc pull`` and after ``git checkout``: file times
and Snakemake's metadata decide nothing.

A record also says which code computed it (``code``: :func:`code_version`)
and, for a stage that computes (not a report), on what (``platform``: CPU and
its vector instructions or GPU, torch, threads; :func:`advsoup.runtime.platform_record`).
Both are for the reader and never compared: a code change reruns nothing by
itself (``snakemake --forcerun <rule>`` after a fix), and the same code and
seed give bitwise equal numbers only on the same kind of machine, so the
results page lists the code versions and platforms its metric files come from.

Snakemake learns the verdict through one input per compute job, a *currency
stamp* (``<logs>/currency/<stage>[-<run>]``) whose time is set when the DAG is
built: now when the job's record is stale, 1970 (AGED) when it is current.
Upstream records a job reads (checkpoint.json, eval.json) are set to 1970
too: a restored file's new time then triggers nothing, while a job that
reruns in the same invocation still reruns everything that reads it.

Torch-free: the Snakefile and the report import it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from .atomic import write_json
from .config import Config, Paths

KEY = "provenance"
# "Old" for Snakemake: one second after the epoch, not 0 (Snakemake skips its input-time check when
# the oldest output's time is 0, so a stale stamp would then trigger nothing).
AGED = (1, 1)


class StaleResultError(ValueError):
    """A metric computed from another checkpoint than the run's current one."""


def _stages():
    from . import stages  # stages imports the config package, which this module's importers already hold

    return stages


def record_file(paths: Paths, stage: str, run_id: Optional[str], set_key: Optional[str] = None) -> Optional[Path]:
    """The file holding a stage's provenance (None: the stage records none, e.g. figures)."""
    return {
        "train": lambda: paths.checkpoint_record(run_id),
        "evaluate": lambda: paths.eval_file(run_id),
        "soups": lambda: paths.soup_file(run_id),
        "robustness": lambda: paths.robustness_file(run_id),
        "shift": lambda: paths.shift_file(run_id),
        "shift_real": lambda: paths.real_shift_file(run_id, set_key),
        "shift_reference": lambda: paths.shift_reference / "checkpoint.json",
        "shift_hard": lambda: paths.shift_hard / "provenance.json",
        "shift_suite": lambda: paths.shift_suite / "provenance.json",
        "aggregate": lambda: paths.summary,
        "regime": lambda: paths.regime_summary,
        "shift_table": lambda: paths.shift_summary,
        "shift_real_table": lambda: paths.real_shift_summary,
        "adapters": lambda: paths.parameters_summary,
    }.get(stage, lambda: None)()


# The stages whose checkpoint a stage loads: their weights' sha256 is part of its record.
CHECKPOINT_OF = {"evaluate": "train", "soups": "train", "robustness": "train", "shift": "train", "shift_real": "train",
                 "shift_hard": "shift_reference"}


def weights_dir(paths: Paths, stage: str, run_id: Optional[str]) -> Path:
    return paths.shift_reference if stage == "shift_reference" else paths.run_dir(run_id)


def current_weights_sha(paths: Paths, stage: str, run_id: Optional[str]) -> Optional[str]:
    """sha256 of the weights a training stage last wrote, from its record (or model.json), if any."""
    rec = record_file(paths, stage, run_id)
    if rec is not None and rec.is_file():
        return json.loads(rec.read_text()).get("weights_sha256")
    meta = weights_dir(paths, stage, run_id) / "model.json"
    return json.loads(meta.read_text()).get("weights_sha256") if meta.is_file() else None


def expected(cfg: Config, stage: str, run_id: Optional[str], set_key: Optional[str] = None) -> Dict[str, Any]:
    """What a record of ``stage`` must say to be current under this config."""
    st = _stages()
    s = st.get(stage)
    upstream = {}
    for up in s.upstream:
        if st.get(up).per_run and not s.per_run:
            continue  # a report over every run: its inputs are the runs' records themselves
        upstream[up] = st.config_digest(cfg, up, run_id if st.get(up).per_run else None)
    return {"stage": stage, "run": run_id, **({"set": set_key} if set_key else {}),
            "config_digest": st.config_digest(cfg, stage, run_id, set_key), "upstream": upstream}


def record(cfg: Config, stage: str, run_id: Optional[str], checkpoints: Optional[Dict[str, str]] = None,
           set_key: Optional[str] = None, code: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    return {**expected(cfg, stage, run_id, set_key), "checkpoints": dict(checkpoints or {}),
            "code": code or code_version()}


def code_version() -> Dict[str, str]:
    """The code this process runs (:func:`code_of` the advsoup package)."""
    return code_of(Path(__file__).resolve().parent)


@functools.lru_cache(maxsize=None)
def code_of(pkg: Path) -> Dict[str, str]:
    """``source_sha256`` over the package's source files (their paths and bytes, in path order: the exact code,
    with or without git), and ``commit``, the git commit of the checkout they are in, with ``+ uncommitted
    changes`` where the package's files differ from it (``unknown`` outside a git checkout, e.g. a wheel)."""
    h = hashlib.sha256()
    for f in sorted(pkg.rglob("*.py")):
        h.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    try:
        git = ["git", "-C", str(pkg)]
        sha = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True,
                               check=True).stdout.strip()
        commit = f"{sha} + uncommitted changes" if dirty else sha
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    return {"commit": commit, "source_sha256": h.hexdigest()}


def loaded_checkpoints(cfg: Config, stage: str, run_id: Optional[str]) -> Dict[str, str]:
    """The sha256 of the checkpoint a stage is about to load, by the stage that wrote it."""
    src = CHECKPOINT_OF.get(stage)
    if src is None:
        return {}
    sha = current_weights_sha(Paths(cfg), src, run_id)
    return {src: sha} if sha else {}


def add_to(path: Path, prov: Dict[str, Any]) -> None:
    """Write ``prov`` into a JSON output under KEY (atomically; the rest of the file unchanged)."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, {**data, KEY: prov})


def stale_reason(cfg: Config, stage: str, run_id: Optional[str], set_key: Optional[str] = None) -> Optional[str]:
    """Why the stage's existing record does not hold under this config, or None (current, or nothing yet)."""
    paths = Paths(cfg)
    rec = record_file(paths, stage, run_id, set_key)
    if rec is None or not rec.is_file():
        return None
    try:
        got = json.loads(rec.read_text()).get(KEY)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{rec} is not valid JSON"
    if not got:
        return f"{rec} records no provenance (written before provenance records)"
    want = expected(cfg, stage, run_id, set_key)
    if got.get("config_digest") != want["config_digest"]:
        return f"{rec} was computed from another config of stage '{stage}' (its params changed)"
    for up, digest in want["upstream"].items():
        if got.get("upstream", {}).get(up) != digest:
            return f"{rec} was computed from outputs of '{up}' made with another config"
    for src, sha in got.get("checkpoints", {}).items():
        now = current_weights_sha(paths, src, run_id)
        if now is not None and now != sha:
            return f"{rec} was computed from checkpoint {sha[:12]}, the run's ({src}) is now {now[:12]}"
    return None


def stamp(cfg: Config, stage: str, run_id: Optional[str] = None, set_key: Optional[str] = None) -> str:
    """The job's currency stamp (see the module doc), set now; its path, for the rule's input."""
    path = Paths(cfg).logs / "currency" / "-".join([stage] + ([run_id] if run_id else []) + ([set_key] if set_key else []))
    path.parent.mkdir(parents=True, exist_ok=True)
    reason = stale_reason(cfg, stage, run_id, set_key)
    text = f"stale: {reason}\n" if reason else "current\n"
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    if reason:
        print(f"advsoup: {stage}{' ' + run_id if run_id else ''}{' ' + set_key if set_key else ''} reruns: {reason}",
              file=sys.stderr)
        os.utime(path)
    else:
        os.utime(path, AGED)
    return str(path)


def aged(path: Path) -> str:
    """An upstream output as a rule input: its time set to the epoch (its provenance, not its time, counts).

    Not ancient(): when an upstream job reruns, Snakemake 9 skips the own rerun check of every job below it
    and then triggers only those that read a non-ancient file of it, so a job reading nothing but ancient
    files of a rerunning job is dropped from the DAG however stale it is (dag.py, update_needrun). A
    directory's time, for Snakemake, is its .snakemake_timestamp file's, if present.
    """
    for p in (path, path / ".snakemake_timestamp"):
        if p.exists():
            os.utime(p, AGED)
    return str(path)


def check_current(metric: Path, cfg: Config, stage: str, run_id: str) -> None:
    """Refuse a metric whose recorded checkpoint is not the run's current one (aggregation's guard)."""
    paths = Paths(cfg)
    got = json.loads(metric.read_text()).get(KEY) if metric.is_file() else None
    if not got:
        raise StaleResultError(f"{metric} records no provenance: it cannot be shown as the result of run "
                               f"{run_id}; recompute it (`snakemake --forcerun {stage}` or `dvc repro`)")
    for src, sha in got.get("checkpoints", {}).items():
        now = current_weights_sha(paths, src, run_id)
        if now is None:
            raise StaleResultError(f"{metric}: the run's checkpoint record {record_file(paths, src, run_id)} is "
                                   f"missing, so its weights cannot be matched; restore it (git/dvc pull)")
        if now != sha:
            raise StaleResultError(f"{metric} was computed from checkpoint {sha[:12]} of run {run_id}, but the "
                                   f"run's current checkpoint is {now[:12]} ({record_file(paths, src, run_id)}): "
                                   f"recompute it with `snakemake` (it reruns stale results) before aggregating")
