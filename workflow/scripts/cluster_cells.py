"""Snakemake rule cluster_cells: normalise, HVG, PCA, harmony, neighbours, UMAP, Leiden."""

import logging

import anndata as ad

from osteoimmune.cluster import embed, leiden, normalize, select_hvg
from osteoimmune.runlog import logged

log = logging.getLogger("osteoimmune")


def main(*, h5ad, params, seed, out):
    adata = ad.read_h5ad(h5ad)
    value_type = adata.uns["osteoimmune"]["value_type"]
    normalize(adata, value_type=value_type)
    select_hvg(
        adata, n_top_genes=params["n_top_genes"], value_type=value_type,
        batch_key=params["batch_key"],
    )
    note = embed(
        adata, n_pcs=params["n_pcs"], n_neighbors=params["n_neighbors"],
        batch_key=params["batch_key"], seed=seed,
    )
    log.info(note)
    leiden(adata, resolution=params["resolution"], seed=seed)
    adata.uns["osteoimmune"]["seed"] = seed
    adata.write_h5ad(out, compression="gzip")


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            params=snakemake.params.cluster,
            seed=snakemake.params.seed,
            out=snakemake.output.h5ad,
        )
