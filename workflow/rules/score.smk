# Score: literature-backed gene signatures (library in workflow/scripts/osteoimmune/data/),
# null-calibrated; M1/M2 states within monocytes/macrophages; RANKL/OPG and cytokine genes
# per cell type; the immune-to-bone ligand-receptor panel.


rule score_signatures:
    input:
        h5ad=rules.annotate_cells.output.h5ad,
    output:
        h5ad="results/{dataset}/{dataset}.h5ad",
        coverage="results/{dataset}/tables/signature_coverage.tsv",
        by_group="results/{dataset}/tables/scores_by_group.tsv",
        agreement="results/{dataset}/tables/method_agreement.tsv",
        states="results/{dataset}/tables/polarization_states.tsv",
        genes="results/{dataset}/tables/genes_by_cell_type.tsv",
        pairs="results/{dataset}/tables/ligand_receptor.tsv",
    params:
        signatures=config["signatures"],
        seed=config["seed"],
    log:
        "logs/score_signatures/{dataset}.log",
    benchmark:
        "benchmarks/score_signatures/{dataset}.tsv"
    resources:
        mem_mb=4000,
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/score_signatures.py"
