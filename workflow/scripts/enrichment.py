"""Snakemake rule enrichment: prerank GSEA per cell type and marker over-representation."""

import logging

import anndata as ad
import pandas as pd

from osteoimmune.cluster import markers
from osteoimmune.enrichment import gene_set_dict, overrepresentation, prerank_by_group
from osteoimmune.runlog import logged
from osteoimmune.samples import read_annotated
from osteoimmune.scoring import add_user_sets
from osteoimmune.signatures import load_library

log = logging.getLogger("osteoimmune")
UNASSIGNED = "unassigned"


def cell_type_ranking(
    adata: ad.AnnData,
    *,
    group_key: str,
    min_cells: int,
    max_cells_per_group: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Every gene ranked per cell type (Wilcoxon vs the rest) for prerank GSEA.

    A cell type of more than ``max_cells_per_group`` cells is ranked on that many of them
    (seeded; see :func:`osteoimmune.cluster.markers`).
    """
    sizes = adata.obs[group_key].value_counts()
    keep = [g for g in sizes.index if sizes[g] >= min_cells and g != UNASSIGNED]
    if not keep:
        return pd.DataFrame(columns=["cluster", "rank", "gene", "score"])
    ranking = markers(
        adata,
        n_genes=adata.n_vars,
        groupby=group_key,
        max_cells_per_group=max_cells_per_group,
        seed=seed,
    )
    return ranking.query("cluster in @keep")


def main(*, matrices, h5ad, leiden_markers, params, user_sets, seed, threads, out):
    # X only: no raw counts
    adata = read_annotated(matrices, h5ad)
    meta = adata.uns["osteoimmune"]
    species, upper = meta["species"], meta["gene_symbol_case"] == "upper"
    library = load_library()
    add_user_sets(library, user_sets, species=species)
    library.to_gmt(out["gmt"], species=species)
    sets = gene_set_dict(library, species=species)
    log.info("%d gene sets for %s", len(sets), species)
    group_key = params["group_key"]
    adata.obs[group_key] = adata.obs[group_key].astype("category")
    ranking = cell_type_ranking(
        adata,
        group_key=group_key,
        min_cells=params["min_cells"],
        max_cells_per_group=params["max_cells_per_group"],
        seed=seed,
    )
    prerank = prerank_by_group(
        ranking,
        sets,
        group_col="cluster",
        min_size=params["min_size"],
        max_size=params["max_size"],
        permutations=params["permutations"],
        seed=seed,
        threads=threads,
        case_insensitive=upper,
        species=species,
    ).rename(columns={"group": group_key})
    ora = overrepresentation(
        pd.read_csv(leiden_markers, sep="\t", dtype={"cluster": str}),
        sets,
        group_col="cluster",
        background=adata.var_names,
        top_n=params["top_n"],
        max_padj=params["max_padj"],
        case_insensitive=upper,
        species=species,
    ).rename(columns={"group": "leiden"})
    prerank.to_csv(out["prerank"], sep="\t", index=False)
    ora.to_csv(out["ora"], sep="\t", index=False)
    log.info(
        "prerank: %d rows (%d groups); ORA: %d rows",
        len(prerank),
        prerank[group_key].nunique(),
        len(ora),
    )


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            matrices=snakemake.input.matrices,
            h5ad=snakemake.input.h5ad,
            leiden_markers=snakemake.input.markers,
            params=snakemake.params.enrichment,
            user_sets=snakemake.params.user_sets,
            seed=snakemake.params.seed,
            threads=snakemake.threads,
            out={key: snakemake.output[key] for key in ("prerank", "ora", "gmt")},
        )
