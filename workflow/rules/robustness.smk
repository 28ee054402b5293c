# Gradient-masking checks per run: eps grid, more PGD steps, AutoAttack (from eval.json) vs PGD.


rule robustness:
    input:
        data=aged(rules.prepare.output.prepared),
        weights=ancient(rules.train.output.weights),
        meta=ancient(rules.train.output.meta),
        checkpoint=aged(rules.train.output.record),
        evaluation=aged(rules.evaluate.output.metrics),
        currency=currency("robustness"),
    output:
        metrics=PATHS.robustness_file("{run}"),
    params:
        cfg=sub_config("robustness"),
    threads: threads("robustness")
    resources:
        **slurm_resources("robustness"),
    log:
        log("robustness", run=True),
    benchmark:
        benchmark("robustness", run=True)
    shell:
        advsoup("robustness", run=True)
