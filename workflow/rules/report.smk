localrules:
    aggregate,
    figures,


rule aggregate:
    input:
        evals=expand(rules.evaluate.output.metrics, run=RUNS),
        soups=expand(rules.soups.output.metrics, run=SOUP_RUNS),
    output:
        summary=PATHS.summary,
        runs=PATHS.tables / "runs.csv",
        soups=PATHS.tables / "soups.csv",
    params:
        cfg=sub_config("aggregate"),
    log:
        LOGS / "aggregate.log",
    shell:
        advsoup("aggregate")


rule figures:
    input:
        summary=rules.aggregate.output.summary,
        runs=rules.aggregate.output.runs,
        soups=rules.aggregate.output.soups,
    output:
        soup_curve=PATHS.figures / "soup_curve.png",
    params:
        cfg=sub_config("figures"),
    log:
        LOGS / "figures.log",
    shell:
        advsoup("figures")


rule metrics:
    # Every run trained and evaluated, nothing aggregated: the target of DVC's `experiment` stage.
    input:
        rules.aggregate.input,
        expand(rules.train.output.history, run=RUNS),
