# Parameter accounting: the domain-specific parameters of every adapter, counted from the
# modules for the study's networks and for ViT-B16 / ResNet-50 (built on the meta device:
# seconds, no memory, nothing downloaded). Needs no data and no trained run.
localrules:
    adapters,


rule adapters:
    input:
        currency=currency("adapters"),
    output:
        table=PATHS.parameters_table,
        summary=PATHS.parameters_summary,
    params:
        cfg=sub_config("adapters"),
    log:
        log("adapters"),
    shell:
        advsoup("adapters")
