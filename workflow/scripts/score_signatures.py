"""Snakemake rule score_signatures: signature scores, calibration, M1/M2 states, RANKL/OPG genes."""

import logging

import anndata as ad
import numpy as np
import pandas as pd

from osteoimmune.runlog import logged
from osteoimmune.scoring import (
    add_user_sets,
    calibrated_scores,
    default_score_sets,
    group_means,
    score_signatures,
)
from osteoimmune.signatures import load_library
from osteoimmune.states import (
    first_scored,
    gate_mask,
    gene_table,
    polarization,
    state_table,
)

log = logging.getLogger("osteoimmune")
# Reported gene by gene per cell type: the RANKL/OPG axis and the cytokines.
PER_GENE_SETS = (
    "osteoimmune_RANKL_OPG_axis",
    "osteoclastogenic_inflammatory_cytokines",
    "anti_osteoclastogenic_cytokines",
)


def main(*, h5ad, params, seed, out, tables, gate=None):
    adata = ad.read_h5ad(h5ad)
    meta = adata.uns["osteoimmune"]
    species, upper = meta["species"], meta["gene_symbol_case"] == "upper"
    library = load_library()
    added = add_user_sets(library, params.get("user_sets", []), species=species)
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
    if gate:  # the registry's polarization_gate: the population is defined by the experiment
        described = f"all cells, by design: {gate['reason']}"
        gate = np.ones(adata.n_obs, dtype=bool)
    else:
        described = f"annotated {', '.join(pol['cell_types'])}"
        gate = gate_mask(adata.obs, cell_types=pol["cell_types"])
    m1, m2 = (first_scored(pol[key], agreement.index) for key in ("m1", "m2"))
    if m1 and m2:
        states = polarization(
            adata.obs.filter(like="z_").rename(columns=lambda c: c.removeprefix("z_")),
            adata.obsm["signature_p"],
            gate=gate,
            m1=m1,
            m2=m2,
            alpha=params["alpha"],
        )
        adata.obs[states.columns] = states
        meta["polarization"] = {
            "m1": m1,
            "m2": m2,
            "gated_cells": int(gate.sum()),
            "gate": described,
        }
    log.info("polarization gate: %d cells (%s)", gate.sum(), described)
    genes = sorted({g for name in PER_GENE_SETS for g in library.genes(name, species)})
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
    adata.write_h5ad(out, compression="gzip")


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            params=snakemake.params.signatures,
            gate=snakemake.params.gate,
            seed=snakemake.params.seed,
            out=snakemake.output.h5ad,
            tables={
                key: snakemake.output[key]
                for key in ("coverage", "agreement", "by_group", "states", "genes")
            },
        )
