# QC: species-aware metrics, scrublet doublets, adaptive per-sample or lineage-aware thresholds.


rule filter_cells:
    input:
        h5ad=rules.read_dataset.output.h5ad,
    output:
        h5ad="results/{dataset}/intermediate/qc.h5ad",
        summary="results/{dataset}/tables/qc_summary.tsv",
        lineage="results/{dataset}/tables/qc_lineage_losses.tsv",
    params:
        qc=config["qc"],
        seed=config["seed"],
    log:
        "logs/filter_cells/{dataset}.log",
    benchmark:
        "benchmarks/filter_cells/{dataset}.tsv"
    resources:
        mem_mb=4000,
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/filter_cells.py"
