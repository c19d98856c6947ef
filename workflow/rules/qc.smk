# QC: species-aware metrics, scrublet doublets, adaptive per-sample or lineage-aware thresholds.
# One qc_sample job per sample (in parallel, or on a cluster), then filter_cells joins them.


rule qc_sample:
    input:
        h5ad=qc_sample_input,
    output:
        h5ad="results/{dataset}/intermediate/qc_samples/{sample}.h5ad",
        thresholds="results/{dataset}/intermediate/qc_samples/{sample}_thresholds.tsv",
    params:
        gene_groups=config["qc"]["gene_groups"],
        doublet_threshold=config["qc"]["doublet_threshold"],
        doublet_mean_center=config["qc"]["doublet_mean_center"],
        doublet_max_cells=config["qc"]["doublet_max_cells"],
        remove_doublets=config["qc"]["remove_doublets"],
        lineage_aware=config["qc"]["lineage_aware"],
        lineage_resolution=config["qc"]["lineage_resolution"],
        lineage_max_cells=config["qc"]["lineage_max_cells"],
        lineage_can_tighten=config["qc"]["lineage_can_tighten"],
        min_group_cells=config["qc"]["min_group_cells"],
        nmads=config["qc"]["nmads"],
        mt_nmads=config["qc"]["mt_nmads"],
        max_pct_mt=config["qc"]["max_pct_mt"],
        min_genes=config["qc"]["min_genes"],
        min_counts=config["qc"]["min_counts"],
        seed=config["seed"],
    # a large sample: scrublet in a worker process beside the coarse clustering
    # (osteoimmune.workers); small ones run in one process, side by side
    threads: job_threads
    log:
        "logs/qc_sample/{dataset}/{sample}.log",
    benchmark:
        "benchmarks/qc_sample/{dataset}/{sample}.tsv"
    resources:
        mem_mb=mem_mb("qc_sample"),
        runtime=runtime(),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/qc_sample.py"


rule filter_cells:
    input:
        unpack(qc_sample_files),
    output:
        h5ad="results/{dataset}/intermediate/qc.h5ad",
        summary=report(
            "results/{dataset}/tables/qc_summary.tsv",
            caption="../report/qc_summary.rst",
            category="1 Quality control",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "qc_summary.tsv"},
        ),
        lineage="results/{dataset}/tables/qc_lineage_losses.tsv",
        thresholds="results/{dataset}/tables/qc_thresholds.tsv",
        cells="results/{dataset}/tables/qc_cells.tsv.gz",
        design="results/{dataset}/tables/design.tsv",
    params:
        min_cells_per_gene=config["qc"]["min_cells_per_gene"],
        min_cells_per_sample=config["qc"]["min_cells_per_sample"],
        on_small_sample=config["qc"]["on_small_sample"],
        design=study_design,
        covariates=study_covariate_types,
        compression=INTERMEDIATE_COMPRESSION,
    log:
        "logs/filter_cells/{dataset}.log",
    benchmark:
        "benchmarks/filter_cells/{dataset}.tsv"
    resources:
        mem_mb=mem_mb("filter_cells"),
        runtime=runtime(),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/filter_cells.py"
