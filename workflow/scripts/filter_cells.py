"""Snakemake rule filter_cells: join the per-sample QC, drop flagged cells and small samples."""

import logging

import pandas as pd

from osteoimmune.qc import finish_qc, qc_cells_table
from osteoimmune.runlog import logged
from osteoimmune.samples import (
    apply_design,
    concat_samples,
    design_table,
    read_counts_once,
    share_counts,
    write_counts_once,
)
from osteoimmune.tables import write_tsv

log = logging.getLogger("osteoimmune")


def main(
    *,
    h5ads,
    thresholds,
    min_cells_per_gene,
    min_cells_per_sample,
    on_small_sample,
    out,
    tables,
    design=None,
    covariates=None,
    compression="gzip",
):
    parts = [read_counts_once(path) for path in h5ads]
    # raw counts in X and layers['counts'] alike: join and filter one copy, share it after
    shared = all([share_counts(part) for part in parts])
    if shared:
        for part in parts:
            del part.layers["counts"]
    notes = [str(n) for part in parts for n in part.uns.pop("qc_notes")]
    notes = [notes[0], *dict.fromkeys(n for n in notes if n != notes[0])]
    adata = concat_samples(parts)
    if design is not None:  # a study: donor, condition and covariates from its samplesheet
        apply_design(adata, design, covariates=covariates)
    write_tsv(qc_cells_table(adata.obs), tables["cells"], index=True)
    filtered, summary, losses = finish_qc(
        adata,
        min_cells_per_gene=min_cells_per_gene,
        min_cells_per_sample=min_cells_per_sample,
        on_small_sample=on_small_sample,
        dataset=adata.uns["osteoimmune"]["dataset"],
    )
    dropped = list(summary.index[summary["sample_dropped"]])
    if dropped:
        notes.append(f"sample(s) dropped, too few cells after QC: {', '.join(map(str, dropped))}")
    if shared:
        filtered.layers["counts"] = filtered.X
    filtered.uns["osteoimmune"]["qc_note"] = "; ".join(notes)
    log.info("%s; %d of %d cells kept", notes[0], filtered.n_obs, adata.n_obs)
    design_table(
        adata.obs,
        filtered.obs_names,
        covariates=list(adata.uns["osteoimmune"].get("covariates", [])),
    ).to_csv(tables["design"], sep="\t", index=False)
    summary.to_csv(tables["summary"], sep="\t")
    losses.to_csv(tables["lineage"], sep="\t")
    pd.concat([pd.read_csv(p, sep="\t") for p in thresholds]).to_csv(
        tables["thresholds"], sep="\t", index=False
    )
    write_counts_once(filtered, out, compression=compression)


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ads=snakemake.input.h5ads,
            thresholds=snakemake.input.thresholds,
            min_cells_per_gene=snakemake.params.min_cells_per_gene,
            min_cells_per_sample=snakemake.params.min_cells_per_sample,
            on_small_sample=snakemake.params.on_small_sample,
            out=snakemake.output.h5ad,
            tables={
                k: snakemake.output[k]
                for k in ("summary", "lineage", "thresholds", "cells", "design")
            },
            design=snakemake.params.design,
            covariates=snakemake.params.covariates,
            compression=snakemake.params.compression,
        )
