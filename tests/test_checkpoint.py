"""Checkpoints: safetensors plus JSON; a pickled, truncated or altered file is refused, never unpickled."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch

from advsoup import checkpoint as ckpt
from advsoup.config import ModelConfig
from advsoup.models import build_model


class _Payload:
    """Unpickling this creates a folder: the proof that a loader ran pickle on the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.fixture
def saved(tmp_path) -> tuple[Path, torch.nn.Module]:
    model = build_model(ModelConfig(), "vit", "token")
    run_dir = tmp_path / "run"
    ckpt.save_model(run_dir, model, {"family": "vit", "adapter": "token"})
    return run_dir, model


def _fresh() -> torch.nn.Module:
    return build_model(ModelConfig(), "vit", "token")


def test_weights_round_trip_with_their_metadata(saved):
    run_dir, model = saved
    meta = ckpt.load_model_meta(run_dir)
    assert meta["family"] == "vit" and meta["adapter"] == "token" and len(meta["weights_sha256"]) == 64
    other = _fresh()
    ckpt.load_weights(run_dir, other)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in other.state_dict().items())


@pytest.mark.parametrize("zipped", [True, False], ids=["torch.save", "torch.save-legacy"])
def test_a_pickled_checkpoint_is_refused_without_unpickling(saved, tmp_path, zipped):
    run_dir, model = saved
    marker = tmp_path / "unpickled"
    torch.save({**model.state_dict(), "payload": _Payload(marker)}, run_dir / "model.safetensors",
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(ckpt.CheckpointError, match="pickle/zip .torch.save. file.*never unpickles"):
        ckpt.load_weights(run_dir, _fresh())
    assert not marker.exists()


def test_a_truncated_checkpoint_is_refused(saved):
    run_dir, _ = saved
    path = run_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="altered or only partly copied"):
        ckpt.load_weights(run_dir, _fresh())
    # without the recorded hash, safetensors itself notices the missing bytes
    with pytest.raises(ckpt.CheckpointError, match="not a valid safetensors file.*truncated or tampered"):
        ckpt.load_tensors(path)


def test_an_altered_header_is_refused(saved):
    run_dir, _ = saved
    path = run_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    name = next(k for k in header if k != "__metadata__")
    assert header[name]["dtype"] == "F32"
    start = data.index(json.dumps(name).encode(), 8)
    at = data.index(b'"F32"', start, 8 + size)
    data[at:at + 5] = b'"I32"'  # same length: only the type changes
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="altered or only partly copied"):
        ckpt.load_weights(run_dir, _fresh())
    data[8:10] = b"[["  # header no longer a JSON object
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="not a valid safetensors file"):
        ckpt.load_tensors(path)


def test_altered_weights_are_refused(saved):
    """A flipped byte in the tensor data keeps a valid safetensors file: only the recorded hash catches it."""
    run_dir, _ = saved
    path = run_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert ckpt.load_tensors(path)  # still loads without the hash ...
    with pytest.raises(ckpt.CheckpointError, match="altered or only partly copied"):
        ckpt.load_weights(run_dir, _fresh())  # ... and is refused with it


def test_weights_of_another_model_are_refused(saved):
    run_dir, _ = saved
    with pytest.raises(ckpt.CheckpointError, match="does not match the model"):
        ckpt.load_weights(run_dir, build_model(ModelConfig(), "vit", "none"))


def test_broken_metadata_is_refused(saved):
    run_dir, _ = saved
    (run_dir / "model.json").write_text('{"family": "vit", ')
    with pytest.raises(ckpt.CheckpointError, match="model.json' is not valid JSON"):
        ckpt.load_model_meta(run_dir)


def test_an_altered_training_state_is_refused(tmp_path):
    model = _fresh()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.rand(2, 1, 28, 28), 0.0).sum().backward()
    opt.step()
    ckpt.save_state(tmp_path, model, opt, {"step": 1}, {"cpu": torch.get_rng_state()})
    progress, weights, opt_state, rng = ckpt.load_state(tmp_path)
    assert progress == {"step": 1} and set(weights) == set(model.state_dict()) and opt_state["state"]
    (path,) = tmp_path.glob("state-*.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=f"{path.name}' does not match the sha256"):
        ckpt.load_state(tmp_path)
    path.unlink()
    with pytest.raises(ckpt.CheckpointError, match=f"names '{path.name}', which is missing.*delete"):
        ckpt.load_state(tmp_path)


@pytest.mark.parametrize("killed_in", ["save_tensors", "replace", "write_json"])
def test_a_save_killed_at_any_point_leaves_the_previous_state(tmp_path, monkeypatch, killed_in):
    """SLURM kills a job that overruns its grace period wherever it is, also in the middle of a save."""
    model = _fresh()
    opt = torch.optim.AdamW(model.parameters())
    ckpt.save_state(tmp_path, model, opt, {"step": 1}, {"cpu": torch.get_rng_state()})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.rand(2, 1, 28, 28), 0.0).sum().backward()
    opt.step()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")
    target = ckpt.os if killed_in == "replace" else ckpt
    monkeypatch.setattr(target, killed_in, killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_state(tmp_path, model, opt, {"step": 2}, {"cpu": torch.get_rng_state()})
    monkeypatch.undo()
    progress, weights, _, _ = ckpt.load_state(tmp_path)
    assert progress == {"step": 1}
    assert all(torch.equal(weights[k], before[k]) for k in before)
    ckpt.save_state(tmp_path, model, opt, {"step": 2}, {"cpu": torch.get_rng_state()})
    assert ckpt.load_state(tmp_path)[0] == {"step": 2}
    assert len(list(tmp_path.glob("state-*.safetensors"))) == 1  # older tensor files are removed
