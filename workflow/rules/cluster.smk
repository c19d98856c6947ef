# Cluster: normalise, highly variable genes, PCA, harmony across donors, neighbours, UMAP,
# Leiden over a resolution grid chosen by resampling stability, marker genes per cluster.


rule cluster_cells:
    input:
        h5ad=rules.filter_cells.output.h5ad,
    output:
        h5ad="results/{dataset}/intermediate/clustered.h5ad",
        stability=report(
            "results/{dataset}/tables/cluster_stability.tsv",
            caption="../report/cluster_stability.rst",
            category="2 Clusters",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "cluster_stability.tsv"},
        ),
        markers=report(
            "results/{dataset}/tables/markers.tsv",
            caption="../report/markers.rst",
            category="2 Clusters",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "markers.tsv"},
        ),
    params:
        cluster=config["cluster"],
        compression=INTERMEDIATE_COMPRESSION,
        seed=config["seed"],
    # enough cells: UMAP and the stability subsamples in a worker process (osteoimmune.workers)
    threads: job_threads
    log:
        "logs/cluster_cells/{dataset}.log",
    benchmark:
        "benchmarks/cluster_cells/{dataset}.tsv"
    resources:
        mem_mb=mem_mb("cluster_cells"),
        runtime=runtime(),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/cluster_cells.py"
