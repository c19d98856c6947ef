# Annotate: lineage and cell type of every cell from a labelled reference of the species
# (train_reference: a CellTypist model from a registry entry with `reference: true`) checked and
# explained by marker panels (signature library, plus config annotation.panels); each call's
# source, confidence and marker evidence (tables/annotation_sources.tsv); agreement with the
# authors' labels where the registry maps them; composition per sample.


rule train_reference:
    input:
        h5ad="results/{reference}/intermediate/clustered.h5ad",
    output:
        model="results/references/{reference}/model.pkl",
        labels="results/references/{reference}/training_labels.tsv",
    params:
        min_cells=config["annotation"]["reference_min_cells"],
        label_map=lambda wildcards: REGISTRY[wildcards.reference].get("author_label_map") or {},
    log:
        "logs/train_reference/{reference}.log",
    benchmark:
        "benchmarks/train_reference/{reference}.tsv"
    resources:
        mem_mb=mem_mb("train_reference"),
        runtime=runtime(),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/train_reference.py"


rule annotate_cells:
    input:
        h5ad=rules.cluster_cells.output.h5ad,
        model=reference_model,
    output:
        h5ad="results/{dataset}/intermediate/annotated.h5ad",
        agreement=report(
            "results/{dataset}/tables/annotation_agreement.tsv",
            caption="../report/annotation_agreement.rst",
            category="3 Cell types",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "annotation_agreement.tsv"},
        ),
        confusion="results/{dataset}/tables/annotation_confusion.tsv",
        composition=report(
            "results/{dataset}/tables/composition.tsv",
            caption="../report/composition.rst",
            category="3 Cell types",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "composition.tsv"},
        ),
        coverage="results/{dataset}/tables/panel_coverage.tsv",
        sources="results/{dataset}/tables/annotation_sources.tsv",
    params:
        annotation=config["annotation"],
        reference=reference_params,
        tissue=lambda wildcards: REGISTRY[wildcards.dataset]["tissue"],
        compression=INTERMEDIATE_COMPRESSION,
        # The registry's entry parts this rule uses, as params so that editing them reruns it.
        label_map=lambda wildcards: REGISTRY[wildcards.dataset].get("author_label_map") or {},
        progenitor_sort=lambda wildcards: REGISTRY[wildcards.dataset].get("progenitor_sort"),
    log:
        "logs/annotate_cells/{dataset}.log",
    benchmark:
        "benchmarks/annotate_cells/{dataset}.tsv"
    resources:
        mem_mb=mem_mb("annotate_cells"),
        runtime=runtime(),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/annotate_cells.py"
