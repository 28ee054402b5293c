# Config loading and the helpers the rules use; rules themselves stay declarative.
#
# The inputs of the compute rules are ancient(): `git clone`, `dvc pull` and `dvc checkout`
# restore data and checkpoints with new file times, and that must not make Snakemake
# retrain. Such a job reruns when its part of the config (params), its rule or its set of
# inputs changes, or an upstream job reruns. Snakemake 9 checks "updated input files"
# (newer, checksum unknown or different) whatever --rerun-triggers says, so the profiles'
# rerun-triggers alone do not do it (tests/test_dvc.py shows both).
import json
import os
import shlex

from snakemake.exceptions import WorkflowError

from advsoup.cli import OVERRIDES_ENV
from advsoup.config import ConfigError, Paths, digest, dotlist, load_config, run_ids, soup_run_ids, stage_config

# The experiment file(s) given with --configfile; the demo by default.
EXPERIMENT_FILES = [str(f) for f in workflow.overwrite_configfiles] or ["params/experiments/demo.yaml"]
# `--config section={key: value}` entries, passed on to every `advsoup` call as dotlist overrides.
OVERRIDES = dotlist(dict(workflow.config_settings.config))

try:
    CFG = load_config(EXPERIMENT_FILES, OVERRIDES)
except ConfigError as exc:
    raise WorkflowError(f"invalid advsoup config: {exc}") from None

PATHS = Paths(CFG)
RUNS = run_ids(CFG)
SOUP_RUNS = soup_run_ids(CFG)
LOGS = PATHS.logs / CFG.experiment
ADVSOUP = " ".join(["advsoup {stage}"] + [f"--config {shlex.quote(f)}" for f in EXPERIMENT_FILES])
# The jobs get the overrides through the environment, not their command line: a
# rule reruns when the part of the config it reads changes (its params), not
# when e.g. the launcher's executor does.
os.environ[OVERRIDES_ENV] = json.dumps(OVERRIDES)

wildcard_constraints:
    run="|".join(RUNS),


def advsoup(stage, run=False):
    """The shell command of a stage: the same entry point the user, DVC and tests call."""
    cmd = ADVSOUP.format(stage=stage) + (" --run {wildcards.run}" if run else "")
    return f"{cmd} > {{log}} 2>&1"


def sub_config(stage):
    """The rule's params: just the part of the config its stage reads (see config.stage_config)."""
    return lambda wc: digest(stage_config(CFG, stage, getattr(wc, "run", None)))
