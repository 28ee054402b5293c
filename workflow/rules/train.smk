rule train:
    input:
        data=ancient(rules.prepare.output.prepared),
    output:
        weights=PATHS.run_dir("{run}") / "model.safetensors",
        meta=PATHS.run_dir("{run}") / "model.json",
        history=PATHS.history_file("{run}"),
    params:
        cfg=sub_config("train"),
    threads: CFG.launcher.train.cpus
    resources:
        mem_mb=int(CFG.launcher.train.mem_gb * 1024),
    log:
        LOGS / "train-{run}.log",
    shell:
        advsoup("train", run=True)
