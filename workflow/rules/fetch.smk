# Fetch: download (or copy from the mirror) every file of a dataset, verified by sha256, and
# read them into the standard AnnData. Local rules: cluster compute nodes often lack internet.


localrules:
    fetch_dataset,


rule fetch_dataset:
    output:
        manifest="resources/{dataset}/fetch_manifest.json",
    params:
        registry=REGISTRY_PATH,
        mirror=config["mirror"],
        offline=config["offline"],
    log:
        "logs/fetch_dataset/{dataset}.log",
    benchmark:
        "benchmarks/fetch_dataset/{dataset}.tsv"
    conda:
        "../../envs/fetch.yaml"
    script:
        "../scripts/fetch_dataset.py"


# A checkpoint: the samples of a dataset are known only once it is read. Each sample's cells
# go to their own file, so that QC runs as one job per sample (qc.smk).
checkpoint read_dataset:
    input:
        manifest=rules.fetch_dataset.output.manifest,
    output:
        h5ad="results/{dataset}/intermediate/read.h5ad",
        samples=directory("results/{dataset}/intermediate/samples"),
    params:
        registry=REGISTRY_PATH,
        compression=INTERMEDIATE_COMPRESSION,
    log:
        "logs/read_dataset/{dataset}.log",
    benchmark:
        "benchmarks/read_dataset/{dataset}.tsv"
    resources:
        mem_mb=4000,
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/read_dataset.py"
