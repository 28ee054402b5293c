# Data: the prepared dataset (uint8 arrays + manifest with hashes), the first stage of every run.
localrules:
    prepare,


rule prepare:
    output:
        prepared=directory(str(PATHS.prepared)),
    params:
        cfg=sub_config("prepare"),
    log:
        log("prepare"),
    shell:
        advsoup("prepare")
