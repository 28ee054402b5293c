rule soups:
    input:
        data=ancient(rules.prepare.output.prepared),
        weights=ancient(rules.train.output.weights),
        meta=ancient(rules.train.output.meta),
    output:
        metrics=PATHS.soup_file("{run}"),
    params:
        cfg=sub_config("soups"),
    threads: CFG.launcher.evaluate.cpus
    log:
        LOGS / "soups-{run}.log",
    shell:
        advsoup("soups", run=True)
