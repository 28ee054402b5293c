# Training: one job per (run, seed); requeued and resumed on preemption (src/advsoup/launch.py).
# checkpoint.json (in git) records the weights' sha256: what every later metric is matched against.


rule train:
    input:
        data=aged(rules.prepare.output.prepared),
        currency=currency("train"),
    output:
        weights=PATHS.run_dir("{run}") / "model.safetensors",
        meta=PATHS.run_dir("{run}") / "model.json",
        history=PATHS.history_file("{run}"),
        record=PATHS.checkpoint_record("{run}"),
    params:
        cfg=sub_config("train"),
    threads: threads("train")
    resources:
        **slurm_resources("train"),
    log:
        log("train", run=True),
    benchmark:
        benchmark("train", run=True)
    shell:
        advsoup("train", run=True)
