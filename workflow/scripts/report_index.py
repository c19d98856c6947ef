"""Snakemake rule report_index: results/index.html linking every dataset's report."""

from pathlib import Path

import anndata as ad
import pandas as pd

from osteoimmune.registry import load_registry
from osteoimmune.report import index_row, key_signature_block, render, software_versions
from osteoimmune.runlog import logged


def main(*, h5ads, by_groups, registry, html):
    entries = load_registry(registry)
    rows = []
    for path, by_group in zip(h5ads, by_groups, strict=True):
        adata = ad.read_h5ad(path, backed="r")
        row = index_row(adata, entry=entries[adata.uns["osteoimmune"]["dataset"]])
        adata.file.close()
        row["key"] = key_signature_block(pd.read_csv(by_group, sep="\t", dtype={"group": str}))
        rows.append(row)
    signatures = sorted({name for row in rows for name in row["means"]})
    page = render("index.html", rows=rows, signatures=signatures, versions=software_versions())
    Path(html).write_text(page, encoding="utf-8")


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ads=snakemake.input.h5ads,
            by_groups=snakemake.input.by_groups,
            registry=snakemake.params.registry,
            html=snakemake.output.html,
        )
