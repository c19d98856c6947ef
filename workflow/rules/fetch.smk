# Fetch: download (or copy from the mirror) every file of a dataset, verified by sha256, and
# read them into the standard AnnData. Local rules: cluster compute nodes often lack internet.


localrules:
    fetch_dataset,
    fetch_sample,
    fetch_model,


# config mirror and offline say where the bytes come from, not what they are (every file is
# checked against its sha256), so they are not params: fetch_dataset.py reads them from the
# config, and switching mirror or going offline does not rerun a finished fetch or what follows.
# A local file (`path:`) has no URL to verify it by: its size and modification time are a param
# (`local`, unused by the script), so that replacing the file reruns the fetch and what follows.


rule fetch_dataset:
    output:
        manifest="resources/{dataset}/fetch_manifest.json",
    params:
        files=lambda wildcards: REGISTRY[wildcards.dataset]["files"],
        local=lambda wildcards: local_files(REGISTRY[wildcards.dataset]["files"]),
        lock=CHECKSUM_LOCK,
        strict=config["strict_checksums"],
    log:
        "logs/fetch_dataset/{dataset}.log",
    benchmark:
        "benchmarks/fetch_dataset/{dataset}.tsv"
    conda:
        "../../envs/fetch.yaml"
    script:
        "../scripts/fetch_dataset.py"


# A registry model (a trained CellTypist reference) is fetched as a dataset's files are: by URL
# and sha256 or from the mirror, cached under resources/models/, never at annotation time.
rule fetch_model:
    output:
        manifest="resources/models/{model}/fetch_manifest.json",
    params:
        files=lambda wildcards: MODELS[wildcards.model]["files"],
        local=lambda wildcards: local_files(MODELS[wildcards.model]["files"]),
        lock=CHECKSUM_LOCK,
        strict=config["strict_checksums"],
    log:
        "logs/fetch_model/{model}.log",
    benchmark:
        "benchmarks/fetch_model/{model}.tsv"
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
        entry=dataset_reading,
        compression=INTERMEDIATE_COMPRESSION,
    log:
        "logs/read_dataset/{dataset}.log",
    benchmark:
        "benchmarks/read_dataset/{dataset}.tsv"
    resources:
        mem_mb=mem_mb("read_dataset", fetched=True),
        runtime=runtime(),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/read_dataset.py"


# Studies (a samplesheet): each sample's files are fetched and read by jobs of their own, in
# parallel or one job per sample on a cluster; a sample inside the dataset's archive (a GEO
# RAW.tar) is read from the archive fetch_dataset brought.
rule fetch_sample:
    output:
        manifest="resources/{dataset}/samples/{sample}/fetch_manifest.json",
    params:
        files=lambda wildcards: study_sample(wildcards)["files"],
        local=lambda wildcards: local_files(study_sample(wildcards)["files"]),
        lock=CHECKSUM_LOCK,
        strict=config["strict_checksums"],
    log:
        "logs/fetch_sample/{dataset}/{sample}.log",
    benchmark:
        "benchmarks/fetch_sample/{dataset}/{sample}.tsv"
    conda:
        "../../envs/fetch.yaml"
    script:
        "../scripts/fetch_dataset.py"


rule read_sample:
    input:
        manifest=sample_manifest,
    output:
        h5ad="results/{dataset}/intermediate/sample_reads/{sample}.h5ad",
    params:
        sample=sample_reading,
        settings=read_settings,
        compression=INTERMEDIATE_COMPRESSION,
    log:
        "logs/read_sample/{dataset}/{sample}.log",
    benchmark:
        "benchmarks/read_sample/{dataset}/{sample}.tsv"
    resources:
        mem_mb=mem_mb("read_sample", fetched=True),
        runtime=runtime(),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/read_sample.py"
