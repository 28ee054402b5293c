# Reporting: the experiment's summary, tables and figures under results/<experiment>/report/,
# from the metric files alone (no checkpoint, no torch). Aggregation refuses a metric whose
# recorded checkpoint is not the run's current one.
localrules:
    aggregate,
    figures,
    metrics,
    results_page,


rule aggregate:
    input:
        evals=expand(rules.evaluate.output.metrics, run=RUNS),
        soups=expand(rules.soups.output.metrics, run=SOUP_RUNS),
        robustness=expand(rules.robustness.output.metrics, run=RUNS),
        histories=expand(rules.train.output.history, run=RUNS),
        records=expand(rules.train.output.record, run=RUNS),
        currency=currency("aggregate"),
    output:
        summary=PATHS.summary,
        runs=PATHS.tables / "runs.csv",
        soups=PATHS.tables / "soups.csv",
        training=PATHS.tables / "training.csv",
        adapters=PATHS.tables / "adapters.csv",
    params:
        cfg=sub_config("aggregate"),
    log:
        log("aggregate"),
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
        log("figures"),
    shell:
        advsoup("figures")


rule metrics:
    # Every metric file the experiment's report reads (advsoup.stages.metric_stages), nothing aggregated: the
    # target of DVC's `experiment` stage.
    input:
        [per_run_outputs(stage) for stage in METRIC_STAGES],


rule results_page:
    # docs/results/<experiment>.md: the report's tables and figures, with date, commit and checkpoints.
    input:
        # the experiment's report parts (report.targets); the parameter accounting (adapters) is not on the page
        outputs([t for t in REPORT_TARGETS if t != "adapters"]),
    output:
        page=PATHS.results_page,
    params:
        cfg=sub_config("results_page"),
    log:
        log("results_page"),
    shell:
        advsoup("results_page")
