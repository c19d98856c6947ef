"""Snakemake rule compare_expression: pseudobulk differential expression between conditions."""

import logging

import anndata as ad
import pandas as pd

from osteoimmune.enrichment import gene_set_dict
from osteoimmune.pseudobulk import (
    RESULT_COLUMNS,
    SUMMARY_COLUMNS,
    TABLE_COLUMNS,
    compare_pseudobulk,
    condition_order,
    de_enrichment,
    highlight,
    osteoimmune_genes,
    pseudobulk,
)
from osteoimmune.runlog import logged
from osteoimmune.samples import comparison_unit, read_annotated
from osteoimmune.signatures import load_library
from osteoimmune.tables import write_tsv

log = logging.getLogger("osteoimmune")


def not_counts(value_type, out):
    """Non-count input: no pseudobulk DE; the summary says why, the other tables are empty."""
    reason = f"values are {value_type}, not raw counts: pseudobulk DE needs counts"
    summary = pd.DataFrame([{"group": "all", "tested": False, "reason": reason}])
    summary.reindex(columns=SUMMARY_COLUMNS).to_csv(out["summary"], sep="\t", index=False)
    for key, columns in (("results", RESULT_COLUMNS), ("genes", RESULT_COLUMNS)):
        write_tsv(pd.DataFrame(columns=columns), out[key])
    pd.DataFrame(columns=TABLE_COLUMNS).to_csv(out["samples"], sep="\t", index=False)
    pd.DataFrame(columns=["group", "contrast"]).to_csv(out["enrichment"], sep="\t", index=False)
    ad.AnnData().write_h5ad(out["pseudobulk"])
    log.info(reason)


def main(
    *,
    matrices,
    h5ad,
    params,
    enrichment_min_size,
    enrichment_max_size,
    reference,
    paired,
    seed,
    out,
):
    # the raw counts only: no X
    adata = read_annotated(matrices, h5ad, x=False, layers=("counts",))
    meta = adata.uns["osteoimmune"]
    if meta["value_type"] != "counts" or "counts" not in adata.layers:
        return not_counts(meta["value_type"], out)
    pb, table = pseudobulk(
        adata, group_key=params["group_key"], sample_key=comparison_unit(adata.obs),
        min_cells=params["min_cells"],
        min_counts=params["min_counts"],
    )  # fmt: skip
    results, summary = compare_pseudobulk(
        pb, table, conditions=condition_order(adata.obs), reference=reference,
        paired=paired, min_samples=params["min_samples"], alpha=params["alpha"], seed=seed,
    )  # fmt: skip
    library = load_library()
    enriched = de_enrichment(
        results, gene_sets=gene_set_dict(library, species=meta["species"]),
        min_size=enrichment_min_size, max_size=enrichment_max_size,
        permutations=params["permutations"], seed=seed,
    )  # fmt: skip
    genes = highlight(results, osteoimmune_genes(meta["species"], library=library))
    write_tsv(results, out["results"])
    summary.to_csv(out["summary"], sep="\t", index=False)
    table.to_csv(out["samples"], sep="\t", index=False)
    genes.to_csv(out["genes"], sep="\t", index=False)
    enriched.to_csv(out["enrichment"], sep="\t", index=False)
    pb.write_h5ad(out["pseudobulk"])
    log.info("%d of %d cell type x contrast tested", summary["tested"].sum(), len(summary))


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            matrices=snakemake.input.matrices,
            h5ad=snakemake.input.h5ad,
            params=snakemake.params.pseudobulk,
            enrichment_min_size=snakemake.params.enrichment_min_size,
            enrichment_max_size=snakemake.params.enrichment_max_size,
            reference=snakemake.params.reference,
            paired=snakemake.params.paired,
            seed=snakemake.params.seed,
            out={k: snakemake.output[k] for k in snakemake.output.keys()},
        )
