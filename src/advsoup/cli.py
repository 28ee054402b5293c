"""`advsoup <stage> --config FILE [--run RUN] [key=value ...]`: the one entry for every tool.

Snakemake rules, DVC stages, submitit jobs and tests all call these stages.
The config is merged and validated here, once; each job receives only the
typed sub-config it reads.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from .config import Config, ConfigError, Paths, load_config, run_ids, soup_run_ids, split_run_id

OVERRIDES_ENV = "ADVSOUP_OVERRIDES"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="advsoup", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="stage", required=True)
    helps = {
        "prepare": "read the raw dataset, write the prepared arrays and their manifest",
        "train": "train one run (nominal, adversarial or co-trained with an adapter)",
        "evaluate": "clean and robust accuracy of one run in clean and robust mode",
        "soups": "clean and robust accuracy of one run at every soup weight",
        "aggregate": "collect metric files into results/summary.json and results/tables/",
        "figures": "draw figures/ from the tables",
        "runs": "print the run ids of the experiment (one per line)",
        "where": "print where the experiment's outputs are",
    }
    for name, text in helps.items():
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="experiment file(s), merged over params/defaults.yaml in order")
        if name in ("train", "evaluate", "soups"):
            sp.add_argument("--run", required=True, help="run id '<run>-s<seed>' (see `advsoup runs`)")
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="dotlist overrides")
    return p


def _cmd_prepare(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .data.prepared import prepare

    manifest = prepare(cfg.data, paths.prepared)
    print(f"prepared {cfg.data.name} in {paths.prepared}: "
          f"{sum(manifest['train_class_counts'])} train / {sum(manifest['test_class_counts'])} test images")


def _submit(cfg: Config, paths: Paths, fn, job, resources, name: str) -> None:
    from .launch import submit

    submit(fn, job, cfg.launcher, resources, f"{cfg.experiment}-{name}", paths.logs / cfg.experiment / "jobs" / name)


def _cmd_train(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .train import TrainJob, train

    _, run, seed = split_run_id(cfg, args.run)
    job = TrainJob(args.run, run, seed, cfg.data, cfg.model, cfg.train, paths.prepared, paths.run_dir(args.run),
                   paths.history_file(args.run))
    _submit(cfg, paths, train, job, cfg.launcher.train, f"train-{args.run}")


def _cmd_evaluate(cfg: Config, paths: Paths, args: argparse.Namespace, soups: bool = False) -> None:
    from .evaluate import EvalJob, run_evaluation

    _, run, seed = split_run_id(cfg, args.run)
    out = paths.soup_file(args.run) if soups else paths.eval_file(args.run)
    job = EvalJob(args.run, run, seed, cfg.data, cfg.model, cfg.evaluate, paths.prepared,
                  paths.run_dir(args.run), out, list(cfg.evaluate.soup_weights) if soups else None)
    stage = "soups" if soups else "evaluate"
    _submit(cfg, paths, run_evaluation, job, cfg.launcher.evaluate, f"{stage}-{args.run}")


def _cmd_aggregate(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .aggregate import aggregate

    aggregate(cfg.experiment, [paths.eval_file(r) for r in run_ids(cfg)],
              [paths.soup_file(r) for r in soup_run_ids(cfg)], paths.summary, paths.tables)
    print(f"wrote {paths.summary} and {paths.tables}/")


def _cmd_figures(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .figures import soup_curve

    print(f"wrote {soup_curve(paths.summary, paths.tables, paths.figures / 'soup_curve.png')}")


def _cmd_where(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    summary = json.loads(paths.summary.read_text()) if paths.summary.is_file() else None
    print(f"\nExperiment '{cfg.experiment}' outputs:")
    print(f"  summary  {paths.summary}")
    print(f"  tables   {paths.tables}/runs.csv, {paths.tables}/soups.csv")
    print(f"  figure   {paths.figures / 'soup_curve.png'}")
    print(f"  runs     {Path(cfg.results_dir) / 'runs' / cfg.experiment}/<run>/ (weights, training log, config)")
    if summary and summary.get("experiment") == cfg.experiment:
        a = summary["attack"]
        print(f"\nrobust = {a['name']} {a['norm']} eps={a['eps']:g} on {a['subset']} test images")
        for run_id, r in summary["runs"].items():
            line = (f"  {run_id:<24} clean mode {100 * r['clean_mode']['clean_acc']:5.1f}% clean "
                    f"/ robust mode {100 * r['robust_mode']['robust_acc']:5.1f}% robust")
            if "best_soup" in r:
                b = r["best_soup"]
                line += (f" | best soup w={b['w']:.1f}: {100 * b['clean_acc']:.1f}% / "
                         f"{100 * b['robust_acc']:.1f}%")
            print(line)


COMMANDS = {
    "prepare": _cmd_prepare, "train": _cmd_train, "evaluate": _cmd_evaluate,
    "soups": lambda c, p, a: _cmd_evaluate(c, p, a, soups=True), "aggregate": _cmd_aggregate,
    "figures": _cmd_figures, "where": _cmd_where,
    "runs": lambda c, p, a: print("\n".join(run_ids(c))),
}


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


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config or ["params/experiments/demo.yaml"], env_overrides() + args.overrides)
        if getattr(args, "run", None):
            split_run_id(cfg, args.run)
        COMMANDS[args.stage](cfg, Paths(cfg), args)
    except ConfigError as exc:
        print(f"advsoup {args.stage}: config error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one readable line, the traceback stays in the job's log
        from .checkpoint import CheckpointError
        from .data.sources import DataMissingError
        from .launch import LaunchError

        if isinstance(exc, (DataMissingError, CheckpointError, LaunchError, FileNotFoundError, ValueError)):
            print(f"advsoup {args.stage}: error: {exc}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
