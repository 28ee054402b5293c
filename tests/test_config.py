import pytest

from advsoup.config import REPO_ROOT, ConfigError, load_config, run_ids
from advsoup.stages import config_digest, config_slice

DEMO = REPO_ROOT / "params" / "experiments" / "demo.yaml"


@pytest.mark.parametrize("override, key", [
    ("train.attack.eps=-0.1", "train.attack.eps"),
    ("evaluate.soup_weights=[0.0,1.5]", "evaluate.soup_weights[1]"),
    ("runs.token.adapter=tokn", "runs.token.adapter"),
    ("runs.token.adapter=batchnorm", "runs.token.adapter"),  # a ResNet adapter on a ViT
    ("train.epochs=many", "train.epochs"),
    ("train.epoch=3", "train.epoch"),  # unknown key (typo)
    ("launcher.executor=kubernetes", "launcher.executor"),
])
def test_bad_override_names_key_and_source(override, key):
    with pytest.raises(ConfigError) as exc:
        load_config([DEMO], [override])
    assert f"'{key}'" in str(exc.value)
    assert str(exc.value).startswith("command line")


def test_bad_value_in_file_names_the_file(tmp_path):
    bad = tmp_path / "exp.yaml"
    bad.write_text("experiment: x\ndata: {train_size: 500}\nruns:\n  a: {training: cotrain, adapter: token}\n"
                   "evaluate:\n  attack: {eps: -1}\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml.*evaluate\.attack\.eps"):
        load_config([bad])
    bad.write_text("experiment: x\nmodle: {}\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml.*'modle'"):
        load_config([bad])


def test_missing_file_and_empty_grid(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "nope.yaml"])
    empty = tmp_path / "empty.yaml"
    empty.write_text("experiment: x\n")
    with pytest.raises(ConfigError, match="defines no runs"):
        load_config([empty])


def test_merge_order_and_grid():
    cfg = load_config([DEMO], ["train.epochs=3", "runs.token.seeds=[0,2]"])
    assert cfg.train.epochs == 3 and cfg.data.train_size == 20000  # demo file over defaults
    assert run_ids(cfg) == ["nominal-s0", "token-s0", "token-s2"]


def test_stage_config_holds_only_what_the_stage_reads():
    cfg = load_config([DEMO])
    other = load_config([DEMO], ["evaluate.attack.steps=40", "launcher.executor=slurm"])
    # an evaluation or launcher edit does not touch training's params (so it does not retrain)
    assert config_digest(cfg, "train", "token-s0") == config_digest(other, "train", "token-s0")
    assert config_digest(cfg, "evaluate", "token-s0") != config_digest(other, "evaluate", "token-s0")
    # a soup-grid edit reruns the soups, not the evaluation
    grid = load_config([DEMO], ["evaluate.soup_weights=[0.0,1.0]"])
    assert config_digest(cfg, "evaluate", "token-s0") == config_digest(grid, "evaluate", "token-s0")
    assert config_digest(cfg, "soups", "token-s0") != config_digest(grid, "soups", "token-s0")
    part = config_slice(cfg, "evaluate", "token-s0")
    assert "train" not in part and part["evaluate"].soup_weights is None  # unread keys are blanked
    with pytest.raises(ConfigError, match="unknown run 'token-s7'"):
        config_slice(cfg, "train", "token-s7")
