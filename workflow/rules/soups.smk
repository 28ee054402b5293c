# Soups: clean and robust accuracy of one co-trained run at every soup weight.


rule soups:
    input:
        data=aged(rules.prepare.output.prepared),
        weights=ancient(rules.train.output.weights),
        meta=ancient(rules.train.output.meta),
        checkpoint=aged(rules.train.output.record),
        currency=currency("soups"),
    output:
        metrics=PATHS.soup_file("{run}"),
    params:
        cfg=sub_config("soups"),
    threads: threads("soups")
    resources:
        **slurm_resources("soups"),
    log:
        log("soups", run=True),
    benchmark:
        benchmark("soups", run=True)
    shell:
        advsoup("soups", run=True)
