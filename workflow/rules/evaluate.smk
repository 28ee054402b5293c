# Evaluation: clean and robust accuracy (PGD, AutoAttack) of one run in clean and robust mode.


rule evaluate:
    input:
        data=aged(rules.prepare.output.prepared),
        weights=ancient(rules.train.output.weights),
        meta=ancient(rules.train.output.meta),
        checkpoint=aged(rules.train.output.record),
        currency=currency("evaluate"),
    output:
        metrics=PATHS.eval_file("{run}"),
    params:
        cfg=sub_config("evaluate"),
    threads: threads("evaluate")
    resources:
        **slurm_resources("evaluate"),
    log:
        log("evaluate", run=True),
    benchmark:
        benchmark("evaluate", run=True)
    shell:
        advsoup("evaluate", run=True)
