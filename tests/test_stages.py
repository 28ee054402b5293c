"""The stage registry is the one list of stages: the CLI, the Snakemake rules and the launcher follow it."""
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from advsoup import cli, stages
from advsoup.config import DEFAULTS_FILE, EXPERIMENTS_DIR, REPO_ROOT, Config, ConfigError, load_config
from advsoup.launch import slurm_script

BIN = Path(sys.executable).parent
TINY = EXPERIMENTS_DIR / "tiny.yaml"


def test_every_stage_has_its_cli_command_rule_and_launcher_entry_from_the_registry_alone():
    cfg = load_config([TINY], ["launcher.executor=slurm"])
    run = "token-s0"
    # the CLI: one subcommand per stage, --run exactly for the per-run stages, --set for the per-set ones
    parser = cli._parser()
    for name, st in stages.STAGES.items():
        args = parser.parse_args([name, "--config", str(TINY)] + (["--run", run] if st.per_run else [])
                                 + (["--set", "imagenet_a"] if st.per_set else []))
        assert args.stage == name and (getattr(args, "run", None) == run) == st.per_run
        assert (getattr(args, "set_key", None) == "imagenet_a") == st.per_set
    # Snakemake: one rule per stage, of the same name (plus the targets all and metrics)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    listed = subprocess.run([str(BIN / "snakemake"), "--list-rules", "-s", str(REPO_ROOT / "Snakefile"),
                             "--configfile", str(TINY)], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                            timeout=300, check=True).stdout.split()
    assert set(listed) == set(stages.STAGES) | {"all", "metrics"}, listed
    # the launcher: every job stage's name and resources, rendered into its SLURM script
    for name in stages.JOB_STAGES:
        res = stages.resources(cfg, name)
        jname = stages.job_name(cfg, name, run if stages.get(name).per_run else None,
                                "imagenet_a" if stages.get(name).per_set else None)
        assert jname.startswith(f"tiny-{name}") and jname.endswith("-imagenet_a") == stages.get(name).per_set
        script = slurm_script(cfg.launcher, res, jname, Path("/tmp/x"), stages.get(name).distributed)
        assert f"#SBATCH --job-name={jname}\n" in script and f"#SBATCH --cpus-per-task={res.cpus}\n" in script
    with pytest.raises(ConfigError, match="no job resources"):
        stages.resources(cfg, "aggregate")


def test_a_stage_sees_only_its_slice_and_its_digest_follows_it():
    cfg = load_config([TINY])
    for name, st in stages.STAGES.items():
        run, set_key = "token-s0" if st.per_run else None, "imagenet_c" if st.per_set else None
        assert stages.config_digest(cfg, name, run, set_key) == stages.config_digest(load_config([TINY]), name, run,
                                                                                     set_key)
    part = stages.config_slice(cfg, "shift", "token-s0")
    assert part["shift"].corruptions is None and part["shift"].k == cfg.shift.k  # unread: blanked
    edited = load_config([TINY], ["shift.k=5"])
    def changed(a, b, set_key="imagenet_c"):
        return {n for n, st in stages.STAGES.items()
                if stages.config_digest(a, n, "token-s0" if st.per_run else None, set_key if st.per_set else None)
                != stages.config_digest(b, n, "token-s0" if st.per_run else None, set_key if st.per_set else None)}

    assert changed(cfg, edited) == {"shift", "shift_table", "shift_figure", "shift_real"}
    # a set's job reads that set's keys only: an ImageNet-C edit reruns its jobs, not ImageNet-A's
    c_edit = load_config([TINY], ["shift.real.imagenet_c.subset=100"])
    assert changed(cfg, c_edit) == {"shift_real"} and changed(cfg, c_edit, "imagenet_a") == set()
    part = stages.config_slice(cfg, "shift_real", "token-s0", "imagenet_a")
    assert part["shift"].real.imagenet_c is None and part["shift"].corruptions is None
    assert part["evaluate"].soup_weights == cfg.evaluate.soup_weights and part["evaluate"].attack is None
    with pytest.raises(ConfigError, match="needs a set"):
        stages.config_slice(cfg, "shift_real", "token-s0")
    with pytest.raises(ConfigError, match="needs a run id"):
        stages.config_slice(cfg, "train")


def test_every_job_stage_has_resources_in_the_defaults_and_no_other_key_is_accepted():
    defaults = OmegaConf.load(DEFAULTS_FILE)
    assert set(defaults.launcher.resources) == set(stages.JOB_STAGES)
    with pytest.raises(ConfigError, match=r"launcher\.resources\.aggregate"):
        load_config([TINY], ["launcher.resources.aggregate.cpus=1"])


def _keys(node, prefix=""):
    if isinstance(node, dict):
        return {k for key, v in node.items() for k in _keys(v, f"{prefix}{key}.")} | ({prefix[:-1]} if prefix else set())
    return {prefix[:-1]}


def test_defaults_yaml_lists_every_key_of_the_schema_with_the_schema_default():
    """One place for defaults: the dataclasses and params/defaults.yaml agree key by key and value by value."""
    schema = OmegaConf.to_container(OmegaConf.structured(Config))
    yaml = OmegaConf.to_container(OmegaConf.load(DEFAULTS_FILE))
    schema.pop("runs"), yaml.pop("runs")
    schema["launcher"].pop("resources"), yaml["launcher"].pop("resources")  # by stage: the test above
    assert _keys(schema) == _keys(yaml)

    def differ(a, b, path=""):
        if isinstance(a, dict):
            return [d for k in a for d in differ(a[k], b[k], f"{path}.{k}")]
        return [] if a == b or (isinstance(a, float) and b == pytest.approx(a)) else [f"{path[1:]}: {a} != {b}"]

    assert differ(schema, yaml) == []


def test_reporting_imports_no_torch():
    # torch made unimportable (a finder that refuses it), as on a login node without it
    code = ("import sys, importlib.abc\n"
            "class NoTorch(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] == 'torch': raise ImportError('torch is not installed')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "import advsoup.report.aggregate, advsoup.report.figures, advsoup.report.shift_tables, advsoup.report.real_shifts\n"
            "import advsoup.report.where, advsoup.report.page, advsoup.stages, advsoup.provenance, advsoup.cli\n"
            "assert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_digests_of_the_study_stay_put_when_the_schema_grows():
    """The study's digests, pinned. A new option must default to None (= the old behaviour), which leaves it out of
    every digest: otherwise an upgrade of advsoup recomputes every result of every experiment. Update the pins only
    for a change that should recompute them (and say so in the commit)."""
    import json
    pins = json.loads((Path(__file__).parent / "data" / "digests_study.json").read_text())
    cfg = load_config([EXPERIMENTS_DIR / "study.yaml"])
    now = {n: stages.config_digest(cfg, n, "resnet_dualbn-s2" if stages.get(n).per_run else None) for n in pins}
    assert now == pins
    # a None-valued key is left out of a digest: that is what lets the schema grow
    part = stages.config_slice(cfg, "train", "token-s0")
    grown = dict(part, option_added_later=None)
    assert stages._plain(grown) == stages._plain(part)


@pytest.mark.parametrize("exp, metric, report", [
    ("demo.yaml", ["train", "evaluate", "soups", "robustness", "shift"],
     ["aggregate", "figures", "adapters", "shift_table", "shift_figure", "results_page"]),
    # a dataset read from files: no synthetic shift study
    ("imagenet_vitb16.yaml", ["train", "evaluate", "soups", "robustness"],
     ["aggregate", "figures", "adapters", "results_page"]),
    # an experiment that asks one question: its report reads the evaluations only
    ("regime.yaml", ["train", "evaluate"], ["regime", "results_page"]),
])
def test_the_dags_two_halves_follow_the_experiment(exp, metric, report):
    """What DVC's experiment stage (Snakemake's `metrics`) and figures stage (`advsoup report`) run."""
    cfg = load_config([EXPERIMENTS_DIR / exp])
    assert stages.metric_stages(cfg) == metric
    assert stages.report_stages(cfg) == report
    # the published sets, once configured, add their job and report stages to an ImageNet experiment
    if exp.startswith("imagenet"):
        cfg = load_config([EXPERIMENTS_DIR / exp], ["shift.real.imagenet_a.root=/sets/imagenet-a"])
        assert stages.metric_stages(cfg) == metric + ["shift_real"]
        assert stages.report_stages(cfg)[-3:] == ["shift_real_table", "shift_real_figure", "results_page"]
