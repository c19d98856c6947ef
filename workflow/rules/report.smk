# Report: one self-contained HTML page per dataset, and an index linking them.

rule report_dataset:
    input:
        h5ad=rules.score_signatures.output.scores,
        manifests=fetch_manifests,
        design=rules.filter_cells.output.design,
        qc=rules.filter_cells.output.summary,
        lineage=rules.filter_cells.output.lineage,
        qc_cells=rules.filter_cells.output.cells,
        qc_thresholds=rules.filter_cells.output.thresholds,
        stability=rules.cluster_cells.output.stability,
        markers=rules.cluster_cells.output.markers,
        agreement=rules.annotate_cells.output.agreement,
        confusion=rules.annotate_cells.output.confusion,
        composition=rules.annotate_cells.output.composition,
        panel_coverage=rules.annotate_cells.output.coverage,
        sources=rules.annotate_cells.output.sources,
        coverage=rules.score_signatures.output.coverage,
        by_group=rules.score_signatures.output.by_group,
        method_agreement=rules.score_signatures.output.agreement,
        states=rules.score_signatures.output.states,
        genes=rules.score_signatures.output.genes,
        aggregates=rules.compare_conditions.output.aggregates,
        comparison=rules.compare_conditions.output.comparison,
        note=rules.compare_conditions.output.note,
        prerank=rules.enrichment.output.prerank,
        ora=rules.enrichment.output.ora,
        de_results=rules.compare_expression.output.results,
        de_summary=rules.compare_expression.output.summary,
        de_genes=rules.compare_expression.output.genes,
        de_enrichment=rules.compare_expression.output.enrichment,
        pseudobulk=rules.compare_expression.output.pseudobulk,
        composition_props=rules.compare_composition.output.proportions,
        composition_test=rules.compare_composition.output.test,
        communication=rules.infer_communication.output.results,
        communication_axes=rules.infer_communication.output.axes,
        communication_comparison=rules.infer_communication.output.comparison,
    output:
        html=report(
            "results/{dataset}/report.html",
            caption="../report/report_html.rst",
            category="0 Reports",
            labels={"dataset": "{dataset}", "file": "report.html"},
        ),
        figures=report(
            directory("results/{dataset}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="7 Figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "{name}"},
        ),
    params:
        entry=lambda wildcards: REGISTRY[wildcards.dataset],
        compare_group_key=config["compare"]["group_key"],
        enrichment_group_key=config["enrichment"]["group_key"],
        composition_group_key=config["composition"]["group_key"],
        communication_group_key=config["communication"]["group_key"],
        min_donors=config["compare"]["min_donors"],
        pseudobulk=config["pseudobulk"],
        # shown at the end of the report (and a change of any of it reruns the report)
        config=report_config,
    log:
        "logs/report_dataset/{dataset}.log",
    benchmark:
        "benchmarks/report_dataset/{dataset}.tsv"
    resources:
        mem_mb=mem_mb("report_dataset"),
        runtime=runtime(),
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/report_dataset.py"


# The index lists this run's datasets (the inputs, read by their paths: report_index.FILES) and
# those whose reports earlier runs left under results/, marked as such.
rule report_index:
    input:
        h5ads=expand("results/{dataset}/{dataset}.h5ad", dataset=DATASETS),
        reports=expand("results/{dataset}/report.html", dataset=DATASETS),
        by_groups=expand("results/{dataset}/tables/scores_by_group.tsv", dataset=DATASETS),
        de_summaries=expand("results/{dataset}/tables/pseudobulk_summary.tsv", dataset=DATASETS),
        de_results=expand("results/{dataset}/tables/pseudobulk_de.tsv.gz", dataset=DATASETS),
        composition=expand("results/{dataset}/tables/composition_test.tsv", dataset=DATASETS),
        communication=expand(
            "results/{dataset}/tables/communication_comparison.tsv", dataset=DATASETS
        ),
        coverage=expand("results/{dataset}/tables/signature_coverage.tsv", dataset=DATASETS),
    output:
        html=report(
            "results/index.html",
            caption="../report/index.rst",
            category="0 Reports",
            labels={"dataset": "all", "file": "index.html"},
        ),
    params:
        datasets=DATASETS,
        entries=index_entries,
    log:
        "logs/report_index/index.log",
    resources:
        mem_mb=mem_mb("report_index"),
        runtime=runtime(),
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/report_index.py"
