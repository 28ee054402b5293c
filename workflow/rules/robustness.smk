# Gradient-masking checks per run: eps grid, more PGD steps, AutoAttack (from eval.json) vs PGD.
rule robustness:
    input:
        data=ancient(rules.prepare.output.prepared),
        weights=ancient(rules.train.output.weights),
        meta=ancient(rules.train.output.meta),
        evaluation=rules.evaluate.output.metrics,
    output:
        metrics=PATHS.robustness_file("{run}"),
    params:
        cfg=sub_config("robustness"),
    threads: CFG.launcher.evaluate.cpus
    log:
        LOGS / "robustness-{run}.log",
    shell:
        advsoup("robustness", run=True)
