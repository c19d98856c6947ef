"""Snakemake rule score_signatures: signature scores, calibration, M1/M2 states, RANKL/OPG genes."""

import logging

import pandas as pd

from osteoimmune.runlog import logged
from osteoimmune.samples import annotations, read_annotated, write_h5ad
from osteoimmune.scoring import (
    add_user_sets,
    calibrated_scores,
    default_score_sets,
    group_means,
    score_signatures,
)
from osteoimmune.signatures import load_library
from osteoimmune.states import call_polarization, gene_table, per_gene_genes, state_table

log = logging.getLogger("osteoimmune")


def main(*, matrices, h5ad, params, seed, out, tables, gate=None, compression=None):
    # X only: scores need no raw counts and no graph
    adata = read_annotated(matrices, h5ad)
    meta = adata.uns["osteoimmune"]
    species, upper = meta["species"], meta["gene_symbol_case"] == "upper"
    library = load_library()
    added = add_user_sets(library, params["user_sets"], species=species)
    sets = params["sets"]
    if sets == "default":
        sets = default_score_sets(library, species) + added
    coverage = score_signatures(
        adata,
        library,
        species=species,
        sets=sets,
        min_coverage=params["min_coverage"],
        min_expressed_genes=params["min_expressed_genes"],
        seed=seed,
        case_insensitive=upper,
    )
    agreement = calibrated_scores(
        adata,
        library,
        species=species,
        coverage=coverage,
        seed=seed,
        n_null=params["n_null"],
        case_insensitive=upper,
    )
    log.info("scored %d of %d sets", int(coverage["scored"].sum()), len(coverage))
    pol = params["polarization"]
    call_polarization(
        adata,
        scored=agreement.index,
        m1=pol["m1"],
        m2=pol["m2"],
        alpha=params["alpha"],
        cell_types=pol["cell_types"],
        # the registry's polarization_gate: the population is defined by the experiment
        by_design=gate["reason"] if gate else None,
    )
    genes = per_gene_genes(library, species=species)
    per_type = dict(
        groupby="cell_type", min_cells=params["min_cells_per_type"], case_insensitive=upper
    )
    coverage.to_csv(tables["coverage"], sep="\t")
    agreement.to_csv(tables["agreement"], sep="\t")
    group_means(adata).to_csv(tables["by_group"], sep="\t", index=False)
    (
        state_table(adata.obs, groupby="sample")
        if "polarization_state" in adata.obs
        else pd.DataFrame()
    ).to_csv(tables["states"], sep="\t", index=False)
    gene_table(adata, genes, **per_type).to_csv(tables["genes"], sep="\t", index=False)
    # the scores and states alone: export_h5ad puts them on the matrices for the user's h5ad
    write_h5ad(annotations(adata), out, compression=compression)


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            matrices=snakemake.input.matrices,
            h5ad=snakemake.input.h5ad,
            params=snakemake.params.signatures,
            gate=snakemake.params.gate,
            seed=snakemake.params.seed,
            out=snakemake.output.scores,
            compression=snakemake.params.compression,
            tables={
                key: snakemake.output[key]
                for key in ("coverage", "agreement", "by_group", "states", "genes")
            },
        )
