"""The run grid of an experiment, where every output lives, and each stage's slice of the config."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from .schema import SHIFT_STAGES, STAGES, Config, ConfigError, RunConfig, TrainConfig


# ---- the run grid --------------------------------------------------------------------------

def run_ids(cfg: Config) -> List[str]:
    """Every (run, seed) of the experiment as '<run>-s<seed>', the DAG's wildcard values."""
    return [f"{name}-s{seed}" for name, run in cfg.runs.items() for seed in run.seeds]


def split_run_id(cfg: Config, run_id: str) -> tuple[str, RunConfig, int]:
    name, _, seed = run_id.rpartition("-s")
    if name not in cfg.runs or not seed.isdigit() or int(seed) not in cfg.runs[name].seeds:
        raise ConfigError(f"unknown run '{run_id}' for experiment '{cfg.experiment}'; "
                          f"known runs: {', '.join(run_ids(cfg))}")
    return name, cfg.runs[name], int(seed)


def soupable(cfg: Config, run_id: str) -> bool:
    """A run has a soup sweep when it was co-trained with an adapter (two copies to mix)."""
    _, run, _ = split_run_id(cfg, run_id)
    return run.training == "cotrain" and run.adapter != "none"


def soup_run_ids(cfg: Config) -> List[str]:
    return [r for r in run_ids(cfg) if soupable(cfg, r)]


# ---- paths: one place that knows where every output lives ----------------------------------

@dataclass(frozen=True)
class Paths:
    cfg: Config

    @property
    def prepared(self) -> Path:
        return Path(self.cfg.data.prepared_dir) / self.cfg.data.name

    def run_dir(self, run_id: str) -> Path:
        return Path(self.cfg.results_dir) / "runs" / self.cfg.experiment / run_id

    def metrics_dir(self, run_id: str) -> Path:
        return Path(self.cfg.results_dir) / "metrics" / self.cfg.experiment / run_id

    def history_file(self, run_id: str) -> Path:
        """Per-epoch training log: small, so it sits with the metrics in git."""
        return self.metrics_dir(run_id) / "train_log.csv"

    def eval_file(self, run_id: str) -> Path:
        return self.metrics_dir(run_id) / "eval.json"

    def soup_file(self, run_id: str) -> Path:
        return self.metrics_dir(run_id) / "soups.json"

    def robustness_file(self, run_id: str) -> Path:
        """The gradient-masking checks of a run (advsoup.robust.checks)."""
        return self.metrics_dir(run_id) / "robustness.json"

    @property
    def shift_suite(self) -> Path:
        """The corruption/sketch sets: a data-stage output (DVC cache), one per experiment's shift config."""
        return Path(self.cfg.shift.dir) / self.cfg.experiment

    @property
    def shift_reference(self) -> Path:
        """The independently trained reference model whose mistakes make the hard subset."""
        return self.run_dir("shift_reference")

    @property
    def shift_hard(self) -> Path:
        return self.shift_reference / "hard"

    def shift_file(self, run_id: str) -> Path:
        return self.metrics_dir(run_id) / "shift.json"

    @property
    def shift_summary(self) -> Path:
        return Path(self.cfg.results_dir) / "shift_summary.json"

    @property
    def summary(self) -> Path:
        return Path(self.cfg.results_dir) / "summary.json"

    @property
    def tables(self) -> Path:
        return Path(self.cfg.results_dir) / "tables"

    @property
    def parameters_table(self) -> Path:
        """Domain-specific parameters of every adapter (advsoup.models.accounting)."""
        return self.tables / "adapter_parameters.csv"

    @property
    def parameters_summary(self) -> Path:
        return Path(self.cfg.results_dir) / "adapter_parameters.json"

    @property
    def figures(self) -> Path:
        return Path(self.cfg.figures_dir)

    @property
    def logs(self) -> Path:
        return Path(self.cfg.launcher.log_dir)


# ---- sub-configs per stage -----------------------------------------------------------------

def stage_config(cfg: Config, stage: str, run_id: Optional[str] = None) -> Dict[str, Any]:
    """The part of the config a stage reads, as a plain dict.

    Snakemake's params and DVC's params name exactly these keys, so an edit
    elsewhere in the config does not rerun the stage.
    """
    if stage not in STAGES + SHIFT_STAGES:
        raise ConfigError(f"unknown stage '{stage}'; stages are {STAGES + SHIFT_STAGES}")
    c = OmegaConf.structured(cfg)

    def part(key: str) -> Any:
        return OmegaConf.to_container(OmegaConf.select(c, key), resolve=True)

    out: Dict[str, Any] = {}
    if stage == "prepare":
        out["data"] = part("data")
    elif stage in ("train", "evaluate", "soups", "robustness"):
        if run_id is None:
            raise ConfigError(f"stage '{stage}' needs a run id")
        name, _, seed = split_run_id(cfg, run_id)
        run = part(f"runs.{name}")
        run.pop("seeds")
        out.update(run=run, seed=seed, data=part("data"), model=part("model"))
        if stage == "train":
            out["train"] = part("train")
        else:
            out["evaluate"] = part("evaluate")
            # Only what the stage reads: AutoAttack runs in evaluate, the masking checks in robustness.
            unread = {"evaluate": ("soup_weights", "robustness"), "soups": ("autoattack", "robustness"),
                      "robustness": ("soup_weights", "autoattack", "robust_subset")}[stage]
            for key in unread:
                out["evaluate"].pop(key)
    elif stage == "adapters":  # parameter accounting: the study's network sizes only
        out["model"] = part("model")
    elif stage in SHIFT_STAGES:
        out = _shift_stage_config(cfg, stage, run_id, part)
    else:  # aggregate / figures: the grid and the evaluation protocol they report
        out["runs"] = part("runs")
        out["evaluate"] = part("evaluate")
        out["train_attack"] = part("train.attack")
    return out


def shift_reference_run(cfg: Config) -> tuple[RunConfig, TrainConfig]:
    """The hard subset's reference model: a nominal run of shift.hard.family, trained apart from the grid."""
    h = cfg.shift.hard
    train = replace(cfg.train, epochs=h.epochs or cfg.train.epochs)
    return RunConfig(training="nominal", adapter="none", family=h.family, seeds=[h.seed]), train


def _shift_stage_config(cfg: Config, stage: str, run_id: Optional[str], part) -> Dict[str, Any]:
    shift, evaluate = part("shift"), part("evaluate")
    adaptation = {k: shift[k] for k in ("seed", "k", "draws", "finetune")}
    if stage == "shift-suite":
        return {"dataset": cfg.data.name,
                "shift": {k: shift[k] for k in ("seed", "subset", "corruptions", "severities", "sketch")}}
    if stage == "shift-reference":
        run, train = shift_reference_run(cfg)
        return {"run": {"training": run.training, "adapter": run.adapter, "family": run.family},
                "seed": cfg.shift.hard.seed, "data": part("data"), "model": part("model"),
                "train": OmegaConf.to_container(OmegaConf.structured(train))}
    if stage == "shift-hard":
        return {"hard": shift["hard"], "seed": shift["seed"], "batch_size": evaluate["batch_size"]}
    if stage == "shift":
        if run_id is None:
            raise ConfigError(f"stage '{stage}' needs a run id")
        name, _, seed = split_run_id(cfg, run_id)
        run = part(f"runs.{name}")
        run.pop("seeds")
        return {"run": run, "seed": seed, "model": part("model"), "shift": adaptation,
                "evaluate": {k: evaluate[k] for k in ("soup_weights", "batch_size", "threads")}}
    return {"runs": part("runs"), "shift": adaptation}  # shift-table / shift-figure


