# Cluster: normalise, highly variable genes, PCA, harmony across donors, neighbours, UMAP,
# Leiden over a resolution grid chosen by resampling stability, marker genes per cluster.


rule cluster_cells:
    input:
        h5ad=rules.filter_cells.output.h5ad,
    output:
        h5ad="results/{dataset}/intermediate/clustered.h5ad",
        stability="results/{dataset}/tables/cluster_stability.tsv",
        markers="results/{dataset}/tables/markers.tsv",
    params:
        cluster=config["cluster"],
        seed=config["seed"],
    threads: 2
    log:
        "logs/cluster_cells/{dataset}.log",
    benchmark:
        "benchmarks/cluster_cells/{dataset}.tsv"
    resources:
        mem_mb=8000,
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/cluster_cells.py"
