"""Snakemake rule qc_sample: QC metrics, doublets and removal flags of one sample's cells."""

import logging

from osteoimmune.qc import compute_qc_metrics, flag_cells, prepare_qc
from osteoimmune.runlog import logged
from osteoimmune.samples import read_counts_once, share_counts, write_counts_once
from osteoimmune.workers import worker_pool, workers_for

log = logging.getLogger("osteoimmune")


def main(*, h5ad, params, seed, out, thresholds, threads=1):
    adata = read_counts_once(h5ad)
    share_counts(adata)  # one copy of the raw counts in memory (X and layers['counts'])
    # a second thread: scrublet runs in a worker process beside the coarse clustering
    with worker_pool(workers_for(adata.n_obs, threads)) as pool:
        value_type = adata.uns["osteoimmune"]["value_type"]
        compute_qc_metrics(adata, gene_lists=params["gene_groups"])
        notes = prepare_qc(
            adata,
            seed=seed,
            value_type=value_type,
            doublet_threshold=params["doublet_threshold"],
            doublet_mean_center=params["doublet_mean_center"],
            doublet_max_cells=params["doublet_max_cells"],
            lineage_aware=params["lineage_aware"],
            lineage_resolution=params["lineage_resolution"],
            lineage_max_cells=params["lineage_max_cells"],
            min_group_cells=params["min_group_cells"],
            remove_doublets=params["remove_doublets"],
            pool=pool,
        )
    for note in notes[1:]:
        log.warning(note)
    table = flag_cells(
        adata,
        counts_based=value_type == "counts",
        lineage_aware=params["lineage_aware"],
        lineage_can_tighten=params["lineage_can_tighten"],
        min_group_cells=params["min_group_cells"],
        remove_doublets=params["remove_doublets"],
        nmads=params["nmads"],
        mt_nmads=params["mt_nmads"],
        max_pct_mt=params["max_pct_mt"],
        min_genes=params["min_genes"],
        min_counts=params["min_counts"],
    )
    adata.uns["qc_notes"] = notes
    log.info("%s: %d of %d cells pass", notes[0], adata.obs["qc_pass"].sum(), adata.n_obs)
    table.to_csv(thresholds, sep="\t", index=False)
    write_counts_once(adata, out)


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            params=snakemake.params,
            seed=snakemake.params.seed,
            out=snakemake.output.h5ad,
            thresholds=snakemake.output.thresholds,
            threads=snakemake.threads,
        )
