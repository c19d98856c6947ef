"""Snakemake rule annotate_cells: lineage and cell type per cell, agreement with the authors."""

import logging

import anndata as ad

from osteoimmune.agreement import agreement_tables, composition_table
from osteoimmune.annotate import annotate_cells
from osteoimmune.panels import build_panels
from osteoimmune.runlog import logged
from osteoimmune.signatures import load_library

log = logging.getLogger("osteoimmune")


def main(*, h5ad, label_map, progenitor_sort, params, output, compression="gzip"):
    adata = ad.read_h5ad(h5ad)
    meta = adata.uns["osteoimmune"]
    panels = build_panels(load_library(), meta["species"], extra_panels=params.get("panels"))
    settings = {key: value for key, value in params.items() if key != "panels"}
    upper = meta["gene_symbol_case"] == "upper"
    # The registry's progenitor_sort: clusters with no committed lineage are hspc.
    sorted_progenitors = bool(progenitor_sort)
    coverage, clusters = annotate_cells(
        adata, panels, case_insensitive=upper, progenitor_sort=sorted_progenitors, **settings
    )
    if sorted_progenitors:
        log.info("progenitor sort: %s", progenitor_sort["reason"])
        adata.uns["annotation"]["progenitor_sort"] = progenitor_sort["reason"]
    log.info("lineage per cluster:\n%s", clusters.drop(columns="cell_types").to_string())
    agreement, confusion, unmapped = agreement_tables(adata, label_map)
    if unmapped:
        log.warning("author labels missing from the registry's author_label_map: %s", unmapped)
    log.info("cells per lineage: %s", adata.obs["cell_lineage"].value_counts().to_dict())
    coverage.to_csv(output.coverage, sep="\t")
    agreement.to_csv(output.agreement, sep="\t", index=False)
    confusion.to_csv(output.confusion, sep="\t")
    composition_table(adata.obs).to_csv(output.composition, sep="\t", index=False)
    adata.write_h5ad(output.h5ad, compression=compression)


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            label_map=snakemake.params.label_map,
            progenitor_sort=snakemake.params.progenitor_sort,
            params=snakemake.params.annotation,
            output=snakemake.output,
            compression=snakemake.params.compression,
        )
