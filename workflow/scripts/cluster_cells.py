"""Snakemake rule cluster_cells: normalise, HVG, PCA, harmony, neighbours, UMAP, Leiden, markers."""

import logging

from osteoimmune.cluster import embed, markers, normalize, select_hvg, umap
from osteoimmune.runlog import logged
from osteoimmune.samples import read_counts_once, write_h5ad
from osteoimmune.stability import cluster_over_resolutions, small_dataset_caveat
from osteoimmune.workers import worker_pool, workers_for

log = logging.getLogger("osteoimmune")


def main(*, h5ad, params, seed, out, stability, marker_table, compression="gzip", threads=1):
    adata = read_counts_once(h5ad)
    # a second thread: UMAP and the stability subsamples run in a worker process
    with worker_pool(workers_for(adata.n_obs, threads)) as pool:
        value_type = adata.uns["osteoimmune"]["value_type"]
        normalize(adata, value_type=value_type)
        log.info("normalisation: %s", adata.uns["osteoimmune"]["normalization"])
        select_hvg(
            adata,
            n_top_genes=params["n_top_genes"],
            value_type=value_type,
            batch_key=params["batch_key"],
        )
        table, genes = _graph_and_clusters(adata, params=params, seed=seed, pool=pool)
    adata.uns["osteoimmune"]["seed"] = seed
    table.to_csv(stability, sep="\t", index=False)
    genes.to_csv(marker_table, sep="\t", index=False)
    write_h5ad(adata, out, compression=compression)


def _graph_and_clusters(adata, *, params, seed, pool):
    """Embedding, graph, Leiden grid with stability, markers.

    UMAP and the stability's subsamples run in the pool's workers (if any) beside the rest.
    """
    value_type = adata.uns["osteoimmune"]["value_type"]
    note = embed(
        adata,
        n_pcs=params["n_pcs"],
        n_neighbors=params["n_neighbors"],
        batch_key=params["batch_key"],
        seed=seed,
        value_type=value_type,
        normalization=params["normalization"],
        knn=params["knn"],
        umap_init=params["umap_init"],
        harmony=params["harmony"],
        layout=False,
    )
    log.info(note)
    rep = adata.uns["neighbors"]["params"]["use_rep"]
    finish_umap = umap(adata, rep=rep, seed=seed, umap_init=params["umap_init"], pool=pool)
    table = cluster_over_resolutions(
        adata,
        resolutions=params["resolutions"],
        repeats=params["stability_repeats"],
        seed=seed,
        min_cells_per_cluster=params["min_cells_per_cluster"],
        pool=pool,
    )
    clustering = adata.uns["osteoimmune"]["clustering"]
    clustering["caveat"] = small_dataset_caveat(
        adata.n_obs,
        small_dataset_cells=params["small_dataset_cells"],
        limited=clustering["limited"],
    )
    if clustering["caveat"]:
        log.warning(clustering["caveat"])
    genes = markers(
        adata,
        n_genes=params["n_markers"],
        max_cells_per_group=params["marker_max_cells_per_cluster"],
        seed=seed,
    )
    finish_umap()
    log.info("UMAP layout stored")
    return table, genes


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            params=snakemake.params.cluster,
            seed=snakemake.params.seed,
            out=snakemake.output.h5ad,
            stability=snakemake.output.stability,
            marker_table=snakemake.output.markers,
            compression=snakemake.params.compression,
            threads=snakemake.threads,
        )
