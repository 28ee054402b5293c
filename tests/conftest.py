"""Shared fixtures: the real Fashion-MNIST (Debian's dataset-fashion-mnist), prepared once."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from advsoup.config import EXPERIMENTS_DIR, load_config
from advsoup.data.prepared import prepare

TINY = EXPERIMENTS_DIR / "tiny.yaml"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    cfg = load_config([TINY])
    out = tmp_path_factory.mktemp("data") / "fashion_mnist"
    prepare(cfg.data, out)
    return out


@pytest.fixture
def tiny_cfg(tmp_path, prepared):
    """The tiny experiment, writing under tmp_path, reading the session's prepared data."""
    return load_config([TINY], [f"results_dir={tmp_path}/results",
                                f"data.prepared_dir={prepared.parent}", "launcher.executor=inline",
                                f"launcher.log_dir={tmp_path}/logs"])


def pytest_addoption(parser):
    parser.addoption("--reverse-order", action="store_true",
                     help="run the collected tests in reverse order (checks that no test depends on another)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse-order"):
        items.reverse()
