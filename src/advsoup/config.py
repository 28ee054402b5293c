"""The config schema, loading, validation and the run grid.

One source of truth for Snakemake, DVC, the CLI, tests and benchmarks:
``params/defaults.yaml`` <- experiment file(s) <- command-line dotlist, merged
once with OmegaConf against the dataclasses below. Every stage receives only
the typed sub-config it needs (:func:`stage_config`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULTS_FILE = REPO_ROOT / "params" / "defaults.yaml"
EXPERIMENTS_DIR = REPO_ROOT / "params" / "experiments"

TRAININGS = ("nominal", "adversarial", "cotrain")
ADAPTERS = ("none", "token", "layernorm", "bias", "head", "batchnorm")
VIT_ADAPTERS = ("none", "token", "layernorm", "bias", "head")
RESNET_ADAPTERS = ("none", "batchnorm")
FAMILIES = ("vit", "resnet")
NORMS = ("linf", "l2")
EXECUTORS = ("local", "slurm", "inline")
STAGES = ("prepare", "train", "evaluate", "soups", "aggregate", "figures")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the file."""


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    source_dir: str = "/usr/share/datasets/fashion-mnist"
    prepared_dir: str = "data/prepared"
    download: bool = False
    train_size: int = 0
    test_size: int = 0


@dataclass
class VitConfig:
    patch_size: int = 7
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0


@dataclass
class ResnetConfig:
    layers: List[int] = field(default_factory=lambda: [1, 1, 1, 1])
    stem_width: int = 16
    base_width: int = 64
    channels: List[int] = field(default_factory=lambda: [16, 32, 64, 128])


@dataclass
class ModelConfig:
    img_size: int = 28
    in_chans: int = 1
    num_classes: int = 10
    mean: List[float] = field(default_factory=lambda: [0.286])
    std: List[float] = field(default_factory=lambda: [0.353])
    vit: VitConfig = field(default_factory=VitConfig)
    resnet: ResnetConfig = field(default_factory=ResnetConfig)


@dataclass
class AttackConfig:
    norm: str = "linf"
    eps: float = 0.1
    steps: int = 2
    step_size: float = 0.05
    random_start: bool = True
    restarts: int = 1


@dataclass
class TrainConfig:
    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_epochs: float = 1.0
    clean_loss_weight: float = 1.0
    adv_loss_weight: float = 1.0
    label_smoothing: float = 0.0
    threads: int = 0
    log_every: int = 50
    checkpoint_every: int = 0
    attack: AttackConfig = field(default_factory=AttackConfig)


@dataclass
class EvaluateConfig:
    batch_size: int = 500
    robust_subset: int = 0
    soup_weights: List[float] = field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(11)]
    )
    threads: int = 0
    attack: AttackConfig = field(
        default_factory=lambda: AttackConfig(steps=10, step_size=0.025)
    )


@dataclass
class RunConfig:
    training: str = "cotrain"
    adapter: str = "token"
    family: str = "vit"
    seeds: List[int] = field(default_factory=lambda: [0])


@dataclass
class ResourcesConfig:
    cpus: int = 2
    gpus: int = 0
    mem_gb: float = 4.0
    time_min: int = 60


@dataclass
class LauncherConfig:
    executor: str = "local"
    log_dir: str = "results/logs"
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    poll_seconds: float = 1.0
    train: ResourcesConfig = field(default_factory=ResourcesConfig)
    evaluate: ResourcesConfig = field(default_factory=ResourcesConfig)


@dataclass
class Config:
    experiment: str = "demo"
    results_dir: str = "results"
    figures_dir: str = "figures"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    runs: Dict[str, RunConfig] = field(default_factory=dict)


def _located(exc: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(exc).splitlines()[0]
    return ConfigError(f"{source}: bad key '{key}': {msg}. Fix or remove it (every key is listed, "
                       f"with its type, in {DEFAULTS_FILE.relative_to(REPO_ROOT)}).")


def _merge_one(base: DictConfig, extra: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, extra)
    except OmegaConfBaseException as exc:
        raise _located(exc, source) from None


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; experiment files live in "
                          f"params/experiments/ (e.g. params/experiments/demo.yaml)")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return loaded


def load_config(files: Sequence[str | os.PathLike] = (), overrides: Sequence[str] = (),
                extra: Optional[Dict[str, Any]] = None) -> Config:
    """defaults <- files (in order) <- extra dict <- dotlist overrides, validated.

    Raises ConfigError naming the key and the file (or 'command line') at fault.
    """
    layers: List[tuple[str, Any]] = [(str(f), _read_yaml(Path(f))) for f in files]
    if extra:
        layers.append(("snakemake --config", OmegaConf.create(extra)))
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"command line: override '{bad[0]}' is not of the form key=value")
        try:
            layers.append(("command line", OmegaConf.from_dotlist(list(overrides))))
        except OmegaConfBaseException as exc:
            raise _located(exc, "command line") from None
    cfg = _merge_one(OmegaConf.structured(Config), _read_yaml(DEFAULTS_FILE), str(DEFAULTS_FILE))
    # Validate after every layer, so a bad value is blamed on the layer that brought it.
    for i, (source, layer) in enumerate(layers):
        cfg = _merge_one(cfg, layer, source)
        validate(OmegaConf.to_object(cfg), source, final=i == len(layers) - 1)
    if not layers:
        validate(OmegaConf.to_object(cfg), str(DEFAULTS_FILE), final=True)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def _check(ok: bool, source: str, key: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: bad value for '{key}': {what}")


def _validate_attack(a: AttackConfig, key: str, source: str) -> None:
    _check(a.norm in NORMS, source, f"{key}.norm", f"'{a.norm}' is not one of {NORMS}")
    _check(a.eps >= 0, source, f"{key}.eps", f"{a.eps} < 0; use eps >= 0 (0 disables the attack)")
    _check(a.steps >= 0, source, f"{key}.steps", f"{a.steps} < 0")
    _check(a.step_size >= 0, source, f"{key}.step_size", f"{a.step_size} < 0")
    _check(a.restarts >= 1, source, f"{key}.restarts", f"{a.restarts} < 1")


def validate(cfg: Config, source: str = "config", final: bool = True) -> None:
    """Range and choice checks that a type schema cannot express.

    ``final=False`` skips the checks that only the complete config must pass.
    """
    _check(bool(cfg.experiment) and "/" not in cfg.experiment, source, "experiment",
           "must be a non-empty name without '/'")
    _check(cfg.model.img_size > 0, source, "model.img_size", "must be > 0")
    _check(len(cfg.model.mean) == cfg.model.in_chans == len(cfg.model.std), source, "model.mean",
           "model.mean and model.std need one value per input channel (model.in_chans)")
    _check(cfg.model.img_size % cfg.model.vit.patch_size == 0, source, "model.vit.patch_size",
           f"{cfg.model.vit.patch_size} does not divide model.img_size={cfg.model.img_size}")
    _check(cfg.model.vit.embed_dim % cfg.model.vit.num_heads == 0, source, "model.vit.num_heads",
           "must divide model.vit.embed_dim")
    t = cfg.train
    _check(t.epochs >= 1, source, "train.epochs", f"{t.epochs} < 1")
    _check(t.batch_size >= 2, source, "train.batch_size", f"{t.batch_size} < 2")
    _check(t.lr > 0, source, "train.lr", "must be > 0")
    _check(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), source, "train.betas",
           "two values in [0, 1)")
    _check(t.clean_loss_weight >= 0 and t.adv_loss_weight >= 0, source, "train.clean_loss_weight",
           "loss weights must be >= 0")
    _validate_attack(t.attack, "train.attack", source)
    e = cfg.evaluate
    _validate_attack(e.attack, "evaluate.attack", source)
    _check(e.batch_size >= 1, source, "evaluate.batch_size", "must be >= 1")
    _check(len(e.soup_weights) > 0, source, "evaluate.soup_weights", "list at least one weight")
    for i, w in enumerate(e.soup_weights):
        _check(0.0 <= w <= 1.0, source, f"evaluate.soup_weights[{i}]",
               f"{w} is outside [0, 1] (0 = clean mode, 1 = robust mode)")
    _check(cfg.launcher.executor in EXECUTORS, source, "launcher.executor",
           f"'{cfg.launcher.executor}' is not one of {EXECUTORS}")
    _check(len(cfg.runs) > 0 or not final, source, "runs",
           "the experiment defines no runs; add them under runs: (see params/experiments/demo.yaml)")
    for name, run in cfg.runs.items():
        key = f"runs.{name}"
        _check(name.replace("_", "").isalnum(), source, key,
               "run names use letters, digits and '_' only")
        _check(run.family in FAMILIES, source, f"{key}.family", f"'{run.family}' is not one of {FAMILIES}")
        _check(run.training in TRAININGS, source, f"{key}.training",
               f"'{run.training}' is not one of {TRAININGS}")
        allowed = VIT_ADAPTERS if run.family == "vit" else RESNET_ADAPTERS
        _check(run.adapter in allowed, source, f"{key}.adapter",
               f"unknown adapter '{run.adapter}' for family '{run.family}'; choose one of {allowed}")
        _check(run.training == "cotrain" or run.adapter == "none", source, f"{key}.adapter",
               f"only co-training uses an adapter; set adapter: none for training '{run.training}'")
        _check(len(run.seeds) > 0 and len(set(run.seeds)) == len(run.seeds), source,
               f"{key}.seeds", "list one or more distinct seeds")


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

    @property
    def summary(self) -> Path:
        return Path(self.cfg.results_dir) / "summary.json"

    @property
    def tables(self) -> Path:
        return Path(self.cfg.results_dir) / "tables"

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
    if stage not in STAGES:
        raise ConfigError(f"unknown stage '{stage}'; stages are {STAGES}")
    c = OmegaConf.structured(cfg)

    def part(key: str) -> Any:
        return OmegaConf.to_container(OmegaConf.select(c, key), resolve=True)

    out: Dict[str, Any] = {}
    if stage == "prepare":
        out["data"] = part("data")
    elif stage in ("train", "evaluate", "soups"):
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
            if stage == "evaluate":
                out["evaluate"].pop("soup_weights")
    else:  # aggregate / figures: the grid and the evaluation protocol they report
        out["runs"] = part("runs")
        out["evaluate"] = part("evaluate")
        out["train_attack"] = part("train.attack")
    return out


def dotlist(nested: Any, prefix: str = "") -> List[str]:
    """{'launcher': {'executor': 'slurm'}} -> ['launcher.executor=slurm'] (Snakemake --config to overrides)."""
    if isinstance(nested, dict) or hasattr(nested, "items"):
        return [o for k, v in nested.items() for o in dotlist(v, f"{prefix}{k}.")]
    if isinstance(nested, (list, tuple)):
        nested = "[" + ",".join(str(v) for v in nested) + "]"
    return [f"{prefix[:-1]}={nested}"]


def to_yaml(obj: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(obj), sort_keys=True)


def digest(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
