"""Snakemake rule report_index: results/index.html linking every dataset's report."""

from pathlib import Path

import anndata as ad
import pandas as pd

from osteoimmune.registry import load_registry
from osteoimmune.report import index_row, key_signature_block, render, software_versions
from osteoimmune.report_conditions import top_changes, top_genes
from osteoimmune.runlog import logged


def read_tsv(path):
    try:
        return pd.read_csv(path, sep="\t")
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def changes(paths):
    """The dataset's top changes between conditions, from its comparison tables."""
    de_summary, de_results, composition, communication = map(read_tsv, paths)
    return top_changes(
        de_summary=de_summary, de_top=top_genes(de_results, n=1), composition=composition,
        communication=communication,
    )  # fmt: skip


def main(*, h5ads, by_groups, comparisons, registry, html):
    entries = load_registry(registry)
    rows = []
    for path, by_group, tables in zip(h5ads, by_groups, comparisons, strict=True):
        adata = ad.read_h5ad(path, backed="r")
        row = index_row(adata, entry=entries[adata.uns["osteoimmune"]["dataset"]])
        adata.file.close()
        row["key"] = key_signature_block(pd.read_csv(by_group, sep="\t", dtype={"group": str}))
        row["changes"] = changes(tables)
        rows.append(row)
    signatures = sorted({name for row in rows for name in row["means"]})
    page = render("index.html", rows=rows, signatures=signatures, versions=software_versions())
    Path(html).write_text(page, encoding="utf-8")


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ads=snakemake.input.h5ads,
            by_groups=snakemake.input.by_groups,
            comparisons=list(
                zip(
                    snakemake.input.de_summaries,
                    snakemake.input.de_results,
                    snakemake.input.composition,
                    snakemake.input.communication,
                    strict=True,
                )
            ),
            registry=snakemake.params.registry,
            html=snakemake.output.html,
        )
