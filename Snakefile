# advsoup: adversarial co-training with adapters and adversarial model soups.
#
#   snakemake --workflow-profile workflow/profiles/local --configfile params/experiments/demo.yaml
#
# The config is params/defaults.yaml <- the --configfile experiment file(s)
# (default: params/experiments/demo.yaml)
# <- `--config section={key: value}` overrides, validated by src/advsoup/config.py
# before any job runs. Every rule is a stage of src/advsoup/stages.py and calls `advsoup <stage>`;
# everything an experiment makes lives under results/<experiment>/ (and docs/results/<experiment>.md).
from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/regime.smk"
include: "workflow/rules/soups.smk"
include: "workflow/rules/robustness.smk"
include: "workflow/rules/shift.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/adapters.smk"


rule all:
    default_target: True
    input:
        outputs(REPORT_TARGETS),  # report.targets: by default figures, the shift figures and adapters
        rules.results_page.output,
