"""Snakemake rule filter_cells: QC metrics, doublets and adaptive per-sample filtering."""

import logging

import anndata as ad

from osteoimmune.qc import assign_qc_groups, compute_qc_metrics, detect_doublets, filter_cells
from osteoimmune.runlog import logged

log = logging.getLogger("osteoimmune")


def prepare(adata, *, qc, seed, value_type):
    """Doublet scores and coarse QC groups (count input only); returns notes for the report."""
    if value_type != "counts":
        return [
            f"values are {value_type}, not counts: count-based QC, doublet detection and "
            "lineage-aware thresholds skipped, only cells with no detected genes removed"
        ]
    notes = detect_doublets(adata, seed=seed, threshold=qc["doublet_threshold"])
    assign_qc_groups(
        adata, seed=seed, resolution=qc["lineage_resolution"],
        min_group_cells=qc["min_group_cells"],
    )
    mode = "within coarse clusters (lineage-aware)" if qc["lineage_aware"] else "per sample"
    doublets = "scrublet doublets removed" if qc["remove_doublets"] else "doublets scored, kept"
    return [f"adaptive MAD thresholds on counts {mode}; {doublets}", *notes]


def main(*, h5ad, qc, seed, out, summary, lineage):
    adata = ad.read_h5ad(h5ad)
    meta = adata.uns["osteoimmune"]
    compute_qc_metrics(adata)
    notes = prepare(adata, qc=qc, seed=seed, value_type=meta["value_type"])
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
