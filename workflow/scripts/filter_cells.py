"""Snakemake rule filter_cells: QC metrics and adaptive per-sample filtering."""

import logging

import anndata as ad

from osteoimmune.qc import compute_qc_metrics, filter_cells
from osteoimmune.runlog import logged

log = logging.getLogger("osteoimmune")


def main(*, h5ad, qc, out, summary):
    adata = ad.read_h5ad(h5ad)
    meta = adata.uns["osteoimmune"]
    counts_based = meta["value_type"] == "counts"
    compute_qc_metrics(adata)
    qc = dict(qc)
    min_cells_per_gene = qc.pop("min_cells_per_gene")
    filtered, table = filter_cells(
        adata, counts_based=counts_based, min_cells_per_gene=min_cells_per_gene, **qc
    )
    note = "adaptive per-sample MAD thresholds on counts" if counts_based else (
        f"values are {meta['value_type']}, not counts: count-based QC skipped, "
        "only cells with no detected genes removed"
    )
    filtered.uns["osteoimmune"]["qc_note"] = note
    log.info("%s; %d of %d cells kept", note, filtered.n_obs, adata.n_obs)
    if filtered.n_obs == 0:
        msg = f"Dataset {meta['dataset']}: QC removed every cell; see {summary} and relax `qc:`."
        raise ValueError(msg)
    table.to_csv(summary, sep="\t")
    filtered.write_h5ad(out, compression="gzip")


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            qc=snakemake.params.qc,
            out=snakemake.output.h5ad,
            summary=snakemake.output.summary,
        )
