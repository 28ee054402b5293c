"""The config schema: every key with its type and default, and the checks a type cannot express.

One source of truth for Snakemake, DVC, the CLI, tests and benchmarks:
``params/defaults.yaml`` <- experiment file(s) <- command-line dotlist, merged
once with OmegaConf against the dataclasses below. Every stage receives only
the typed sub-config it needs (advsoup.stages).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence


REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULTS_FILE = REPO_ROOT / "params" / "defaults.yaml"
EXPERIMENTS_DIR = REPO_ROOT / "params" / "experiments"

TRAININGS = ("nominal", "adversarial", "cotrain")
ADAPTERS = ("none", "token", "layernorm", "bias", "head", "batchnorm")
VIT_ADAPTERS = ("none", "token", "layernorm", "bias", "head")
RESNET_ADAPTERS = ("none", "batchnorm")
FAMILIES = ("vit", "resnet")
NORMS = ("linf", "l2")
# evaluation attacks (advsoup.robust); training always runs PGD. pgd, or APGD attacks joined by '+' (e.g.
# apgd-ce+apgd-dlr): an image robust only if it survives each, run in the order given
# (advsoup.robust.stream.attack_batch)
APGD_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t")
ATTACK_MODEL_MODES = ("eval", "train")  # the network the training attack sees (see advsoup.robust.attacks)
AUTOATTACK_VERSIONS = ("standard", "plus", "custom")
AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
EXECUTORS = ("local", "slurm", "inline")
DATASETS = ("fashion_mnist", "cifar10", "cifar100", "imagenet")  # advsoup.data.registry
AMP = ("none", "bf16")
RESNET_BLOCKS = ("basic", "bottleneck")
# The ImageNet-C corruptions (15 benchmark + 4 held-out), as imagecorruptions names them.
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate")
# ImageNet-C's 15 benchmark corruptions (mCE averages these); the last 4 above are its held-out extra set.
BENCHMARK_CORRUPTIONS = CORRUPTIONS[:15]


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
    val_size: int = 1000
    checksum: bool = True  # cifar*: the published archive MD5 and split sizes
    hash_files: bool = False  # imagenet: sha256 of every image in the file list (slow: opt-in)
    workers: int = 0  # DataLoader worker processes (file datasets, or augmentation)
    pin_memory: bool = True
    persistent_workers: bool = True
    augment: "AugmentConfig" = field(default_factory=lambda: AugmentConfig())


@dataclass
class AugmentConfig:
    enabled: bool = False
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: List[float] = field(default_factory=lambda: [0.75, 1.3333333])
    hflip: float = 0.5
    auto_augment: str = ""
    color_jitter: float = 0.0
    interpolation: str = "random"
    eval_crop_pct: float = 0.875


@dataclass
class VitConfig:
    patch_size: int = 7
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    name: str = ""  # a timm model name (e.g. vit_base_patch16_224); "" = the preset sized by the keys above
    pretrained: bool = False
    kwargs: Dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model with a name


@dataclass
class ResnetConfig:
    layers: List[int] = field(default_factory=lambda: [1, 1, 1, 1])
    stem_width: int = 16
    base_width: int = 64
    channels: List[int] = field(default_factory=lambda: [16, 32, 64, 128])
    block: str = "basic"
    name: str = ""
    pretrained: bool = False
    kwargs: Dict[str, Any] = field(default_factory=dict)


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
    method: str = "pgd"
    norm: str = "linf"
    eps: float = 0.1
    steps: int = 2
    step_size: float = 0.05
    random_start: bool = True
    restarts: int = 1
    # apgd-t only: how many target classes (the clean prediction's runner-ups) APGD-T tries; None = AutoAttack's 9
    # (at most classes - 1)
    target_classes: Optional[int] = None


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
    val_every: int = 0
    attack: AttackConfig = field(default_factory=AttackConfig)
    attack_model_mode: str = "eval"
    amp: str = "none"
    accum_steps: int = 1
    clip_grad: float = 0.0
    ema: bool = False
    ema_decay: float = 0.9998
    compile: bool = False
    channels_last: bool = False
    mixup: "MixupConfig" = field(default_factory=lambda: MixupConfig())


@dataclass
class MixupConfig:
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5


@dataclass
class AutoAttackConfig:
    enabled: bool = True
    version: str = "standard"
    attacks: List[str] = field(default_factory=list)
    subset: int = 1000
    # Images per AutoAttack call: None = all `subset` images at once (the old behaviour); N = N at a time, so
    # memory holds N images (and their adversarial copies), and a requeued evaluation loses at most one chunk.
    chunk: Optional[int] = None


@dataclass
class RobustnessConfig:
    subset: int = 1000
    weights: List[float] = field(default_factory=lambda: [0.0, 1.0])
    eps_multiples: List[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0])
    steps_multiples: List[int] = field(default_factory=lambda: [1, 5])
    large_eps_max_acc: float = 0.02
    tolerance: float = 0.005
    autoattack_max_gap: float = 0.015


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
    autoattack: AutoAttackConfig = field(default_factory=AutoAttackConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    # Clean accuracy on the run's own training images (eval mode, no augmentation), for the train-test gap:
    # None = not measured (the old behaviour); N = the first N of the run's training images (a class-balanced
    # prefix of the same order training takes them from); 0 = all of them.
    train_subset: Optional[int] = None


@dataclass
class RunConfig:
    training: str = "cotrain"
    adapter: str = "token"
    family: str = "vit"
    seeds: List[int] = field(default_factory=lambda: [0])
    # Per-run settings (None = the experiment's own, the old behaviour): a grid that varies the training set or
    # the schedule, e.g. params/experiments/regime.yaml. Stages see them as data.train_size / train.epochs.
    train_size: Optional[int] = None
    epochs: Optional[int] = None

    def resolve_data(self, data: "DataConfig") -> "DataConfig":
        """The data config this run trains on: data.train_size replaced by the run's own, if it has one."""
        return data if self.train_size is None else replace(data, train_size=self.train_size)

    def resolve_train(self, train: "TrainConfig") -> "TrainConfig":
        """The training config of this run: train.epochs replaced by the run's own, if it has one."""
        return train if self.epochs is None else replace(train, epochs=self.epochs)


@dataclass
class ResourcesConfig:
    cpus: int = 2
    gpus: int = 0
    mem_gb: float = 4.0
    time_min: int = 60
    nodes: int = 1
    tasks: int = 0


@dataclass
class LauncherConfig:
    executor: str = "local"
    log_dir: str = ""
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    setup: List[str] = field(default_factory=list)
    sbatch: Dict[str, Any] = field(default_factory=dict)
    poll_seconds: float = 1.0
    # One entry per job stage (advsoup.stages.JOB_STAGES), all listed in params/defaults.yaml.
    resources: Dict[str, ResourcesConfig] = field(default_factory=dict)


@dataclass
class ShiftHardConfig:
    family: str = "resnet"
    seed: int = 1000
    epochs: int = 0
    max_images: int = 0


@dataclass
class ShiftFinetuneConfig:
    steps: int = 30
    adapter_lr: float = 1e-2
    full_lr: float = 1e-4


@dataclass
class RealSetConfig:
    """One published shifted ImageNet set (advsoup.shift.layout)."""
    enabled: bool = True
    root: str = ""
    subset: int = 0


@dataclass
class RealImagenetCConfig(RealSetConfig):
    subset: int = 5000
    corruptions: List[str] = field(default_factory=lambda: list(BENCHMARK_CORRUPTIONS))
    severities: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])


@dataclass
class RealShiftConfig:
    batch_size: int = 256
    workers: int = 8
    amp: str = "none"
    imagenet_c: RealImagenetCConfig = field(default_factory=RealImagenetCConfig)
    imagenet_a: RealSetConfig = field(default_factory=RealSetConfig)
    imagenet_r: RealSetConfig = field(default_factory=RealSetConfig)
    imagenet_sketch: RealSetConfig = field(default_factory=RealSetConfig)


@dataclass
class ShiftConfig:
    seed: int = 0
    subset: int = 1000
    corruptions: List[str] = field(default_factory=lambda: list(CORRUPTIONS))
    severities: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    sketch: bool = True
    hard: ShiftHardConfig = field(default_factory=ShiftHardConfig)
    k: int = 32
    draws: int = 5
    finetune: ShiftFinetuneConfig = field(default_factory=ShiftFinetuneConfig)
    imagenet_root: str = ""
    real: RealShiftConfig = field(default_factory=RealShiftConfig)


@dataclass
class Config:
    experiment: str = "demo"
    results_dir: str = "results"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    shift: ShiftConfig = field(default_factory=ShiftConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    report: "ReportConfig" = field(default_factory=lambda: ReportConfig())
    runs: Dict[str, RunConfig] = field(default_factory=dict)


@dataclass
class ReportConfig:
    # The report stages the experiment's default target (`rule all`) builds and its results page waits for:
    # None = the full report (figures, the shift figures, adapters: every soup, robustness check and shift job).
    # An experiment that asks one question lists only what answers it, e.g. [regime]: its DAG is then train,
    # evaluate, regime and the page (advsoup.stages.report_targets).
    targets: Optional[List[str]] = None


def _check(ok: bool, source: str, key: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: bad value for '{key}': {what}")


def _attack_method_ok(method: str) -> bool:
    parts = method.split("+")
    return method == "pgd" or (all(p in APGD_ATTACKS for p in parts) and len(set(parts)) == len(parts))


def _validate_attack(a: AttackConfig, key: str, source: str) -> None:
    if key == "evaluate.attack":  # train.attack: PGD only, checked with the training config
        _check(_attack_method_ok(a.method), source, f"{key}.method",
               f"'{a.method}' is neither pgd nor APGD attacks joined by '+', each once, from {APGD_ATTACKS} "
               f"(e.g. apgd-ce+apgd-dlr, apgd-ce+apgd-t)")
    _check(a.target_classes is None or "apgd-t" in a.method.split("+"), source, f"{key}.target_classes",
           f"{a.target_classes} target classes, but {key}.method '{a.method}' has no apgd-t to use them; "
           f"remove the key or add apgd-t")
    _check(a.target_classes is None or a.target_classes >= 1, source, f"{key}.target_classes",
           f"{a.target_classes} < 1")
    _check(a.norm in NORMS, source, f"{key}.norm", f"'{a.norm}' is not one of {NORMS}")
    _check(a.eps >= 0, source, f"{key}.eps", f"{a.eps} < 0; use eps >= 0 (0 disables the attack)")
    _check(a.steps >= 0, source, f"{key}.steps", f"{a.steps} < 0")
    _check(a.step_size >= 0, source, f"{key}.step_size", f"{a.step_size} < 0")
    _check(a.restarts >= 1, source, f"{key}.restarts", f"{a.restarts} < 1")


def _validate_shift(s: ShiftConfig, source: str) -> None:
    _check(s.subset >= 0, source, "shift.subset", f"{s.subset} < 0 (0 = the whole test split)")
    for i, c in enumerate(s.corruptions):
        _check(c in CORRUPTIONS, source, f"shift.corruptions[{i}]",
               f"unknown corruption '{c}'; choose from {CORRUPTIONS}")
    _check(len(set(s.corruptions)) == len(s.corruptions), source, "shift.corruptions", "lists a corruption twice")
    for i, sev in enumerate(s.severities):
        _check(1 <= sev <= 5, source, f"shift.severities[{i}]", f"{sev} is not an ImageNet-C severity (1 to 5)")
    _check(len(set(s.severities)) == len(s.severities), source, "shift.severities", "lists a severity twice")
    _check(s.k >= 1, source, "shift.k", f"{s.k} < 1: choose at least one labelled target example")
    _check(s.subset == 0 or s.k < s.subset, source, "shift.k",
           f"{s.k} leaves no evaluation example in a shift set of shift.subset={s.subset}")
    _check(s.draws >= 1, source, "shift.draws", f"{s.draws} < 1")
    _check(s.hard.family in FAMILIES, source, "shift.hard.family", f"'{s.hard.family}' is not one of {FAMILIES}")
    _check(s.hard.epochs >= 0 and s.hard.max_images >= 0, source, "shift.hard.epochs",
           "shift.hard.epochs and shift.hard.max_images must be >= 0 (0 = train.epochs / all)")
    f = s.finetune
    _check(f.steps >= 0, source, "shift.finetune.steps", f"{f.steps} < 0")
    _check(f.adapter_lr > 0 and f.full_lr > 0, source, "shift.finetune.adapter_lr", "learning rates must be > 0")
    _validate_real_shifts(s, source)


def _validate_real_shifts(s: ShiftConfig, source: str) -> None:
    r = s.real
    _check(r.batch_size >= 1, source, "shift.real.batch_size", f"{r.batch_size} < 1")
    _check(r.workers >= 0, source, "shift.real.workers", f"{r.workers} < 0 (0 = load in the main process)")
    _check(r.amp in AMP, source, "shift.real.amp", f"'{r.amp}' is not one of {AMP}")
    for name in ("imagenet_c", "imagenet_a", "imagenet_r", "imagenet_sketch"):
        sub: RealSetConfig = getattr(r, name)
        key = f"shift.real.{name}.subset"
        _check(sub.subset >= 0, source, key, f"{sub.subset} < 0 (0 = the whole set)")
        _check(sub.subset == 0 or s.k < sub.subset, source, key,
               f"{sub.subset} images leave no evaluation example after shift.k={s.k} labelled ones")
    c = r.imagenet_c
    for i, name in enumerate(c.corruptions):
        _check(name in CORRUPTIONS, source, f"shift.real.imagenet_c.corruptions[{i}]",
               f"unknown corruption '{name}'; choose from {CORRUPTIONS}")
    _check(len(set(c.corruptions)) == len(c.corruptions) and len(c.corruptions) > 0, source,
           "shift.real.imagenet_c.corruptions", "list one or more corruptions, each once")
    _check(len(set(c.severities)) == len(c.severities) and len(c.severities) > 0
           and all(1 <= v <= 5 for v in c.severities), source, "shift.real.imagenet_c.severities",
           f"{list(c.severities)}: list one or more distinct ImageNet-C severities (1 to 5)")


def _validate_launcher(la: LauncherConfig, source: str, final: bool) -> None:
    _check(la.executor in EXECUTORS, source, "launcher.executor", f"'{la.executor}' is not one of {EXECUTORS}")
    _check(la.poll_seconds > 0, source, "launcher.poll_seconds", f"{la.poll_seconds} <= 0")
    from ..stages import STAGES  # the registry names the job stages (it imports this module)

    for stage, r in la.resources.items():
        key = f"launcher.resources.{stage}"
        _check(stage in STAGES and STAGES[stage].job, source, key,
               f"'{stage}' is not a stage that runs as a job; those are "
               f"{', '.join(s for s in STAGES if STAGES[s].job)}")
        _check(r.cpus >= 1, source, f"{key}.cpus", f"{r.cpus} < 1")
        _check(r.gpus >= 0 and r.tasks >= 0, source, f"{key}.gpus", "gpus and tasks must be >= 0")
        _check(r.nodes >= 1, source, f"{key}.nodes", f"{r.nodes} < 1")
        _check(r.nodes == 1 or la.executor != "local" or not final, source, f"{key}.nodes",
               f"{r.nodes} nodes need the slurm executor (the local executor runs on this machine)")
        _check(STAGES[stage].distributed or (r.nodes == 1 and r.tasks <= 1), source, f"{key}.nodes",
               f"stage {stage} runs as one task on one node: set nodes: 1 and tasks: 0")
        _check(r.mem_gb > 0, source, f"{key}.mem_gb", f"{r.mem_gb} <= 0")
        _check(r.time_min >= 1, source, f"{key}.time_min", f"{r.time_min} < 1 minute")
    missing = [s for s in STAGES if STAGES[s].job and s not in la.resources]
    _check(not missing or not final, source, "launcher.resources",
           f"no resources for {', '.join(missing)}: every job stage has an entry in params/defaults.yaml")


def _validate_scale(cfg: Config, source: str) -> None:
    """The keys of datasets, input pipeline, timm models and training at scale."""
    d, t = cfg.data, cfg.train
    _check(d.name in DATASETS, source, "data.name", f"unknown dataset '{d.name}'; choose one of {DATASETS}")
    _check(d.workers >= 0, source, "data.workers", f"{d.workers} < 0 (0 = load in the training process)")
    a = d.augment
    _check(len(a.scale) == 2 and 0 < a.scale[0] <= a.scale[1] <= 1, source, "data.augment.scale",
           "two values 0 < min <= max <= 1 (area fraction of RandomResizedCrop)")
    _check(len(a.ratio) == 2 and 0 < a.ratio[0] <= a.ratio[1], source, "data.augment.ratio",
           "two values 0 < min <= max (aspect ratio of RandomResizedCrop)")
    _check(0 <= a.hflip <= 1, source, "data.augment.hflip", "a probability in [0, 1]")
    _check(0 < a.eval_crop_pct <= 1, source, "data.augment.eval_crop_pct", "must lie in (0, 1]")
    _check(cfg.model.resnet.block in RESNET_BLOCKS, source, "model.resnet.block",
           f"'{cfg.model.resnet.block}' is not one of {RESNET_BLOCKS}")
    _check(t.amp in AMP, source, "train.amp", f"'{t.amp}' is not one of {AMP}")
    _check(t.accum_steps >= 1, source, "train.accum_steps", f"{t.accum_steps} < 1")
    _check(t.val_every >= 0, source, "train.val_every", f"{t.val_every} < 0 (0 = no validation pass)")
    _check(t.val_every == 0 or d.val_size > 0, source, "train.val_every",
           "a validation pass needs a validation split: set data.val_size > 0, or train.val_every: 0")
    _check(t.clip_grad >= 0, source, "train.clip_grad", f"{t.clip_grad} < 0 (0 = no clipping)")
    _check(0 < t.ema_decay < 1, source, "train.ema_decay", f"{t.ema_decay} outside (0, 1)")
    m = t.mixup
    _check(m.mixup_alpha >= 0 and m.cutmix_alpha >= 0, source, "train.mixup.mixup_alpha",
           "mixup_alpha and cutmix_alpha must be >= 0 (0 = off)")
    _check(0 <= m.prob <= 1 and 0 <= m.switch_prob <= 1, source, "train.mixup.prob",
           "prob and switch_prob are probabilities in [0, 1]")
    _check(not (m.mixup_alpha or m.cutmix_alpha) or t.batch_size % 2 == 0, source, "train.batch_size",
           "MixUp/CutMix pair samples: use an even batch size")


def _validate_robust_evaluation(e: EvaluateConfig, source: str) -> None:
    a = e.attack
    _check(a.method != "pgd" or a.eps == 0 or a.steps * a.step_size >= a.eps, source, "evaluate.attack.step_size",
           f"steps * step_size = {a.steps * a.step_size:g} < eps = {a.eps:g}: PGD cannot reach the edge of "
           f"the eps-ball, a weak attack that overstates robustness; raise steps or step_size")
    aa = e.autoattack
    _check(aa.version in AUTOATTACK_VERSIONS, source, "evaluate.autoattack.version",
           f"'{aa.version}' is not one of {AUTOATTACK_VERSIONS}")
    _check(aa.version == "custom" or not aa.attacks, source, "evaluate.autoattack.attacks",
           f"version '{aa.version}' fixes its own attacks: leave attacks empty or use version: custom")
    _check(aa.version != "custom" or bool(aa.attacks), source, "evaluate.autoattack.attacks",
           f"version custom needs a list of attacks from {AUTOATTACK_ATTACKS}")
    for i, name in enumerate(aa.attacks):
        _check(name in AUTOATTACK_ATTACKS, source, f"evaluate.autoattack.attacks[{i}]",
               f"'{name}' is not one of {AUTOATTACK_ATTACKS}")
    _check(aa.subset >= 0, source, "evaluate.autoattack.subset", f"{aa.subset} < 0 (0 = the whole test set)")
    _check(aa.chunk is None or aa.chunk >= 1, source, "evaluate.autoattack.chunk",
           f"{aa.chunk} < 1: give the images per AutoAttack call, or leave the key out (null) for all at once")
    r = e.robustness
    _check(r.subset >= 0, source, "evaluate.robustness.subset", f"{r.subset} < 0 (0 = the whole test set)")
    _check(len(r.weights) > 0 and all(0.0 <= w <= 1.0 for w in r.weights), source,
           "evaluate.robustness.weights", "list one or more soup weights in [0, 1] (0 = clean, 1 = robust mode)")
    _check(len(r.eps_multiples) >= 2 and all(m >= 0 for m in r.eps_multiples)
           and list(r.eps_multiples) == sorted(set(r.eps_multiples)), source, "evaluate.robustness.eps_multiples",
           "list two or more distinct multiples of evaluate.attack.eps, >= 0, in increasing order")
    _check(len(r.steps_multiples) >= 2 and all(m >= 1 for m in r.steps_multiples)
           and list(r.steps_multiples) == sorted(set(r.steps_multiples)), source,
           "evaluate.robustness.steps_multiples",
           "list two or more distinct multiples (>= 1) of evaluate.attack.steps, in increasing order")
    _check(0.0 <= r.large_eps_max_acc <= 1.0, source, "evaluate.robustness.large_eps_max_acc", "must lie in [0, 1]")
    _check(0.0 <= r.tolerance < 1.0, source, "evaluate.robustness.tolerance", "must lie in [0, 1)")
    _check(0.0 <= r.autoattack_max_gap < 1.0, source, "evaluate.robustness.autoattack_max_gap", "must lie in [0, 1)")


def _validate_hard_reference(cfg: Config, source: str) -> None:
    """The hard subset's reference must be independent of the runs it measures (ImageNet-A's premise).

    A run of the same family and seed starts from the same initial weights and
    sees the training images in the same order; a nominal one IS the reference
    (its accuracy on the hard subset is 0 by construction).
    """
    h = cfg.shift.hard
    for name, run in cfg.runs.items():
        _check(run.family != h.family or h.seed not in run.seeds, source, "shift.hard.seed",
               f"the hard subset's reference (a nominal {h.family}, seed {h.seed}) shares family and seed with "
               f"runs.{name} (seeds {list(run.seeds)}): it would not be independent of the grid; choose a "
               f"shift.hard.seed no {h.family} run uses, or another shift.hard.family")


def validate(cfg: Config, source: str = "config", final: bool = True) -> None:
    """Range and choice checks that a type schema cannot express.

    ``final=False`` skips the checks that only the complete config must pass.
    """
    _check(bool(cfg.experiment) and "/" not in cfg.experiment, source, "experiment",
           "must be a non-empty name without '/'")
    d = cfg.data
    _check(d.val_size >= 0, source, "data.val_size", f"{d.val_size} < 0 (0 = no validation split)")
    _check(cfg.model.img_size > 0, source, "model.img_size", "must be > 0")
    _check(len(cfg.model.mean) == cfg.model.in_chans == len(cfg.model.std), source, "model.mean",
           "model.mean and model.std need one value per input channel (model.in_chans)")
    _check(bool(cfg.model.vit.name) or cfg.model.img_size % cfg.model.vit.patch_size == 0, source,
           "model.vit.patch_size", f"{cfg.model.vit.patch_size} does not divide model.img_size={cfg.model.img_size}")
    _validate_scale(cfg, source)
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
    _check(t.attack.method == "pgd", source, "train.attack.method",
           f"'{t.attack.method}': training attacks with PGD; APGD methods are for evaluate.attack")
    e = cfg.evaluate
    _validate_attack(e.attack, "evaluate.attack", source)
    _validate_robust_evaluation(e, source)
    _check(t.attack_model_mode in ATTACK_MODEL_MODES, source, "train.attack_model_mode",
           f"'{t.attack_model_mode}' is not one of {ATTACK_MODEL_MODES}")
    _check(e.batch_size >= 1, source, "evaluate.batch_size", "must be >= 1")
    _check(len(e.soup_weights) > 0, source, "evaluate.soup_weights", "list at least one weight")
    for i, w in enumerate(e.soup_weights):
        _check(0.0 <= w <= 1.0, source, f"evaluate.soup_weights[{i}]",
               f"{w} is outside [0, 1] (0 = clean mode, 1 = robust mode)")
    _validate_shift(cfg.shift, source)
    _validate_launcher(cfg.launcher, source, final)
    _check(len(cfg.runs) > 0 or not final, source, "runs",
           "the experiment defines no runs; add them under runs: (see params/experiments/demo.yaml)")
    _validate_hard_reference(cfg, source)
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
        _check(run.train_size is None or run.train_size >= 1, source, f"{key}.train_size",
               f"{run.train_size} < 1: give the run's number of training images (the first N of the class-balanced "
               f"order), or leave the key out to use data.train_size")
        _check(run.epochs is None or run.epochs >= 1, source, f"{key}.epochs",
               f"{run.epochs} < 1: give the run's number of epochs, or leave the key out to use train.epochs")
    _validate_report(cfg, source)


def _validate_report(cfg: Config, source: str) -> None:
    """evaluate.train_subset and report.targets (the options of experiments that ask one question)."""
    n = cfg.evaluate.train_subset
    _check(n is None or n >= 0, source, "evaluate.train_subset",
           f"{n} < 0: N >= 1 measures the first N of each run's training images, 0 all of them; leave the key out "
           f"(null) to measure none")
    targets = cfg.report.targets
    if targets is None:
        return
    from ..stages import STAGES  # the registry names the stages (it imports this module)

    # the stages that make a report part; the page comes after them
    choices = tuple(n for n, st in STAGES.items() if st.report and n != "results_page")
    _check(len(targets) > 0 and len(set(targets)) == len(targets), source, "report.targets",
           f"{list(targets)}: list one or more distinct report stages of {choices}, or leave the key out (null) "
           f"for the full report")
    for i, t in enumerate(targets):
        _check(t in choices, source, f"report.targets[{i}]", f"'{t}' is not a report stage; choose from {choices}")


