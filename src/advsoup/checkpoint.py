"""Checkpoints as safetensors plus JSON metadata: loading never unpickles anything.

Model weights: ``model.safetensors`` + ``model.json`` (what the network is).
Training state (for resuming): ``state-<sha256 prefix>.safetensors`` (model,
optimizer moments, RNG) + ``state.json`` (epoch, step, scheduler, config
digest, and the name of its tensor file). Every file is written to a temporary
file and renamed into place; a new state's tensors get a new name and
``state.json`` is replaced last, so a job killed at any point of a save (SLURM's
SIGKILL after the grace period) leaves the previous complete state.

Checkpoints travel through DVC remotes, so a file is checked before use: a
pickle (``torch.save``) is refused without being opened by pickle, and the
JSON records the sha256 of its tensor file, so a truncated or altered file is
refused too (safetensors alone only notices a damaged header).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_path, sha256, write_json


class CheckpointError(ValueError):
    """A checkpoint file that is not what advsoup writes."""


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"'{path}' is not valid JSON ({exc}); restore it with `dvc checkout` or retrain") \
            from None


def save_tensors(path: Path, tensors: Dict[str, torch.Tensor], meta: Optional[Dict[str, str]] = None) -> str:
    """Write the tensors atomically; returns the file's sha256, for the JSON beside it."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
        digest = sha256(tmp)
    return digest


def load_tensors(path: Path, expected_sha256: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The tensors of a safetensors file, refused when it is a pickle or differs from ``expected_sha256``."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    with open(path, "rb") as fh:
        head = fh.read(9)
    # A safetensors file opens with its header's length (8 bytes, little-endian), then the JSON header's "{";
    # that length's first byte is 0x80 for one file in 256, so only a file without the "{" is a pickle or zip.
    if head[8:9] != b"{" and (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise CheckpointError(f"'{path}' is a pickle/zip (torch.save) file; advsoup loads safetensors only "
                              "and never unpickles: re-export the weights with safetensors.torch.save_file")
    if expected_sha256 is not None and sha256(path) != expected_sha256:
        raise CheckpointError(f"'{path}' does not match the sha256 recorded beside it: it was altered or only "
                              "partly copied; restore it with `dvc checkout` / `dvc pull` or retrain")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"'{path}' is not a valid safetensors file ({exc}); it may be truncated or "
                              "tampered with: restore it with `dvc checkout` or retrain") from None
    # A diverged run or an edited file (its hash recomputed) would otherwise be evaluated or resumed as is.
    for key, val in tensors.items():
        if val.is_floating_point() and not bool(torch.isfinite(val).all()):
            raise CheckpointError(f"'{path}' holds non-finite values (NaN or inf) in '{key}': the training "
                                  f"diverged or the file was altered; restore it with `dvc checkout` or retrain "
                                  f"the run from the start (advsoup train ... --restart)")
    return tensors


def save_model(run_dir: Path, model: torch.nn.Module, meta: Dict[str, Any]) -> None:
    digest = save_tensors(run_dir / "model.safetensors", model.state_dict())
    write_json(run_dir / "model.json", {**meta, "weights_sha256": digest})


def load_model_meta(run_dir: Path) -> Dict[str, Any]:
    path = run_dir / "model.json"
    if not path.is_file():
        raise CheckpointError(f"'{path}' is missing: train the run first (advsoup train)")
    return _read_json(path)


def load_weights(run_dir: Path, model: torch.nn.Module) -> None:
    # model.json files written before the hash was recorded have none: those load unchecked.
    tensors = load_tensors(run_dir / "model.safetensors", load_model_meta(run_dir).get("weights_sha256"))
    own = model.state_dict()
    if set(tensors) != set(own) or any(tensors[k].shape != own[k].shape for k in own):
        raise CheckpointError(f"'{run_dir / 'model.safetensors'}' does not match the model described by "
                              f"'{run_dir / 'model.json'}' (different keys or shapes)")
    model.load_state_dict(tensors)


# ---- training state -------------------------------------------------------------------------

def _flatten_optimizer(opt: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            tensors[f"optim.{idx}.{name}"] = val if torch.is_tensor(val) else torch.tensor(val)
    return tensors, {"param_groups": sd["param_groups"]}


def _unflatten_optimizer(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Dict[str, Any]:
    state: Dict[int, Dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = val
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(run_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
               progress: Dict[str, Any], rng: Dict[str, torch.Tensor]) -> None:
    """Everything needed to resume. The tensors go to a new file named by their hash, then state.json
    is replaced to name it, then older tensor files are removed: no point of a kill tears the state."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    tensors.update(opt_tensors)
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    partial = run_dir / "state.partial.safetensors"
    digest = save_tensors(partial, tensors)
    tensor_file = run_dir / f"state-{digest[:16]}.safetensors"
    os.replace(partial, tensor_file)
    write_json(run_dir / "state.json", {**progress, "optimizer": opt_meta, "tensors_file": tensor_file.name,
                                        "tensors_sha256": digest})
    for old in [*run_dir.glob("state-*.safetensors"), run_dir / "state.safetensors"]:
        if old != tensor_file and old.is_file():
            old.unlink()


def load_state(run_dir: Path) -> Optional[Tuple[Dict[str, Any], Dict[str, torch.Tensor], Dict[str, Any],
                                                Dict[str, torch.Tensor]]]:
    """(progress, model state, optimizer state dict, rng) or None when there is nothing to resume."""
    meta_path = run_dir / "state.json"
    if not meta_path.is_file():
        return None
    meta = _read_json(meta_path)
    # States written before tensor files were named by their hash used one fixed name.
    tensor_file = run_dir / meta.pop("tensors_file", "state.safetensors")
    if not tensor_file.is_file():
        raise CheckpointError(f"'{meta_path}' names '{tensor_file.name}', which is missing: restore it with "
                              f"`dvc checkout`, or delete '{meta_path}' to train the run from the start")
    tensors = load_tensors(tensor_file, meta.pop("tensors_sha256", None))
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    rng = {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}
    return meta, model, _unflatten_optimizer(tensors, meta.pop("optimizer")), rng


def discard_state(run_dir: Path) -> None:
    """Remove the training state: state.json first, so a kill midway leaves no state naming missing files."""
    for old in [run_dir / "state.json", *run_dir.glob("state-*.safetensors"), run_dir / "state.safetensors",
                run_dir / "state.partial.safetensors"]:
        if old.is_file():
            old.unlink()


def resume_state(run_dir: Path, restart: str, restart_command: str, discard: bool = True):
    """What :func:`load_state` returns, or None: train from the start.

    ``restart``: a token ('' for none) naming one restart. A state saved under that same token (by this
    restart's job before a preemption requeued it) is resumed; any other state is discarded when ``discard``
    (one rank of a distributed run does), damaged or not. Without a restart, a damaged state is reported
    with ``restart_command``, the command that discards it.
    """
    if restart:
        try:  # state.json alone tells whose state it is: no need to read (and hash) its tensors otherwise
            if json.loads((run_dir / "state.json").read_text()).get("restart") == restart:
                return load_state(run_dir)
        except (OSError, ValueError):  # none, or damaged (CheckpointError is a ValueError): discarded below
            pass
        if discard:
            discard_state(run_dir)
        return None
    try:
        return load_state(run_dir)
    except CheckpointError as exc:
        raise CheckpointError(f"damaged training state in '{run_dir}': {exc}. To discard it and train the run "
                              f"from the start: {restart_command}") from None
