"""Loading: params/defaults.yaml <- experiment file(s) <- command-line dotlist, merged once, validated."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .schema import DEFAULTS_FILE, REPO_ROOT, Config, ConfigError, validate


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
        # One line: YAML's message spans several, with the line and column of the fault.
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}; fix the line named") from None
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
        if i == len(layers) - 1 and not cfg.runs:  # the grid comes from the experiment files, whatever came last
            raise ConfigError(f"{', '.join(str(f) for f in files) or DEFAULTS_FILE}: the experiment defines no "
                              f"runs; add them under runs: (see params/experiments/demo.yaml)")
        validate(OmegaConf.to_object(cfg), source, final=i == len(layers) - 1)
    if not layers:
        validate(OmegaConf.to_object(cfg), str(DEFAULTS_FILE), final=True)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


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
