# Score: literature-backed gene signatures (library in workflow/scripts/osteoimmune/data/),
# null-calibrated; M1/M2 states within monocytes/macrophages (or every cell, by a registry
# polarization_gate); RANKL/OPG and cytokine genes
# per cell type; the immune-to-bone ligand-receptor panel.


rule score_signatures:
    input:
        # the matrices from the clustered file, the annotations alone from annotate_cells
        matrices=rules.cluster_cells.output.h5ad,
        h5ad=rules.annotate_cells.output.h5ad,
    output:
        # the scores and states, without the matrices (export_h5ad joins them)
        scores="results/{dataset}/intermediate/scores.h5ad",
        coverage=report(
            "results/{dataset}/tables/signature_coverage.tsv",
            caption="../report/signature_coverage.rst",
            category="4 Signatures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "signature_coverage.tsv"},
        ),
        by_group=report(
            "results/{dataset}/tables/scores_by_group.tsv",
            caption="../report/scores_by_group.rst",
            category="4 Signatures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "scores_by_group.tsv"},
        ),
        agreement="results/{dataset}/tables/method_agreement.tsv",
        states=report(
            "results/{dataset}/tables/polarization_states.tsv",
            caption="../report/polarization_states.rst",
            category="4 Signatures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "polarization_states.tsv"},
        ),
        genes="results/{dataset}/tables/genes_by_cell_type.tsv",
    params:
        signatures=config["signatures"],
        # A registry polarization_gate puts every cell in the M1/M2 gate (population by design).
        gate=lambda wildcards: REGISTRY[wildcards.dataset].get("polarization_gate"),
        seed=config["seed"],
        compression=INTERMEDIATE_COMPRESSION,
    # after enrichment and communication (compare.smk), before the h5ad export
    priority: 1
    log:
        "logs/score_signatures/{dataset}.log",
    benchmark:
        "benchmarks/score_signatures/{dataset}.tsv"
    resources:
        mem_mb=mem_mb("score_signatures"),
        runtime=runtime(),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/score_signatures.py"


# The h5ad a user opens (gzip): the clustered matrices with the annotations and scores. A job
# of its own, so that its write (~27 s at 100,000 cells) runs beside communication and the
# report.
rule export_h5ad:
    input:
        matrices=rules.cluster_cells.output.h5ad,
        scores=rules.score_signatures.output.scores,
    output:
        h5ad="results/{dataset}/{dataset}.h5ad",
    log:
        "logs/export_h5ad/{dataset}.log",
    benchmark:
        "benchmarks/export_h5ad/{dataset}.tsv"
    resources:
        mem_mb=mem_mb("export_h5ad"),
        runtime=runtime(),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/export_h5ad.py"
