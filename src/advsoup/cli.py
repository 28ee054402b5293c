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
from dataclasses import replace
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
        "robustness": "gradient-masking checks of one run (eps grid, more PGD steps, AutoAttack vs PGD)",
        "aggregate": "collect metric files into results/summary.json and results/tables/",
        "figures": "draw figures/ from the tables",
        "adapters": "count the domain-specific parameters of every adapter (study networks, ViT-B16, ResNet-50)",
        "shift-suite": "write the shift suite (corruptions, sketch) of the test set under shift.dir",
        "shift-reference": "train the reference model whose mistakes make the hard subset",
        "shift-hard": "write the hard subset: test images the reference model gets wrong",
        "shift": "accuracy of one run at every soup weight on every shift, and k-shot adaptation",
        "shift-table": "collect shift.json files into results/tables/shift*.csv and results/shift_summary.json",
        "shift-figure": "draw figures/shift.png from the shift tables",
        "runs": "print the run ids of the experiment (one per line)",
        "where": "print where the experiment's outputs are",
    }
    for name, text in helps.items():
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="experiment file(s), merged over params/defaults.yaml in order")
        if name in ("train", "evaluate", "soups", "shift", "robustness"):
            sp.add_argument("--run", required=True, help="run id '<run>-s<seed>' (see `advsoup runs`)")
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="dotlist overrides")
    return p


def _cmd_prepare(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .data.prepared import prepare

    manifest = prepare(cfg.data, paths.prepared)
    print(f"prepared {cfg.data.name} in {paths.prepared}: "
          f"{sum(manifest['train_class_counts'])} train / {sum(manifest['test_class_counts'])} test images")


# Stages that run as a job (launcher.executor local or slurm): the resources they get (launcher.<key>)
# and whether they start one task per GPU. The process that submits and waits imports no torch,
# so hundreds of waiting rules fit on a login node.
JOB_STAGES = {"train": ("train", True), "shift-reference": ("train", False), "evaluate": ("evaluate", False),
              "soups": ("evaluate", False), "robustness": ("evaluate", False), "shift-suite": ("evaluate", False),
              "shift-hard": ("evaluate", False), "shift": ("evaluate", False)}


def _run_as_job(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    """Submit the stage itself as a job, with the config resolved here, and wait for it."""
    from .launch import submit

    key, distributed = JOB_STAGES[args.stage]
    name = f"{args.stage}-{args.run}" if getattr(args, "run", None) else args.stage
    inline = replace(cfg, launcher=replace(cfg.launcher, executor="inline"))
    submit(run_stage, (args.stage, inline, args), cfg.launcher, getattr(cfg.launcher, key),
           f"{cfg.experiment}-{name}", paths.logs / cfg.experiment / "jobs" / name, distributed)


def run_stage(request: tuple) -> None:
    """Inside the job (again after a requeue): the stage, run in this process."""
    stage, cfg, args = request
    COMMANDS[stage](cfg, Paths(cfg), args)


def _cmd_train(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .train import TrainJob, train

    _, run, seed = split_run_id(cfg, args.run)
    job = TrainJob(args.run, run, seed, cfg.data, cfg.model, cfg.train, paths.prepared, paths.run_dir(args.run),
                   paths.history_file(args.run))
    train(job)


def _cmd_evaluate(cfg: Config, paths: Paths, args: argparse.Namespace, soups: bool = False) -> None:
    from .robust.evaluate import EvalJob, run_evaluation

    _, run, seed = split_run_id(cfg, args.run)
    out = paths.soup_file(args.run) if soups else paths.eval_file(args.run)
    job = EvalJob(args.run, run, seed, cfg.data, cfg.model, cfg.evaluate, paths.prepared,
                  paths.run_dir(args.run), out, list(cfg.evaluate.soup_weights) if soups else None)
    stage = "soups" if soups else "evaluate"
    run_evaluation(job)


def _cmd_robustness(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .robust.checks import RobustnessJob, run_robustness

    _, run, seed = split_run_id(cfg, args.run)
    job = RobustnessJob(args.run, run, seed, cfg.data, cfg.model, cfg.evaluate, paths.prepared,
                        paths.run_dir(args.run), paths.eval_file(args.run), paths.robustness_file(args.run))
    run_robustness(job)


def _cmd_aggregate(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .report.aggregate import aggregate, training_table

    aggregate(cfg.experiment, [paths.eval_file(r) for r in run_ids(cfg)],
              [paths.soup_file(r) for r in soup_run_ids(cfg)], paths.summary, paths.tables,
              robustness_files=[paths.robustness_file(r) for r in run_ids(cfg)])
    training_table({r: paths.history_file(r) for r in run_ids(cfg)}, paths.tables / "training.csv")
    print(f"wrote {paths.summary} and {paths.tables}/")


def _read_summary(path: Path) -> dict:
    """summary.json or shift_summary.json; {} when not written yet. Its "experiment" says whose it is."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _require_own_tables(cfg: Config, args: argparse.Namespace, summary_path: Path, table_stage: str) -> None:
    """results/tables is shared by the experiments: refuse to draw another experiment's tables.

    Snakemake reruns a table stage for a new experiment only if its metadata says the params changed; in a
    fresh checkout (or after `dvc pull` of another experiment) the files are simply there.
    """
    found = json.loads(summary_path.read_text()).get("experiment")
    if found != cfg.experiment:
        files = " ".join(f"--config {f}" for f in args.config or [])
        raise ValueError(f"{summary_path} and the tables beside it are experiment '{found}', not "
                         f"'{cfg.experiment}': write them first with `advsoup {table_stage} {files}` (or "
                         f"`snakemake --forcerun {table_stage.replace('-', '_')} ...`)")


def _cmd_figures(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .report.figures import adapter_figure, soup_curve

    _require_own_tables(cfg, args, paths.summary, "aggregate")
    print(f"wrote {soup_curve(paths.summary, paths.tables, paths.figures / 'soup_curve.png')}")
    print(f"wrote {adapter_figure(paths.summary, paths.tables, paths.figures / 'adapters.png')}")


def _cmd_adapters(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .models.accounting import write_accounting

    check = write_accounting(cfg.model, paths.parameters_table, paths.parameters_summary)
    print(f"wrote {paths.parameters_table} and {paths.parameters_summary}")
    print(f"ViT-B16: class token {check['vit_b16_token']} vs dual LayerNorm {check['vit_b16_dual_layernorm']} "
          f"domain-specific parameters: {check['ratio']:g}x as many, {check['difference_in_tokens']:g} tokens more "
          f"(the paper: {check['paper_token_vs_dual_norm']}x fewer)")


def _cmd_shift_suite(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .shift.suite import SuiteJob, run_suite

    run_suite(SuiteJob(paths.prepared, paths.shift_suite, cfg.shift))


def _cmd_shift_reference(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .config import shift_reference_run
    from .train import TrainJob, train

    run, train_cfg = shift_reference_run(cfg)
    job = TrainJob("shift_reference", run, cfg.shift.hard.seed, cfg.data, cfg.model, train_cfg, paths.prepared,
                   paths.shift_reference, paths.shift_reference / "train_log.csv")
    train(job)


def _cmd_shift_hard(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .shift.evaluate import HardJob, build_hard_subset

    job = HardJob(paths.prepared, paths.shift_reference, cfg.model, cfg.shift.hard, cfg.shift.seed,
                  cfg.evaluate.batch_size, paths.shift_hard)
    build_hard_subset(job)


def _cmd_shift(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .shift.evaluate import ShiftJob, run_shift

    _, run, seed = split_run_id(cfg, args.run)
    job = ShiftJob(args.run, run, seed, cfg.model, cfg.evaluate, cfg.shift, paths.shift_suite, paths.shift_hard,
                   paths.run_dir(args.run), paths.shift_file(args.run))
    run_shift(job)


def _cmd_shift_table(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .report.shift_tables import shift_tables

    summary = shift_tables([paths.shift_file(r) for r in run_ids(cfg)], paths.tables, paths.shift_summary,
                           cfg.experiment)
    print(f"wrote {paths.tables}/shift.csv, shift_adaptation.csv, shift_draws.csv and {paths.shift_summary}")
    for variant, s in summary["variants"].items():
        g = s["kshot_gain_over_clean"]
        print(f"  {variant}: k-shot soup (k={s['k']}) - clean mode, averaged over {', '.join(s['shifts'])}: "
              f"{100 * g['mean']:+.2f} +- {100 * g['std']:.2f} points (spread over {s['draws']} draws x "
              f"{s['seeds']} seed(s))")


def _cmd_shift_figure(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    from .report.shift_tables import shift_figure

    _require_own_tables(cfg, args, paths.shift_summary, "shift-table")
    print(f"wrote {shift_figure(paths.tables, paths.shift_summary, paths.figures / 'shift.png')}")


def _cmd_where(cfg: Config, paths: Paths, args: argparse.Namespace) -> None:
    summary = _read_summary(paths.summary)
    print(f"\nExperiment '{cfg.experiment}' outputs:")
    print(f"  summary  {paths.summary}")
    print(f"  tables   {paths.tables}/runs.csv, {paths.tables}/soups.csv")
    print(f"  figure   {paths.figures / 'soup_curve.png'}")
    print(f"  adapters {paths.tables}/adapters.csv (per variant), figure {paths.figures / 'adapters.png'}; "
          f"parameter accounting {paths.parameters_table}")
    print(f"  runs     {Path(cfg.results_dir) / 'runs' / cfg.experiment}/<run>/ (weights, training log, config)")
    if summary.get("experiment") == cfg.experiment:
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
        _print_variants(summary)
        _print_robustness(summary)
    shifts = _read_summary(paths.shift_summary)
    if shifts.get("experiment") == cfg.experiment:  # not another experiment's (results/ is shared)
        print(f"\nshifts   {paths.tables}/shift.csv, shift_adaptation.csv; figure {paths.figures / 'shift.png'}")
        for variant, s in shifts["variants"].items():
            g, avg = s["kshot_gain_over_clean"], s["average"]
            print(f"  {variant:<24} average over shifts: clean mode {100 * avg['clean_mode']['mean']:.1f}%, "
                  f"k-shot soup (k={s['k']}) {100 * avg['kshot_soup']['mean']:.1f}% "
                  f"({100 * g['mean']:+.2f} +- {100 * g['std']:.2f}), oracle soup "
                  f"{100 * avg['oracle_soup']['mean']:.1f}%")


def _print_variants(summary: dict) -> None:
    """With several seeds, each variant's mean +- std (results/tables/adapters.csv has the soups too)."""
    variants = summary.get("variants", {})
    if not any(v["seeds"] > 1 for v in variants.values()):
        return
    print("\nper variant, mean +- std over seeds (robust: the PGD above; AA: AutoAttack, robust mode):")
    pct = lambda s: f"{100 * s['mean']:5.1f} +- {100 * s['std']:3.1f}%"  # noqa: E731
    for name, v in variants.items():
        line = (f"  {name:<26} {v['seeds']} seeds, {v['domain_parameters']:>5} domain params: clean mode "
                f"{pct(v['clean_acc_clean_mode'])} clean / robust mode {pct(v['robust_acc_robust_mode'])} robust")
        if "aa_robust_acc_robust_mode" in v:
            line += f", AA {pct(v['aa_robust_acc_robust_mode'])}"
        print(line)


def _print_robustness(summary: dict) -> None:
    """AutoAttack numbers and the gradient-masking verdict; a failed or skipped check is named."""
    from .report.aggregate import attack_label  # pandas: only where it is needed

    for run_id, r in summary["runs"].items():
        aa = r.get("autoattack")
        if aa:
            clean, robust = aa["clean_mode"], aa["robust_mode"]
            print(f"  {run_id:<24} {attack_label(aa['attack'])}: clean mode "
                  f"{100 * clean['robust_acc']:.1f}%, robust mode {100 * robust['robust_acc']:.1f}% "
                  f"(PGD on the same images {100 * robust['pgd_robust_acc']:.1f}%)")
    checks = summary.get("masking_checks")
    if checks:
        print(f"\ngradient-masking checks: {checks['status'].upper()} ({checks['n_passed']} of {checks['n_checks']} "
              f"passed; details in results/metrics/<experiment>/<run>/robustness.json)")
        for line in checks["failed"]:
            print(f"  FAILED   {line}")
        for line in checks["skipped"]:
            print(f"  skipped  {line}")


COMMANDS = {
    "prepare": _cmd_prepare, "train": _cmd_train, "evaluate": _cmd_evaluate,
    "soups": lambda c, p, a: _cmd_evaluate(c, p, a, soups=True), "aggregate": _cmd_aggregate,
    "figures": _cmd_figures, "where": _cmd_where, "adapters": _cmd_adapters, "robustness": _cmd_robustness,
    "runs": lambda c, p, a: print("\n".join(run_ids(c))),
    "shift-suite": _cmd_shift_suite, "shift-reference": _cmd_shift_reference, "shift-hard": _cmd_shift_hard,
    "shift": _cmd_shift, "shift-table": _cmd_shift_table, "shift-figure": _cmd_shift_figure,
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
        job = args.stage in JOB_STAGES and cfg.launcher.executor != "inline"
        (_run_as_job if job else COMMANDS[args.stage])(cfg, Paths(cfg), args)
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
