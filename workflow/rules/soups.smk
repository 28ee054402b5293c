rule soups:
    input:
        data=rules.prepare.output.prepared,
        weights=rules.train.output.weights,
        meta=rules.train.output.meta,
    output:
        metrics=PATHS.soup_file("{run}"),
    params:
        cfg=sub_config("soups"),
    threads: CFG.launcher.evaluate.cpus
    log:
        LOGS / "soups-{run}.log",
    shell:
        advsoup("soups", run=True)
