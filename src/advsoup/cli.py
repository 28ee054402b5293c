"""`advsoup <stage> --config FILE [--run RUN] [key=value ...]`: the one entry for every tool.

Snakemake rules, DVC stages, submitit jobs and tests all call these stages. The
parser and the dispatch only: the stages, their config slices, resources and
functions are in advsoup.stages. The config is merged and validated here, once.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import uuid
from typing import List, Optional

from .config import ConfigError, Paths, load_config, run_ids, split_run_id
from .shift.names import REAL_SET_KEYS
from .stages import STAGES

OVERRIDES_ENV = "ADVSOUP_OVERRIDES"
# Commands that are not stages: they read the config and print.
COMMANDS = {"runs": "print the run ids of the experiment (one per line)",
            "where": "print where the experiment's outputs are, and its headline numbers",
            "report": "run the experiment's report stages in order, from its metric files (no checkpoint): "
                      "its summaries, tables, figures and results page (DVC's figures stage)"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="advsoup", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="stage", required=True)
    helps = {**{name: s.help for name, s in STAGES.items()}, **COMMANDS}
    for name, text in helps.items():
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="experiment file(s), merged over params/defaults.yaml in order")
        if name in STAGES and STAGES[name].per_run:
            sp.add_argument("--run", required=True, help="run id '<run>-s<seed>' (see `advsoup runs`)")
        if name in STAGES and STAGES[name].per_set:
            sp.add_argument("--set", required=True, dest="set_key", choices=list(REAL_SET_KEYS),
                            help="the published shifted ImageNet set (configured by shift.imagenet_root or "
                                 "shift.real.<set>.root)")
        if name in ("train", "shift_reference"):
            sp.add_argument("--restart", action="store_true",
                            help="discard the run's training state (e.g. a damaged one) and train from scratch")
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="dotlist overrides")
    return p


def env_overrides() -> List[str]:
    """Overrides Snakemake passes to its jobs (see workflow/rules/common.smk), before the command line's."""
    raw = os.environ.get(OVERRIDES_ENV, "")
    try:
        value = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"environment variable {OVERRIDES_ENV} must hold a JSON list of 'key=value' strings")
    return value


def _dispatch(args: argparse.Namespace) -> None:
    files = args.config or ["params/experiments/demo.yaml"]
    cfg = load_config(files, env_overrides() + args.overrides)
    if args.stage == "runs":
        print("\n".join(run_ids(cfg)))
        return
    if args.stage == "where":
        from .report.where import where

        where(Paths(cfg))
        return
    from . import stages
    from .config.preflight import preflight

    preflight(cfg, " + ".join(files))
    if args.stage == "report":
        for name in stages.report_stages(cfg):
            print(f"advsoup report: {name}")
            stages.run(cfg, name)
        return
    run_id = getattr(args, "run", None)
    if run_id:
        split_run_id(cfg, run_id)
    options = {}
    set_key = getattr(args, "set_key", None)
    if set_key is not None:
        if set_key not in stages.real_shift_sets(cfg):
            raise ConfigError(f"--set {set_key}: the set is not configured (enabled, with shift.imagenet_root or "
                              f"shift.real.{set_key}.root set); configured: {stages.real_shift_sets(cfg) or 'none'}")
        options["set_key"] = set_key
    if args.stage in ("train", "shift_reference"):
        # A restart is one token, made here: the job's requeues resume the state saved under it.
        options["restart"] = uuid.uuid4().hex if args.restart else False
        options["restart_command"] = " ".join(
            ["advsoup", args.stage] + [f"--config {shlex.quote(f)}" for f in files]
            + ([f"--run {run_id}"] if run_id else []) + [shlex.quote(o) for o in env_overrides() + args.overrides]
            + ["--restart"])
    if STAGES[args.stage].job and cfg.launcher.executor != "inline":
        stages.submit(cfg, args.stage, run_id, **options)
    else:
        stages.run(cfg, args.stage, run_id, **options)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _dispatch(args)
    except ConfigError as exc:
        print(f"advsoup {args.stage}: config error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one readable line, the traceback stays in the job's log
        from .checkpoint import CheckpointError
        from .data.sources import DataMissingError
        from .launch import LaunchError
        from .runlock import RunLocked

        if isinstance(exc, (DataMissingError, CheckpointError, LaunchError, RunLocked, FloatingPointError,
                            FileNotFoundError, ValueError)):
            print(f"advsoup {args.stage}: error: {exc}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
