"""The run grid of an experiment and where every output lives (everything under the experiment's name)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List


from .schema import Config, ConfigError, RunConfig, TrainConfig


# ---- the run grid --------------------------------------------------------------------------

def run_ids(cfg: Config) -> List[str]:
    """Every (run, seed) of the experiment as '<run>-s<seed>', the DAG's wildcard values."""
    return grid_run_ids(cfg.runs)


def grid_run_ids(runs: Dict[str, RunConfig]) -> List[str]:
    return [f"{name}-s{seed}" for name, run in runs.items() for seed in run.seeds]


def split_run_id(cfg: Config, run_id: str) -> tuple[str, RunConfig, int]:
    name, _, seed = run_id.rpartition("-s")
    if name not in cfg.runs or not seed.isdigit() or int(seed) not in cfg.runs[name].seeds:
        raise ConfigError(f"unknown run '{run_id}' for experiment '{cfg.experiment}'; "
                          f"known runs: {', '.join(run_ids(cfg))}")
    return name, cfg.runs[name], int(seed)


def soupable(run: RunConfig) -> bool:
    """A run has a soup sweep when it was co-trained with an adapter (two copies to mix)."""
    return run.training == "cotrain" and run.adapter != "none"


def soup_run_ids(cfg: Config) -> List[str]:
    return grid_soup_run_ids(cfg.runs)


def grid_soup_run_ids(runs: Dict[str, RunConfig]) -> List[str]:
    return [f"{name}-s{seed}" for name, run in runs.items() for seed in run.seeds if soupable(run)]


# ---- paths: one place that knows where every output lives ----------------------------------

@dataclass(frozen=True)
class Paths:
    """results/<experiment>/{runs,metrics,report,logs}: two experiments never share an output."""
    cfg: Config

    @property
    def prepared(self) -> Path:
        return Path(self.cfg.data.prepared_dir) / self.cfg.data.name

    @property
    def root(self) -> Path:
        return Path(self.cfg.results_dir) / self.cfg.experiment

    def run_dir(self, run_id: str) -> Path:
        """Weights, training state, resolved config, log: DVC's cache."""
        return self.root / "runs" / run_id

    def metrics_dir(self, run_id: str) -> Path:
        """Small metric files: in git, so `dvc metrics diff` works on any commit."""
        return self.root / "metrics" / run_id

    def history_file(self, run_id: str) -> Path:
        """Per-epoch training log: small, so it sits with the metrics in git."""
        return self.metrics_dir(run_id) / "train_log.csv"

    def checkpoint_record(self, run_id: str) -> Path:
        """The sha256 and config digest of the run's current weights: in git, read by aggregation."""
        return self.metrics_dir(run_id) / "checkpoint.json"

    def eval_file(self, run_id: str) -> Path:
        return self.metrics_dir(run_id) / "eval.json"

    def soup_file(self, run_id: str) -> Path:
        return self.metrics_dir(run_id) / "soups.json"

    def robustness_file(self, run_id: str) -> Path:
        """The gradient-masking checks of a run (advsoup.robust.checks)."""
        return self.metrics_dir(run_id) / "robustness.json"

    @property
    def shift_suite(self) -> Path:
        """The corruption/sketch sets of the test set, derived data of this experiment's shift config: with its runs
        (DVC's cache), beside the hard subset's reference model."""
        return self.run_dir("shift_suite")

    @property
    def shift_reference(self) -> Path:
        """The independently trained reference model whose mistakes make the hard subset."""
        return self.run_dir("shift_reference")

    @property
    def shift_hard(self) -> Path:
        return self.shift_reference / "hard"

    def shift_file(self, run_id: str) -> Path:
        return self.metrics_dir(run_id) / "shift.json"

    def real_shift_file(self, run_id: str, set_key: str) -> Path:
        """One run on one published shifted ImageNet set (set_key: imagenet_c, imagenet_a, ...)."""
        return self.metrics_dir(run_id) / f"shift_{set_key}.json"

    @property
    def report(self) -> Path:
        """Summaries, tables, figures and parameter accounting of this experiment."""
        return self.root / "report"

    @property
    def summaries(self) -> Path:
        """The report's JSON summaries and nothing else: DVC's metrics (`dvc metrics show|diff`), whichever of them
        the experiment's report writes."""
        return self.report / "summaries"

    @property
    def summary(self) -> Path:
        return self.summaries / "summary.json"

    @property
    def shift_summary(self) -> Path:
        return self.summaries / "shift_summary.json"

    @property
    def real_shift_summary(self) -> Path:
        return self.summaries / "shift_real_summary.json"

    @property
    def regime_summary(self) -> Path:
        return self.summaries / "regime.json"

    @property
    def tables(self) -> Path:
        return self.report / "tables"

    @property
    def figures(self) -> Path:
        return self.report / "figures"

    @property
    def parameters_table(self) -> Path:
        """Domain-specific parameters of every adapter (advsoup.models.accounting)."""
        return self.tables / "adapter_parameters.csv"

    @property
    def parameters_summary(self) -> Path:
        return self.summaries / "adapter_parameters.json"

    @property
    def results_page(self) -> Path:
        """The experiment's results page, generated from its report (advsoup.report.page)."""
        return Path("docs") / "results" / f"{self.cfg.experiment}.md"

    @property
    def logs(self) -> Path:
        """Job and stage logs (not versioned); launcher.log_dir moves them, e.g. to a faster shared disk."""
        return Path(self.cfg.launcher.log_dir) / self.cfg.experiment if self.cfg.launcher.log_dir else self.root / "logs"


def shift_reference_run(cfg: Config) -> tuple[RunConfig, TrainConfig]:
    """The hard subset's reference model: a nominal run of shift.hard.family, trained apart from the grid."""
    h = cfg.shift.hard
    train = replace(cfg.train, epochs=h.epochs or cfg.train.epochs)
    return RunConfig(training="nominal", adapter="none", family=h.family, seeds=[h.seed]), train
