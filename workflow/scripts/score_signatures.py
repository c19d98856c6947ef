"""Snakemake rule score_signatures: score the library's gene signatures per cell."""

import logging

import anndata as ad
import pandas as pd

from osteoimmune.runlog import logged
from osteoimmune.scoring import default_score_sets, score_signatures, scores_by_group
from osteoimmune.signatures import load_library

log = logging.getLogger("osteoimmune")


def main(*, h5ad, params, seed, out, coverage_out, by_group_out):
    adata = ad.read_h5ad(h5ad)
    meta = adata.uns["osteoimmune"]
    library = load_library()
    sets = params["sets"]
    if sets == "default":
        sets = default_score_sets(library, meta["species"])
    coverage = score_signatures(
        adata, library, species=meta["species"], sets=sets,
        min_coverage=params["min_coverage"], seed=seed,
        case_insensitive=meta["gene_symbol_case"] == "upper",
    )
    log.info("scored %d of %d sets", int(coverage["scored"].sum()), len(coverage))
    groupings = [key for key in ("leiden", "cell_lineage", "cell_type", "author_cell_type")
                 if key in adata.obs]
    tables = [
        scores_by_group(adata, groupby=key).rename_axis("group").reset_index()
        .assign(grouping=key) for key in groupings
    ]
    by_group = pd.concat(tables, ignore_index=True)
    coverage.to_csv(coverage_out, sep="\t")
    by_group.to_csv(by_group_out, sep="\t", index=False)
    adata.write_h5ad(out, compression="gzip")


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            params=snakemake.params.signatures,
            seed=snakemake.params.seed,
            out=snakemake.output.h5ad,
            coverage_out=snakemake.output.coverage,
            by_group_out=snakemake.output.by_group,
        )
