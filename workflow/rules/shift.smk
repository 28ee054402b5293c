# Distribution shifts (inputs as documented in common.smk). Two studies, chosen by advsoup.stages
# (SHIFT_RUNS, REAL_SHIFT_SETS, SHIFT_FIGURES in common.smk):
# - synthetic, for datasets held as arrays: the suite (a data stage), the hard subset's reference
#   model and subset, every run on every shift, the shift table and figure;
# - the published shifted ImageNet sets that are configured (ImageNet-C, -A, -R, -Sketch): every run
#   on every set, one job each, and their table and figure.
localrules:
    shift_table,
    shift_figure,
    shift_real_table,
    shift_real_figure,


rule shift_suite:
    input:
        data=aged(rules.prepare.output.prepared),
        currency=currency("shift_suite"),
    output:
        suite=directory(str(PATHS.shift_suite)),
    params:
        cfg=sub_config("shift_suite"),
    threads: threads("shift_suite")
    resources:
        **slurm_resources("shift_suite"),
    log:
        log("shift_suite"),
    benchmark:
        benchmark("shift_suite")
    shell:
        advsoup("shift_suite")


rule shift_reference:
    # A run of its own, outside the grid: the hard subset must not be chosen by a model under test.
    input:
        data=aged(rules.prepare.output.prepared),
        currency=currency("shift_reference"),
    output:
        weights=PATHS.shift_reference / "model.safetensors",
        meta=PATHS.shift_reference / "model.json",
        record=PATHS.shift_reference / "checkpoint.json",
    params:
        cfg=sub_config("shift_reference"),
    threads: threads("shift_reference")
    resources:
        **slurm_resources("shift_reference"),
    log:
        log("shift_reference"),
    benchmark:
        benchmark("shift_reference")
    shell:
        advsoup("shift_reference")


rule shift_hard:
    input:
        data=aged(rules.prepare.output.prepared),
        weights=ancient(rules.shift_reference.output.weights),
        meta=ancient(rules.shift_reference.output.meta),
        checkpoint=aged(rules.shift_reference.output.record),
        currency=currency("shift_hard"),
    output:
        hard=directory(str(PATHS.shift_hard)),
    params:
        cfg=sub_config("shift_hard"),
    threads: threads("shift_hard")
    resources:
        **slurm_resources("shift_hard"),
    log:
        log("shift_hard"),
    benchmark:
        benchmark("shift_hard")
    shell:
        advsoup("shift_hard")


rule shift:
    input:
        suite=aged(rules.shift_suite.output.suite),
        hard=aged(rules.shift_hard.output.hard),
        weights=ancient(rules.train.output.weights),
        meta=ancient(rules.train.output.meta),
        checkpoint=aged(rules.train.output.record),
        currency=currency("shift"),
    output:
        metrics=PATHS.shift_file("{run}"),
    params:
        cfg=sub_config("shift"),
    threads: threads("shift")
    resources:
        **slurm_resources("shift"),
    log:
        log("shift", run=True),
    benchmark:
        benchmark("shift", run=True)
    shell:
        advsoup("shift", run=True)


rule shift_table:
    input:
        expand(rules.shift.output.metrics, run=SHIFT_RUNS),
        records=expand(rules.train.output.record, run=SHIFT_RUNS),
        currency=currency("shift_table"),
    output:
        table=PATHS.tables / "shift.csv",
        adaptation=PATHS.tables / "shift_adaptation.csv",
        draws=PATHS.tables / "shift_draws.csv",
        summary=PATHS.shift_summary,
    params:
        cfg=sub_config("shift_table"),
    log:
        log("shift_table"),
    shell:
        advsoup("shift_table")


rule shift_figure:
    input:
        rules.shift_table.output,
    output:
        figure=PATHS.figures / "shift.png",
    params:
        cfg=sub_config("shift_figure"),
    log:
        log("shift_figure"),
    shell:
        advsoup("shift_figure")


rule shift_real:
    input:
        weights=ancient(rules.train.output.weights),
        meta=ancient(rules.train.output.meta),
        checkpoint=aged(rules.train.output.record),
        currency=currency("shift_real"),
    output:
        metrics=PATHS.real_shift_file("{run}", "{set}"),
    params:
        cfg=sub_config("shift_real"),
    threads: threads("shift_real")
    resources:
        **slurm_resources("shift_real"),
    log:
        log("shift_real", run=True, set=True),
    benchmark:
        benchmark("shift_real", run=True, set=True)
    shell:
        advsoup("shift_real", run=True, set=True)


rule shift_real_table:
    input:
        expand(rules.shift_real.output.metrics, run=RUNS, set=REAL_SHIFT_SETS),
        records=expand(rules.train.output.record, run=RUNS),
        currency=currency("shift_real_table"),
    output:
        table=PATHS.tables / "shift_real.csv",
        draws=PATHS.tables / "shift_real_draws.csv",
        paper=PATHS.tables / "shift_real_paper.csv",
        summary=PATHS.real_shift_summary,
    params:
        cfg=sub_config("shift_real_table"),
    log:
        log("shift_real_table"),
    shell:
        advsoup("shift_real_table")


rule shift_real_figure:
    input:
        rules.shift_real_table.output,
    output:
        figure=PATHS.figures / "shift_real.png",
    params:
        cfg=sub_config("shift_real_figure"),
    log:
        log("shift_real_figure"),
    shell:
        advsoup("shift_real_figure")
