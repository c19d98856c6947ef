"""Snakemake rule annotate_cells: lineage and cell type per cell, agreement with the authors."""

import logging

import anndata as ad

from osteoimmune.agreement import agreement_tables, composition_table
from osteoimmune.annotate import annotate_cells
from osteoimmune.panels import build_panels
from osteoimmune.registry import load_registry
from osteoimmune.runlog import logged
from osteoimmune.signatures import load_library

log = logging.getLogger("osteoimmune")


def main(*, h5ad, registry, dataset, params, output, compression="gzip"):
    adata = ad.read_h5ad(h5ad)
    meta = adata.uns["osteoimmune"]
    panels = build_panels(load_library(), meta["species"], extra_panels=params.get("panels"))
    settings = {key: value for key, value in params.items() if key != "panels"}
    upper = meta["gene_symbol_case"] == "upper"
    entry = load_registry(registry)[dataset]
    sort = entry.get("progenitor_sort")
    if sort:  # the registry's progenitor_sort: clusters with no committed lineage are hspc
        log.info("progenitor sort: %s", sort["reason"])
    coverage, clusters = annotate_cells(
        adata, panels, case_insensitive=upper, progenitor_sort=bool(sort), **settings
    )
    if sort:
        adata.uns["annotation"]["progenitor_sort"] = sort["reason"]
    log.info("lineage per cluster:\n%s", clusters.drop(columns="cell_types").to_string())
    label_map = entry.get("author_label_map") or {}
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
            registry=snakemake.params.registry,
            dataset=snakemake.wildcards.dataset,
            params=snakemake.params.annotation,
            output=snakemake.output,
            compression=snakemake.params.compression,
        )
