# QC: species-aware metrics and adaptive per-sample thresholds.


rule filter_cells:
    input:
        h5ad=rules.read_dataset.output.h5ad,
    output:
        h5ad="results/{dataset}/intermediate/qc.h5ad",
        summary="results/{dataset}/tables/qc_summary.tsv",
    params:
        qc=config["qc"],
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
