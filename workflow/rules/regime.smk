# The regime report (advsoup.report.regime): where does co-training raise clean accuracy over the nominal
# model? The gain against the training-set size and schedule (runs.<name>.train_size / .epochs), beside the
# nominal model's train-test gap (evaluate.train_subset). It reads the runs' eval.json files only: with
# `report: {targets: [regime]}` (params/experiments/regime.yaml) the experiment's DAG is train, evaluate,
# regime and the results page, no soups, robustness checks or shifts.
localrules:
    regime,


rule regime:
    input:
        evals=expand(rules.evaluate.output.metrics, run=RUNS),
        records=expand(rules.train.output.record, run=RUNS),
        currency=currency("regime"),
    output:
        summary=PATHS.regime_summary,
        table=PATHS.tables / "regime.csv",
        figure=PATHS.figures / "regime.png",
    params:
        cfg=sub_config("regime"),
    log:
        log("regime"),
    shell:
        advsoup("regime")
