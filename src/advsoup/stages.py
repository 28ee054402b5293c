"""The one registry of stages: what the CLI, the Snakemake rules and the launcher know about each step.

Per stage: its single name (the CLI subcommand, the Snakemake rule, the job's
and the log's name), whether it takes a run, whether it runs as a submitit job
(with the resources ``launcher.resources.<name>``) and with one task per GPU,
the stages whose outputs it reads, the slice of the config it reads, and the
function it runs.

The slice is the only config a stage's function sees: fields a stage does not
read are blanked (None), so a function that reads one fails loudly instead of
silently depending on a key its rule does not rerun for. The slice's digest is
the rule's params and the ``config_digest`` recorded in the stage's outputs
(see :mod:`advsoup.provenance`).

Torch-free: importing this module (the Snakefile, the submitting process on a
login node) loads no compute code; each function imports its module when it runs.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Tuple

from .config import (Config, ConfigError, Paths, ResourcesConfig, grid_run_ids, grid_soup_run_ids, run_ids,
                     shift_reference_run, soup_run_ids, split_run_id)
from .shift.names import REAL_SET_KEYS


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    reads: Callable[[Config, Optional[str]], Dict[str, Any]]  # the config slice, by name
    run: Callable[[SimpleNamespace, Paths, Optional[str]], None]
    per_run: bool = False      # takes --run <run>-s<seed>
    job: bool = False          # runs as a submitit job (local process or SLURM), else in the calling process
    distributed: bool = False  # one task per GPU (launcher.resources.<name>.gpus or .tasks)
    upstream: Tuple[str, ...] = ()  # stages whose outputs it reads: their digests are part of its provenance
    per_set: bool = False      # also takes --set <set> (a published shifted ImageNet set: imagenet_c, ...); its
    #                            reads then takes (cfg, run_id, set_key)
    report: bool = False       # reads metric files only (no checkpoint, no torch) and writes the report or the page:
    #                            `advsoup report` and DVC's `figures` stage run these


def blank(dc: Any, *unread: str) -> Any:
    """A copy of a config dataclass whose ``unread`` fields are None (reading one fails loudly)."""
    return replace(dc, **{k: None for k in unread})


def _plain(value: Any) -> Any:
    """JSON-able form of a slice; keys whose value is None are left out. None is what an unread key is blanked
    to, and the default of an option that keeps the old behaviour: adding one to the schema changes no digest,
    so upgrading advsoup recomputes nothing (tests/test_stages.py pins the digests)."""
    if is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _run_slice(cfg: Config, run_id: Optional[str]) -> Dict[str, Any]:
    if run_id is None:
        raise ConfigError("this stage needs a run id (--run <run>-s<seed>; see `advsoup runs`)")
    _, run, seed = split_run_id(cfg, run_id)
    # A run's own train_size / epochs reach the stages as data.train_size / train.epochs (see _data, _reads_train):
    # one value, one place, so a run of 2500 images has the digest it would have under data.train_size: 2500.
    return {"run": blank(run, "seeds", "train_size", "epochs"), "seed": seed}


# ---- what each stage reads ------------------------------------------------------------------

def _data(cfg, validation: bool = False, run_id: Optional[str] = None, training_images: bool = False):
    """data without the validation split's size unless the stage reads that split, or reads training images that it
    picks (``training_images``: train_size 0 is all but the validation split; train_size N the first N of the
    class-balanced order, whatever val_size), so that a val_size edit retrains nothing otherwise; with a run, its
    own training-set size (runs.<name>.train_size) in data.train_size."""
    data = split_run_id(cfg, run_id)[1].resolve_data(cfg.data) if run_id is not None else cfg.data
    decides = training_images and not data.train_size and data.val_size > 0
    return data if validation or decides else blank(data, "val_size")


def _reads_prepare(cfg, run_id):
    return {"data": _data(cfg)}


def _reads_train(cfg, run_id):
    return {**_run_slice(cfg, run_id), "data": _data(cfg, cfg.train.val_every > 0, run_id, training_images=True),
            "model": cfg.model, "train": split_run_id(cfg, run_id)[1].resolve_train(cfg.train)}


def _reads_evaluate(cfg, run_id):
    # evaluate.train_subset measures the run's training images
    return {**_run_slice(cfg, run_id), "data": _data(cfg, run_id=run_id,
                                                     training_images=cfg.evaluate.train_subset is not None),
            "model": cfg.model, "evaluate": blank(cfg.evaluate, "soup_weights", "robustness")}


def _reads_soups(cfg, run_id):
    return {**_run_slice(cfg, run_id), "data": _data(cfg, True, run_id), "model": cfg.model,
            "evaluate": blank(cfg.evaluate, "autoattack", "robustness", "train_subset")}


def _reads_robustness(cfg, run_id):
    return {**_run_slice(cfg, run_id), "data": _data(cfg, run_id=run_id), "model": cfg.model,
            "evaluate": blank(cfg.evaluate, "soup_weights", "autoattack", "robust_subset", "train_subset")}


def _reads_report(cfg, run_id):
    return {"runs": cfg.runs, "evaluate": cfg.evaluate, "train_attack": cfg.train.attack,
            "train_attack_model_mode": cfg.train.attack_model_mode}


def _reads_results_page(cfg, run_id):
    """The report's slice, and the setting the regime section sets beside the paper's (model, dataset,
    augmentation, training recipe): a page renders in seconds, so a recipe edit re-renders it."""
    return {**_reads_report(cfg, run_id), "setting": {"model": cfg.model, "data_name": cfg.data.name,
                                                      "augment": cfg.data.augment, "train": cfg.train}}


def _reads_regime(cfg, run_id):
    return {"runs": cfg.runs}


def _reads_adapters(cfg, run_id):
    return {"model": cfg.model}


def _reads_shift_suite(cfg, run_id):
    return {"data": _data(cfg),
            "shift": blank(cfg.shift, "hard", "k", "draws", "finetune", "imagenet_root", "real")}


def _reads_shift_reference(cfg, run_id):
    run, train = shift_reference_run(cfg)
    return {"run": blank(run, "seeds"), "seed": cfg.shift.hard.seed, "data": _data(cfg, train.val_every > 0),
            "model": cfg.model, "train": train}


def _reads_shift_hard(cfg, run_id):
    return {"data": _data(cfg), "model": cfg.model, "hard": cfg.shift.hard, "seed": cfg.shift.seed,
            "batch_size": cfg.evaluate.batch_size}


def _reads_shift(cfg, run_id):
    return {**_run_slice(cfg, run_id), "model": cfg.model,
            "shift": blank(cfg.shift, "subset", "corruptions", "severities", "sketch", "hard", "imagenet_root", "real"),
            "evaluate": blank(cfg.evaluate, "robust_subset", "attack", "autoattack", "robustness", "train_subset")}


def _reads_shift_report(cfg, run_id):
    return {"runs": cfg.runs, "shift": blank(cfg.shift, "subset", "corruptions", "severities", "sketch", "hard",
                                             "imagenet_root", "finetune", "real")}


def _reads_shift_real(cfg, run_id, set_key):
    """One set's keys only (an ImageNet-C edit reruns no ImageNet-A job); shift.imagenet_root only if the set
    has no root of its own; of evaluate, the soup weights and the threads (advsoup.shift.real.RealShiftJob)."""
    own = getattr(cfg.shift.real, set_key)
    real = blank(cfg.shift.real, *(k for k in REAL_SET_KEYS if k != set_key))
    shift = blank(cfg.shift, "subset", "corruptions", "severities", "sketch", "hard", "finetune",
                  *(("imagenet_root",) if own.root else ()))
    evaluate = blank(cfg.evaluate, *(f.name for f in fields(cfg.evaluate) if f.name not in ("soup_weights", "threads")))
    return {**_run_slice(cfg, run_id), "set": set_key, "model": cfg.model, "evaluate": evaluate,
            "shift": replace(shift, real=real)}


def _reads_shift_real_report(cfg, run_id):
    return {"runs": cfg.runs, "sets": real_shift_sets(cfg)}


# ---- which shift study an experiment's DAG holds (the rules ask these; torch-free) ----------------

def real_shift_sets(cfg: Config) -> List[str]:
    """The published shifted ImageNet sets this experiment scores, by key (imagenet_c, imagenet_a, imagenet_r,
    imagenet_sketch): every set enabled with a root (its own, or under shift.imagenet_root); the others are
    skipped. The DAG's `set` wildcard values; preflight has checked their layout."""
    from .shift.layout import real_set_folders

    keys = {name: key for key, name in REAL_SET_KEYS.items()}
    return [keys[name] for name in real_set_folders(cfg.shift)]


def synthetic_shifts(cfg: Config) -> bool:
    """Whether the synthetic shift study (shift_suite, shift_reference, shift_hard, shift and their report) is in
    the DAG: for datasets held as arrays (Fashion-MNIST, CIFAR). A dataset read from files (ImageNet) is too large
    for a suite held in memory: its shift study is the real sets (:func:`real_shift_sets`)."""
    return _held_as_arrays(cfg.data)


def _held_as_arrays(data) -> bool:
    from .data.registry import kind

    return kind(data.name) == "arrays"


def report_targets(cfg: Config) -> List[str]:
    """The report stages `rule all` builds and the results page waits for: report.targets, or by default (None)
    the full report (the soup and adapter figures, the shift study's figures, the parameter accounting)."""
    if cfg.report.targets is not None:
        return list(cfg.report.targets)
    return ["figures", *shift_figure_stages(cfg), "adapters"]


def shift_figure_stages(cfg: Config) -> List[str]:
    """The shift study's figure stages in this experiment's DAG: the targets of `rule all` and the results page."""
    return (["shift_figure"] if synthetic_shifts(cfg) else []) + (["shift_real_figure"] if real_shift_sets(cfg) else [])


# ---- what each stage runs (thin: build the job from the slice and the paths, call the module) ----

def _prepare(s, paths, run_id):
    from .data.prepared import prepare

    manifest = prepare(s.data, paths.prepared)
    print(f"prepared {s.data.name} in {paths.prepared}: "
          f"{sum(manifest['train_class_counts'])} train / {sum(manifest['test_class_counts'])} test images")


def _train(s, paths, run_id, restart=False, restart_command=None):
    from .train import TrainJob, train

    train(TrainJob(run_id, s.run, s.seed, s.data, s.model, s.train, paths.prepared, paths.run_dir(run_id),
                   paths.history_file(run_id)), restart=restart, restart_command=restart_command)


def _evaluate(s, paths, run_id):
    from .robust.evaluate import EvalJob, run_evaluation

    run_evaluation(EvalJob(run_id, s.run, s.seed, s.data, s.model, s.evaluate, paths.prepared,
                           paths.run_dir(run_id), paths.eval_file(run_id), None))


def _soups(s, paths, run_id):
    from .robust.evaluate import EvalJob, run_evaluation

    run_evaluation(EvalJob(run_id, s.run, s.seed, s.data, s.model, s.evaluate, paths.prepared,
                           paths.run_dir(run_id), paths.soup_file(run_id), list(s.evaluate.soup_weights)))


def _robustness(s, paths, run_id):
    from .robust.checks import RobustnessJob, run_robustness

    run_robustness(RobustnessJob(run_id, s.run, s.seed, s.data, s.model, s.evaluate, paths.prepared,
                                 paths.run_dir(run_id), paths.eval_file(run_id), paths.robustness_file(run_id)))


def _aggregate(s, paths, run_id):
    from .report.aggregate import aggregate, training_table

    from .provenance import check_current

    runs = grid_run_ids(s.runs)
    for r in runs:  # never a number of another checkpoint than the run's current one
        check_current(paths.eval_file(r), paths.cfg, "evaluate", r)
        check_current(paths.robustness_file(r), paths.cfg, "robustness", r)
    for r in grid_soup_run_ids(s.runs):
        check_current(paths.soup_file(r), paths.cfg, "soups", r)
    aggregate(paths.cfg.experiment, [paths.eval_file(r) for r in runs],
              [paths.soup_file(r) for r in grid_soup_run_ids(s.runs)], paths.summary, paths.tables,
              robustness_files=[paths.robustness_file(r) for r in runs],
              train_attack_model_mode=s.train_attack_model_mode)
    training_table({r: paths.history_file(r) for r in runs}, paths.tables / "training.csv")
    print(f"wrote {paths.summary} and {paths.tables}/")


def _figures(s, paths, run_id):
    from .report.figures import adapter_figure, soup_curve

    print(f"wrote {soup_curve(paths.summary, paths.tables, paths.figures / 'soup_curve.png')}")
    print(f"wrote {adapter_figure(paths.summary, paths.tables, paths.figures / 'adapters.png')}")


def _adapters(s, paths, run_id):
    from .models.accounting import write_accounting

    check = write_accounting(s.model, paths.parameters_table, paths.parameters_summary)
    print(f"wrote {paths.parameters_table} and {paths.parameters_summary}")
    print(f"ViT-B16: class token {check['vit_b16_token']} vs dual LayerNorm {check['vit_b16_dual_layernorm']} "
          f"domain-specific parameters: {check['ratio']:g}x as many, {check['difference_in_tokens']:g} tokens more "
          f"(the paper: {check['paper_token_vs_dual_norm']}x fewer)")


def _synthetic_only(data, stage):
    if not _held_as_arrays(data):
        raise ConfigError(f"{stage} is part of the synthetic shift study, made for datasets held as arrays; "
                          f"data.name={data.name} is read from files: its shift study is the published sets "
                          f"(`advsoup shift_real`, configured by shift.imagenet_root or shift.real.<set>.root)")


def _shift_suite(s, paths, run_id):
    from .shift.suite import SuiteJob, run_suite

    _synthetic_only(s.data, "shift_suite")

    run_suite(SuiteJob(paths.prepared, paths.shift_suite, s.shift))


def _shift_reference(s, paths, run_id, restart=False, restart_command=None):
    from .train import TrainJob, train

    _synthetic_only(s.data, "shift_reference")
    train(TrainJob("shift_reference", s.run, s.seed, s.data, s.model, s.train, paths.prepared,
                   paths.shift_reference, paths.shift_reference / "train_log.csv"), restart=restart,
          restart_command=restart_command)


def _shift_hard(s, paths, run_id):
    from .shift.evaluate import HardJob, build_hard_subset

    _synthetic_only(s.data, "shift_hard")
    build_hard_subset(HardJob(paths.prepared, paths.shift_reference, s.model, s.hard, s.seed, s.batch_size,
                              paths.shift_hard))


def _shift(s, paths, run_id):
    from .shift.evaluate import ShiftJob, run_shift

    run_shift(ShiftJob(run_id, s.run, s.seed, s.model, s.evaluate, s.shift, paths.shift_suite, paths.shift_hard,
                       paths.run_dir(run_id), paths.shift_file(run_id)))


def _shift_table(s, paths, run_id):
    from .report.shift_tables import shift_tables

    from .provenance import check_current

    for r in grid_run_ids(s.runs):
        check_current(paths.shift_file(r), paths.cfg, "shift", r)
    summary = shift_tables([paths.shift_file(r) for r in grid_run_ids(s.runs)], paths.tables, paths.shift_summary,
                           paths.cfg.experiment)
    print(f"wrote {paths.tables}/shift.csv, shift_adaptation.csv, shift_draws.csv and {paths.shift_summary}")
    for variant, v in summary["variants"].items():
        g = v["kshot_gain_over_clean"]
        print(f"  {variant}: k-shot soup (k={v['k']}) - clean mode, averaged over {', '.join(v['shifts'])}: "
              f"{100 * g['mean']:+.2f} +- {100 * g['std']:.2f} points (spread over {v['draws']} draws x "
              f"{v['seeds']} seed(s))")


def _shift_figure(s, paths, run_id):
    from .report.shift_tables import shift_figure

    print(f"wrote {shift_figure(paths.tables, paths.shift_summary, paths.figures / 'shift.png')}")


def _shift_real(s, paths, run_id):
    from .shift.real import RealShiftJob, run_real_shift

    run_real_shift(RealShiftJob(run_id, s.run, s.seed, s.model, s.evaluate, s.shift, REAL_SET_KEYS[s.set],
                                paths.run_dir(run_id), paths.real_shift_file(run_id, s.set)))


def _shift_real_files(s, paths):
    if not s.sets:
        raise ConfigError("no published shifted ImageNet set is configured: set shift.imagenet_root, or "
                          "shift.real.<set>.root for each set you have (README, \"Real distribution shifts\")")
    return [paths.real_shift_file(r, k) for r in grid_run_ids(s.runs) for k in s.sets]


def _shift_real_table(s, paths, run_id):
    from .provenance import check_current
    from .report.real_shifts import real_shift_tables

    for r in grid_run_ids(s.runs):
        for k in s.sets:
            check_current(paths.real_shift_file(r, k), paths.cfg, "shift_real", r)
    summary = real_shift_tables(_shift_real_files(s, paths), paths.tables, paths.real_shift_summary,
                                paths.cfg.experiment)
    print(f"wrote {paths.tables}/shift_real.csv, shift_real_draws.csv, shift_real_paper.csv and "
          f"{paths.real_shift_summary} (ImageNet-C: {summary['imagenet_c_normalisation']})")


def _shift_real_figure(s, paths, run_id):
    from .report.real_shifts import real_shift_figure

    _shift_real_files(s, paths)
    print(f"wrote {real_shift_figure(paths.tables, paths.figures / 'shift_real.png')}")


def _regime(s, paths, run_id):
    from .report.regime import regime_report

    from .provenance import check_current

    runs = grid_run_ids(s.runs)
    for r in runs:  # never a number of another checkpoint than the run's current one
        check_current(paths.eval_file(r), paths.cfg, "evaluate", r)
    out = paths.regime_summary, paths.tables / "regime.csv", paths.figures / "regime.png"
    summary = regime_report(paths.cfg.experiment, [paths.eval_file(r) for r in runs], *out)
    print(f"wrote {', '.join(map(str, out))}")
    for line in summary["statements"]:
        print(f"  {line}")


def _results_page(s, paths, run_id):
    from .report.page import write_page

    print(f"wrote {write_page(paths, paths.results_page, SimpleNamespace(**s.setting))}")


STAGES: Dict[str, Stage] = {s.name: s for s in (
    Stage("prepare", "read the raw dataset, write the prepared arrays and their manifest", _reads_prepare, _prepare),
    Stage("train", "train one run (nominal, adversarial or co-trained with an adapter)", _reads_train, _train,
          per_run=True, job=True, distributed=True, upstream=("prepare",)),
    Stage("evaluate", "clean and robust accuracy (PGD, AutoAttack) of one run in clean and robust mode",
          _reads_evaluate, _evaluate, per_run=True, job=True, upstream=("prepare", "train")),
    Stage("soups", "clean and robust accuracy of one run at every soup weight", _reads_soups, _soups,
          per_run=True, job=True, upstream=("prepare", "train")),
    Stage("robustness", "gradient-masking checks of one run (eps grid, more PGD steps, AutoAttack vs PGD)",
          _reads_robustness, _robustness, per_run=True, job=True, upstream=("prepare", "train", "evaluate")),
    Stage("aggregate", "collect the metric files into the experiment's summary and tables", _reads_report,
          _aggregate, upstream=("evaluate", "soups", "robustness"), report=True),
    Stage("figures", "draw the soup curve and the adapter figure from the tables", _reads_report, _figures,
          upstream=("aggregate",), report=True),
    Stage("adapters", "count the domain-specific parameters of every adapter (study networks, ViT-B16, ResNet-50)",
          _reads_adapters, _adapters, report=True),
    Stage("shift_suite", "write the shift suite (corruptions, sketch) of the test set", _reads_shift_suite,
          _shift_suite, job=True, upstream=("prepare",)),
    Stage("shift_reference", "train the reference model whose mistakes make the hard subset",
          _reads_shift_reference, _shift_reference, job=True, upstream=("prepare",)),
    Stage("shift_hard", "write the hard subset: test images the reference model gets wrong", _reads_shift_hard,
          _shift_hard, job=True, upstream=("prepare", "shift_reference")),
    Stage("shift", "accuracy of one run at every soup weight on every shift, and k-shot adaptation",
          _reads_shift, _shift, per_run=True, job=True, upstream=("shift_suite", "shift_hard", "train")),
    Stage("shift_table", "collect the shift metric files into the experiment's shift tables and summary",
          _reads_shift_report, _shift_table, upstream=("shift",), report=True),
    Stage("shift_figure", "draw the shift figure from the shift tables", _reads_shift_report, _shift_figure,
          upstream=("shift_table",), report=True),
    Stage("shift_real", "accuracy of one run at every soup weight on one published shifted ImageNet set (--set), "
          "the k-shot and the oracle soup", _reads_shift_real, _shift_real, per_run=True, job=True,
          upstream=("train",), per_set=True),
    Stage("shift_real_table", "collect the shift_real metric files into the paper's table (ImageNet-C mCE, top-1 "
          "of -A, -R, -Sketch), the curves and a summary", _reads_shift_real_report, _shift_real_table,
          upstream=("shift_real",), report=True),
    Stage("shift_real_figure", "draw accuracy against soup weight per published shifted ImageNet set",
          _reads_shift_real_report, _shift_real_figure, upstream=("shift_real_table",), report=True),
    Stage("regime", "the gain of co-training over the nominal model's clean accuracy against the training-set size "
          "and schedule, beside the nominal model's train-test gap (figure, table, statements)", _reads_regime,
          _regime, upstream=("evaluate",), report=True),
    Stage("results_page", "write the experiment's results page (docs/results/<experiment>.md) from its report",
          _reads_results_page, _results_page, upstream=("aggregate", "shift_table", "shift_real_table"), report=True),
)}
JOB_STAGES = tuple(name for name, s in STAGES.items() if s.job)


# ---- an experiment's DAG, in two halves: the jobs that make metric files, the report made from them ----------

def _upstream_of(names: List[str]) -> List[str]:
    """The named stages and every stage they read from, transitively, in registry order."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(get(name).upstream)
    return [n for n in STAGES if n in seen]


def report_stages(cfg: Config) -> List[str]:
    """The report stages of this experiment, in the order they run: those its report targets need, then the
    results page (`advsoup report`, DVC's `figures` stage; Snakemake's `rule all` builds the same files)."""
    return [n for n in _upstream_of(report_targets(cfg)) if get(n).report] + ["results_page"]


def metric_stages(cfg: Config) -> List[str]:
    """The per-run job stages whose metric files this experiment's report reads (Snakemake's target `metrics`,
    DVC's `experiment` stage): e.g. train and evaluate for report.targets [regime]; with the default report also
    soups, robustness and the shift study the dataset has."""
    return [n for n in _upstream_of(report_targets(cfg)) if get(n).job and get(n).per_run and runs_of(cfg, n)]


def runs_of(cfg: Config, name: str) -> List[str]:
    """The run ids a per-run stage runs for: soups only for runs with two domains to interpolate, the synthetic
    shift study only for datasets held as arrays, shift_real only with a published set configured."""
    if name == "soups":
        return soup_run_ids(cfg)
    if name == "shift" and not synthetic_shifts(cfg):
        return []
    if name == "shift_real" and not real_shift_sets(cfg):
        return []
    return run_ids(cfg)


def get(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"unknown stage '{name}'; stages are {', '.join(STAGES)}")
    return STAGES[name]


def config_slice(cfg: Config, name: str, run_id: Optional[str] = None, set_key: Optional[str] = None
                 ) -> Dict[str, Any]:
    stage = get(name)
    if stage.per_run and run_id is None:
        raise ConfigError(f"stage '{name}' needs a run id (--run <run>-s<seed>; see `advsoup runs`)")
    if not stage.per_set:
        return stage.reads(cfg, run_id if stage.per_run else None)
    if set_key not in REAL_SET_KEYS:
        raise ConfigError(f"stage '{name}' needs a set (--set one of {', '.join(REAL_SET_KEYS)}); got {set_key!r}")
    return stage.reads(cfg, run_id if stage.per_run else None, set_key)


def config_digest(cfg: Config, name: str, run_id: Optional[str] = None, set_key: Optional[str] = None) -> str:
    """sha256 of the stage's config slice: the rule's params and the digest its outputs record."""
    text = json.dumps(_plain(config_slice(cfg, name, run_id, set_key)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def resources(cfg: Config, name: str) -> ResourcesConfig:
    """The resources a job stage asks for (launcher.resources.<name> in params/defaults.yaml)."""
    if not get(name).job:
        raise ConfigError(f"stage '{name}' runs in the calling process: it has no job resources")
    return cfg.launcher.resources[name]


def job_name(cfg: Config, name: str, run_id: Optional[str] = None, set_key: Optional[str] = None) -> str:
    """The job's name on the cluster and in logs: <experiment>-<stage>[-<run>][-<set>]."""
    return "-".join([cfg.experiment, name] + ([run_id] if run_id else []) + ([set_key] if set_key else []))


def run(cfg: Config, name: str, run_id: Optional[str] = None, set_key: Optional[str] = None, **options: Any) -> None:
    """The stage in this process, on its slice of the config; its record then says what it was computed from."""
    from . import provenance as prov

    stage, paths = get(name), Paths(cfg)
    src = prov.CHECKPOINT_OF.get(name)
    if src is not None:  # never measure a model trained under another config than the run's current one
        reason = prov.stale_reason(cfg, src, run_id)
        if reason:
            raise ValueError(f"{name} {run_id or ''}: refusing the checkpoint: {reason}; retrain it first "
                             f"(`advsoup {src} ...`, or `snakemake`, which reruns it)")
    loaded = prov.loaded_checkpoints(cfg, name, run_id)
    code = prov.code_version()  # before the stage runs: the code it imports, not what an edit leaves afterwards
    stage.run(SimpleNamespace(**config_slice(cfg, name, run_id, set_key)), paths, run_id, **options)
    rec = prov.record_file(paths, name, run_id, set_key)
    if rec is None or not _main_task():
        return
    provenance = prov.record(cfg, name, run_id, loaded, set_key, code)
    if not stage.report:  # after the run: the threads it ran on (a report stage computes nothing hardware-bound)
        from .runtime import platform_record

        provenance["platform"] = platform_record()
    if name in ("train", "shift_reference"):  # the shareable record of the run's current weights
        meta = json.loads((prov.weights_dir(paths, name, run_id) / "model.json").read_text())
        from .atomic import write_json

        write_json(rec, {"weights_sha256": meta["weights_sha256"], prov.KEY: provenance})
    else:
        prov.add_to(rec, provenance)


def _main_task() -> bool:
    """False on the other ranks of a distributed job: rank 0 alone writes the record (after its weights)."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return True
    import submitit

    return submitit.JobEnvironment().global_rank == 0


def run_request(request: tuple) -> None:
    """Inside a submitit job (again after a requeue): ``run`` with the config resolved by the submitter."""
    cfg, name, run_id, options = request
    run(cfg, name, run_id, **options)


def submit(cfg: Config, name: str, run_id: Optional[str] = None, set_key: Optional[str] = None,
           **options: Any) -> None:
    """Run the stage as a job of ``launcher.executor`` with its own resources, and wait for it."""
    from .launch import submit as launch

    stage, paths = get(name), Paths(cfg)
    inline = replace(cfg, launcher=replace(cfg.launcher, executor="inline"))
    jname = job_name(cfg, name, run_id, set_key)
    if set_key is not None:
        options = {**options, "set_key": set_key}
    launch(run_request, (inline, name, run_id, options), cfg.launcher, resources(cfg, name), jname,
           paths.logs / "jobs" / jname.removeprefix(f"{cfg.experiment}-"), stage.distributed)
