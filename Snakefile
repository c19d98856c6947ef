# osteoimmune: public bone-marrow scRNA-seq -> osteoimmune cell-state reports.
# Stages live in workflow/rules/*.smk; the work is done by the library in
# workflow/scripts/osteoimmune/, called from one thin script per rule.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/cluster.smk"
include: "workflow/rules/annotate.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        expand("results/{dataset}/report.html", dataset=DATASETS),
        expand("results/{dataset}/{dataset}.h5ad", dataset=DATASETS),
        "results/index.html",
    default_target: True
