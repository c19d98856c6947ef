"""Snakemake rule filter_cells: QC metrics, doublets and adaptive per-sample filtering."""

import logging

import anndata as ad

from osteoimmune.qc import compute_qc_metrics, filter_cells, prepare_qc
from osteoimmune.runlog import logged

log = logging.getLogger("osteoimmune")


def main(*, h5ad, qc, seed, out, summary, lineage):
    adata = ad.read_h5ad(h5ad)
    meta = adata.uns["osteoimmune"]
    compute_qc_metrics(adata)
    notes = prepare_qc(adata, qc=qc, seed=seed, value_type=meta["value_type"])
    for note in notes[1:]:
        log.warning(note)
    used_above = ("lineage_resolution", "doublet_threshold")
    thresholds = {key: value for key, value in qc.items() if key not in used_above}
    filtered, table, losses = filter_cells(
        adata, counts_based=meta["value_type"] == "counts", dataset=meta["dataset"], **thresholds
    )
    dropped = list(table.index[table["sample_dropped"]])
    if dropped:
        notes.append(f"sample(s) dropped, too few cells after QC: {', '.join(map(str, dropped))}")
    filtered.uns["osteoimmune"]["qc_note"] = "; ".join(notes)
    log.info("%s; %d of %d cells kept", notes[0], filtered.n_obs, adata.n_obs)
    table.to_csv(summary, sep="\t")
    losses.to_csv(lineage, sep="\t")
    filtered.write_h5ad(out, compression="gzip")


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            qc=snakemake.params.qc,
            seed=snakemake.params.seed,
            out=snakemake.output.h5ad,
            summary=snakemake.output.summary,
            lineage=snakemake.output.lineage,
        )
