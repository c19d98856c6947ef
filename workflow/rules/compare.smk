# Compare and enrich: donor-level comparison of conditions, and offline gseapy enrichment
# (prerank GSEA per cell type, over-representation of Leiden cluster markers).


rule compare_conditions:
    input:
        h5ad=rules.score_signatures.output.scores,
    output:
        aggregates=report(
            "results/{dataset}/tables/donor_aggregates.tsv",
            caption="../report/donor_aggregates.rst",
            category="5 Conditions",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "donor_aggregates.tsv"},
        ),
        comparison=report(
            "results/{dataset}/tables/condition_comparison.tsv",
            caption="../report/condition_comparison.rst",
            category="5 Conditions",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "condition_comparison.tsv"},
        ),
        note="results/{dataset}/tables/condition_design.txt",
    params:
        compare=config["compare"],
        reference=lambda wildcards: REGISTRY[wildcards.dataset].get("reference_condition"),
    log:
        "logs/compare_conditions/{dataset}.log",
    benchmark:
        "benchmarks/compare_conditions/{dataset}.tsv"
    resources:
        mem_mb=mem_mb("compare_conditions"),
        runtime=runtime(),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/compare_conditions.py"


rule enrichment:
    input:
        # the annotated cells (no scores needed): runs beside score_signatures; the matrices
        # from the clustered file, the annotations alone from annotate_cells
        matrices=rules.cluster_cells.output.h5ad,
        h5ad=rules.annotate_cells.output.h5ad,
        markers=rules.cluster_cells.output.markers,
    output:
        prerank=report(
            "results/{dataset}/tables/enrichment_prerank.tsv",
            caption="../report/enrichment_prerank.rst",
            category="6 Enrichment",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "enrichment_prerank.tsv"},
        ),
        ora=report(
            "results/{dataset}/tables/enrichment_ora.tsv",
            caption="../report/enrichment_ora.rst",
            category="6 Enrichment",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "enrichment_ora.tsv"},
        ),
        gmt="results/{dataset}/tables/gene_sets.gmt",
    params:
        enrichment=config["enrichment"],
        user_sets=config["signatures"]["user_sets"],
        seed=config["seed"],
    threads: 1
    # The longest jobs after annotation start first (enrichment, then communication, then
    # scoring; bench/README.md): the report waits for all of them, the h5ad export for none.
    priority: 3
    log:
        "logs/enrichment/{dataset}.log",
    benchmark:
        "benchmarks/enrichment/{dataset}.tsv"
    resources:
        mem_mb=mem_mb("enrichment"),
        runtime=runtime(),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/enrichment.py"


# Case-control comparisons across donors: pseudobulk differential expression (PyDESeq2),
# cell-type composition, and immune-to-bone communication (LIANA+), per dataset.
rule compare_expression:
    input:
        # the annotated cells (no scores needed): runs beside score_signatures; the matrices
        # from the clustered file, the annotations alone from annotate_cells
        matrices=rules.cluster_cells.output.h5ad,
        h5ad=rules.annotate_cells.output.h5ad,
    output:
        results="results/{dataset}/tables/pseudobulk_de.tsv.gz",
        summary="results/{dataset}/tables/pseudobulk_summary.tsv",
        samples="results/{dataset}/tables/pseudobulk_samples.tsv",
        genes="results/{dataset}/tables/pseudobulk_osteoimmune_genes.tsv",
        enrichment="results/{dataset}/tables/pseudobulk_enrichment.tsv",
        pseudobulk="results/{dataset}/intermediate/pseudobulk.h5ad",
    params:
        pseudobulk=config["pseudobulk"],
        # the prerank of the DE statistics tests the sets of the enrichment's sizes
        enrichment_min_size=config["enrichment"]["min_size"],
        enrichment_max_size=config["enrichment"]["max_size"],
        reference=lambda wildcards: REGISTRY[wildcards.dataset].get("reference_condition"),
        paired=lambda wildcards: REGISTRY[wildcards.dataset]["paired"],
        seed=config["seed"],
    threads: 1
    log:
        "logs/compare_expression/{dataset}.log",
    benchmark:
        "benchmarks/compare_expression/{dataset}.tsv"
    resources:
        mem_mb=mem_mb("compare_expression"),
        runtime=runtime(),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/compare_expression.py"


rule compare_composition:
    input:
        # the annotated cells (no scores needed): runs beside score_signatures
        h5ad=rules.annotate_cells.output.h5ad,
    output:
        proportions="results/{dataset}/tables/composition_proportions.tsv",
        test="results/{dataset}/tables/composition_test.tsv",
    params:
        composition=config["composition"],
        reference=lambda wildcards: REGISTRY[wildcards.dataset].get("reference_condition"),
        paired=lambda wildcards: REGISTRY[wildcards.dataset]["paired"],
    log:
        "logs/compare_composition/{dataset}.log",
    benchmark:
        "benchmarks/compare_composition/{dataset}.tsv"
    resources:
        mem_mb=mem_mb("compare_composition"),
        runtime=runtime(),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/compare_composition.py"


rule infer_communication:
    input:
        # the annotated cells (no scores needed): runs beside score_signatures; the matrices
        # from the clustered file, the annotations alone from annotate_cells
        matrices=rules.cluster_cells.output.h5ad,
        h5ad=rules.annotate_cells.output.h5ad,
    output:
        results="results/{dataset}/tables/communication.tsv.gz",
        axes="results/{dataset}/tables/communication_axes.tsv",
        comparison="results/{dataset}/tables/communication_comparison.tsv",
    params:
        communication=config["communication"],
        min_donors=config["compare"]["min_donors"],
        reference=lambda wildcards: REGISTRY[wildcards.dataset].get("reference_condition"),
        seed=config["seed"],
    threads: 1
    priority: 2
    log:
        "logs/infer_communication/{dataset}.log",
    benchmark:
        "benchmarks/infer_communication/{dataset}.tsv"
    resources:
        mem_mb=mem_mb("infer_communication"),
        runtime=runtime(),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/infer_communication.py"
