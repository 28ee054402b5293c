rule evaluate:
    input:
        data=ancient(rules.prepare.output.prepared),
        weights=ancient(rules.train.output.weights),
        meta=ancient(rules.train.output.meta),
    output:
        metrics=PATHS.eval_file("{run}"),
    params:
        cfg=sub_config("evaluate"),
    threads: CFG.launcher.evaluate.cpus
    log:
        LOGS / "evaluate-{run}.log",
    shell:
        advsoup("evaluate", run=True)
