localrules:
    aggregate,
    figures,


rule aggregate:
    input:
        evals=expand(rules.evaluate.output.metrics, run=RUNS),
        soups=expand(rules.soups.output.metrics, run=SOUP_RUNS),
        robustness=expand(rules.robustness.output.metrics, run=RUNS),
        histories=expand(rules.train.output.history, run=RUNS),
    output:
        summary=PATHS.summary,
        runs=PATHS.tables / "runs.csv",
        soups=PATHS.tables / "soups.csv",
        training=PATHS.tables / "training.csv",
        adapters=PATHS.tables / "adapters.csv",
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
        adapters=rules.aggregate.output.adapters,
    output:
        soup_curve=PATHS.figures / "soup_curve.png",
        adapters=PATHS.figures / "adapters.png",
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
        expand(rules.shift.output.metrics, run=RUNS),
