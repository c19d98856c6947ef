"""Snakemake rule qc_sample: QC metrics, doublets and removal flags of one sample's cells."""

import logging

import anndata as ad

from osteoimmune.qc import compute_qc_metrics, flag_cells, prepare_qc, threshold_params
from osteoimmune.runlog import logged
from osteoimmune.samples import share_counts

log = logging.getLogger("osteoimmune")


def main(*, h5ad, qc, lineage_can_tighten, seed, out, thresholds):
    adata = ad.read_h5ad(h5ad)
    share_counts(adata)  # one copy of the raw counts in memory (X and layers['counts'])
    value_type = adata.uns["osteoimmune"]["value_type"]
    compute_qc_metrics(adata, gene_lists=qc["gene_groups"])
    notes = prepare_qc(adata, qc=qc, seed=seed, value_type=value_type)
    for note in notes[1:]:
        log.warning(note)
    table = flag_cells(
        adata,
        counts_based=value_type == "counts",
        lineage_aware=qc["lineage_aware"],
        lineage_can_tighten=lineage_can_tighten,
        min_group_cells=qc["min_group_cells"],
        remove_doublets=qc["remove_doublets"],
        **threshold_params(qc),
    )
    adata.uns["qc_notes"] = notes
    log.info("%s: %d of %d cells pass", notes[0], adata.obs["qc_pass"].sum(), adata.n_obs)
    table.to_csv(thresholds, sep="\t", index=False)
    adata.write_h5ad(out)


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            qc=snakemake.params.qc,
            lineage_can_tighten=snakemake.params.lineage_can_tighten,
            seed=snakemake.params.seed,
            out=snakemake.output.h5ad,
            thresholds=snakemake.output.thresholds,
        )
