# rsis: Recurrent Referring Instance Segmentation, reproducible end to end.
# Users edit config.yaml; rules live in workflow/rules/, one file per stage.
from snakemake.utils import min_version

min_version("8.10")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/language.smk"
include: "workflow/rules/encoder.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# Cheap steps run on the submitting node when a cluster executor is used.
localrules:
    all,
    demo_dataset,
    tokenize,
    reduce,
    tables,
    baselines,
    expression_types,
    convergence,
    findings,
    summary,
    figures,
    curves,


rule all:
    default_target: True
    input:
        all_outputs(),
