# Distribution shifts: the suite (data stage), the hard subset's reference model and
# subset, every run on every shift, and the shift table and figure. Compute inputs are
# ancient() as everywhere (see common.smk): restored files must not trigger reruns.


rule shift_suite:
    input:
        data=ancient(rules.prepare.output.prepared),
    output:
        suite=directory(str(PATHS.shift_suite)),
    params:
        cfg=sub_config("shift-suite"),
    threads: CFG.launcher.evaluate.cpus
    log:
        LOGS / "shift-suite.log",
    shell:
        advsoup("shift-suite")


rule shift_reference:
    # A run of its own, outside the grid: the hard subset must not be chosen by a model under test.
    input:
        data=ancient(rules.prepare.output.prepared),
    output:
        weights=PATHS.shift_reference / "model.safetensors",
        meta=PATHS.shift_reference / "model.json",
    params:
        cfg=sub_config("shift-reference"),
    threads: CFG.launcher.train.cpus
    resources:
        mem_mb=int(CFG.launcher.train.mem_gb * 1024),
    log:
        LOGS / "shift-reference.log",
    shell:
        advsoup("shift-reference")


rule shift_hard:
    input:
        data=ancient(rules.prepare.output.prepared),
        weights=ancient(rules.shift_reference.output.weights),
        meta=ancient(rules.shift_reference.output.meta),
    output:
        hard=directory(str(PATHS.shift_hard)),
    params:
        cfg=sub_config("shift-hard"),
    threads: CFG.launcher.evaluate.cpus
    log:
        LOGS / "shift-hard.log",
    shell:
        advsoup("shift-hard")


rule shift:
    input:
        suite=ancient(rules.shift_suite.output.suite),
        hard=ancient(rules.shift_hard.output.hard),
        weights=ancient(rules.train.output.weights),
        meta=ancient(rules.train.output.meta),
    output:
        metrics=PATHS.shift_file("{run}"),
    params:
        cfg=sub_config("shift"),
    threads: CFG.launcher.evaluate.cpus
    log:
        LOGS / "shift-{run}.log",
    shell:
        advsoup("shift", run=True)


localrules:
    shift_table,
    shift_figure,


rule shift_table:
    input:
        expand(rules.shift.output.metrics, run=RUNS),
    output:
        table=PATHS.tables / "shift.csv",
        adaptation=PATHS.tables / "shift_adaptation.csv",
        draws=PATHS.tables / "shift_draws.csv",
        summary=PATHS.shift_summary,
    params:
        cfg=sub_config("shift-table"),
    log:
        LOGS / "shift-table.log",
    shell:
        advsoup("shift-table")


rule shift_figure:
    input:
        rules.shift_table.output,
    output:
        figure=PATHS.figures / "shift.png",
    params:
        cfg=sub_config("shift-figure"),
    log:
        LOGS / "shift-figure.log",
    shell:
        advsoup("shift-figure")
