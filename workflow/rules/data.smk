rule prepare:
    output:
        prepared=directory(str(PATHS.prepared)),
    params:
        cfg=sub_config("prepare"),
    log:
        LOGS / "prepare.log",
    shell:
        advsoup("prepare")
