# Config loading and the helpers every rules file uses; the rules themselves stay declarative.
# Each rule is a stage of the registry (src/advsoup/stages.py), with the same name for the rule, the
# `advsoup <stage>` command, the job and the log; its params are the digest of the stage's config
# slice, its threads and memory the stage's launcher.resources.<stage>.
#
# Currency is decided from recorded provenance (src/advsoup/provenance.py), never from file times:
# - every compute rule takes currency(<stage>) as an input, a stamp that is newer than the job's
#   outputs exactly when their record says they are stale (another config slice, another upstream
#   config, another checkpoint). It holds in a fresh clone, after `dvc pull` and `git checkout`.
# - checkpoint weights, which DVC restores with new file times, are ancient() inputs, each read
#   beside its run's record;
# - the upstream records a job reads (checkpoint.json, eval.json) and the data directories (prepared
#   data, shift suite, hard subset) are aged() inputs: their time is set to 1970, so a restored file
#   triggers nothing, while a job that reruns in this invocation still reruns every job that reads
#   its output. Never ancient() alone: Snakemake drops a job that reads only ancient files of a
#   rerunning job without checking its own currency (see provenance.aged).
import json
import os
import shlex
from pathlib import Path

from snakemake.exceptions import WorkflowError

from advsoup import provenance, stages
from advsoup.cli import OVERRIDES_ENV
from advsoup.config import ConfigError, Paths, dotlist, load_config, run_ids
from advsoup.config.preflight import preflight
from advsoup.shift.names import REAL_SET_KEYS

# The experiment file(s) given with --configfile; the demo by default.
EXPERIMENT_FILES = [str(f) for f in workflow.overwrite_configfiles] or ["params/experiments/demo.yaml"]
# `--config section={key: value}` entries, passed on to every `advsoup` call as dotlist overrides.
OVERRIDES = dotlist(dict(workflow.config_settings.config))

try:
    CFG = load_config(EXPERIMENT_FILES, OVERRIDES)
    preflight(CFG, " + ".join(EXPERIMENT_FILES))  # what the config alone decides, before any job
except ConfigError as exc:
    raise WorkflowError(f"invalid advsoup config: {exc}") from None

PATHS = Paths(CFG)
RUNS = run_ids(CFG)
SOUP_RUNS = stages.runs_of(CFG, "soups")
# The shift study (advsoup.stages decides): the synthetic suite for datasets held as arrays, the published
# shifted ImageNet sets that are configured (the others are skipped; preflight checked these).
SHIFT_RUNS = stages.runs_of(CFG, "shift")
REAL_SHIFT_SETS = stages.real_shift_sets(CFG)
SHIFT_FIGURES = stages.shift_figure_stages(CFG)
# The report stages `rule all` builds and the results page waits for (report.targets; by default the full report).
REPORT_TARGETS = stages.report_targets(CFG)
# The per-run job stages whose metric files the report reads (`rule metrics`, DVC's experiment stage).
METRIC_STAGES = stages.metric_stages(CFG)
LOGS = PATHS.logs
ADVSOUP = " ".join(["advsoup {stage}"] + [f"--config {shlex.quote(f)}" for f in EXPERIMENT_FILES])
# The jobs get the overrides through the environment, not their command line: a
# rule reruns when the part of the config it reads changes (its params), not
# when e.g. the launcher's executor does.
os.environ[OVERRIDES_ENV] = json.dumps(OVERRIDES)

wildcard_constraints:
    run="|".join(RUNS),
    set="|".join(REAL_SET_KEYS),


def advsoup(stage, run=False, set=False):
    """The shell command of a stage: the same entry point the user, DVC and tests call."""
    cmd = ADVSOUP.format(stage=stage) + (" --run {wildcards.run}" if run else "") + (" --set {wildcards.set}" if set else "")
    return f"{cmd} > {{log}} 2>&1"


def sub_config(stage):
    """The rule's params: the digest of the config slice its stage reads (advsoup.stages)."""
    return lambda wc: stages.config_digest(CFG, stage, getattr(wc, "run", None), getattr(wc, "set", None))


def threads(stage):
    return stages.resources(CFG, stage).cpus


def mem_mb(stage):
    return int(stages.resources(CFG, stage).mem_gb * 1024)


def slurm_resources(stage):
    """The job's resources as its SLURM job asks for them (launcher.resources.<stage> and the site's partition,
    account, qos, constraint; advsoup.launch.slurm_parameters): `snakemake -n` lists them with every job.
    Only mem_mb (and threads) mean something to Snakemake's own scheduler; the job is submitted by submitit."""
    from advsoup.launch import tasks_per_node

    res, site = stages.resources(CFG, stage), CFG.launcher
    out = {"mem_mb": mem_mb(stage), "runtime": res.time_min, "nodes": res.nodes,
           "tasks_per_node": tasks_per_node(res, stages.get(stage).distributed), "cpus_per_task": res.cpus,
           "gpus_per_node": res.gpus}
    out.update({f"slurm_{k}": getattr(site, k) for k in ("partition", "account", "qos", "constraint")
                if getattr(site, k)})
    return out


def currency(stage):
    """The job's currency stamp (see above)."""
    return lambda wc: provenance.stamp(CFG, stage, getattr(wc, "run", None), getattr(wc, "set", None))


def aged(pattern):
    """An upstream record (see above), for the job's wildcards."""
    return lambda wc: provenance.aged(Path(str(pattern).format(**dict(wc.items()))))


def _job(stage, run, set):
    return "-".join([stage] + (["{run}"] if run else []) + (["{set}"] if set else []))


def log(stage, run=False, set=False):
    return LOGS / f"{_job(stage, run, set)}.log"


def benchmark(stage, run=False, set=False):
    """Wall time, memory and CPU time of the job (one TSV per job; `make demo` prints them)."""
    return LOGS / "benchmarks" / f"{_job(stage, run, set)}.tsv"


def outputs(names):
    """The outputs of the named rules (rules defined by then), e.g. outputs(SHIFT_FIGURES) in `rule all`."""
    return [str(f) for name in names for f in getattr(rules, name).output]


def per_run_outputs(stage):
    """Every output of a per-run stage, over the runs (and published sets) it runs for (advsoup.stages.runs_of)."""
    sets = {"set": REAL_SHIFT_SETS} if stages.get(stage).per_set else {}
    return expand([str(f) for f in getattr(rules, stage).output], run=stages.runs_of(CFG, stage), **sets)
