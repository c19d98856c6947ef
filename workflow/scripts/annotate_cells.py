"""Snakemake rule annotate_cells: lineage and cell type per cell, agreement with the authors."""

import logging

import anndata as ad
import pandas as pd

from osteoimmune.agreement import AUTHOR_KEY, agreement_tables, composition_table
from osteoimmune.annotate import annotate_cells, marker_evidence, tissue_flags
from osteoimmune.fetch import read_manifest
from osteoimmune.panels import CELL_TYPES, build_panels
from osteoimmune.reference import (
    leave_one_donor_out,
    load_model,
    log_cp10k,
    predict,
    reconcile,
    sources_table,
)
from osteoimmune.runlog import logged
from osteoimmune.samples import annotations, write_h5ad
from osteoimmune.signatures import load_library

log = logging.getLogger("osteoimmune")


def reference_calls(adata, *, model_path, reference, min_shared_genes, min_cells):
    """The reference's labels of every cell and a note, or (None, note) without a reference."""
    if not reference:
        return None, "no reference for this species (annotation.reference); marker panels only"
    expression = log_cp10k(adata)
    if reference["self"]:
        return leave_one_donor_out(
            expression,
            adata.obs[AUTHOR_KEY],
            adata.obs["donor"],
            label_map=reference["label_map"],
            min_cells=min_cells,
            min_shared_genes=min_shared_genes,
        )
    if reference.get("model_file"):  # a registry model: model_path is its fetch manifest
        model_path = read_manifest(model_path)[reference["model_file"]]
    model = load_model(model_path, reference=reference["id"])
    return predict(
        expression, model, label_map=reference["label_map"], min_shared_genes=min_shared_genes
    )


def final_types(adata, panels, *, calls, min_confidence):
    """Replace the marker calls in obs by the reconciled calls (markers kept as marker_*)."""
    obs = adata.obs
    lineages = list(obs["cell_lineage"].cat.categories)
    obs["marker_cell_type"] = obs["cell_type"].astype(str)
    obs["marker_lineage"] = obs["cell_lineage"].astype(str)
    if calls is None:
        calls = pd.DataFrame(index=obs.index, columns=["reference_cell_type", "reference_lineage"])
        calls["reference_confidence"] = float("nan")
    final = reconcile(
        obs,
        calls,
        reference_types=calls.attrs.get("known_types", set()),
        reference_lineages=calls.attrs.get("known_lineages", set()),
        parents={p.cell_type: p.parent for p in panels.values() if p.parent},
        min_confidence=min_confidence,
    )
    for column in calls.columns:
        values = calls[column]
        obs[column] = (
            values.astype(float) if column.endswith("confidence") else values.astype("category")
        )
    for column in final.columns:
        obs[column] = final[column]
    categories = dict.fromkeys([*lineages, *sorted(set(final["cell_lineage"]))])
    obs["cell_lineage"] = pd.Categorical(final["cell_lineage"], categories=list(categories))
    types = [*CELL_TYPES, *sorted(set(final["cell_type"]) - set(CELL_TYPES))]
    obs["cell_type"] = pd.Categorical(final["cell_type"], categories=types)


def main(
    *, h5ad, model, label_map, progenitor_sort, reference, tissue, params, output, compression
):
    adata = ad.read_h5ad(h5ad)
    meta = adata.uns["osteoimmune"]
    panels = build_panels(load_library(), meta["species"], extra_panels=params["panels"])
    upper = meta["gene_symbol_case"] == "upper"
    # The registry's progenitor_sort: clusters with no committed lineage are hspc.
    sorted_progenitors = bool(progenitor_sort)
    coverage, clusters = annotate_cells(
        adata,
        panels,
        case_insensitive=upper,
        progenitor_sort=sorted_progenitors,
        min_genes=params["min_genes"],
        min_coverage=params["min_coverage"],
        min_lineage_genes=params["min_lineage_genes"],
        shrink=params["shrink"],
        min_score=params["min_score"],
        min_margin=params["min_margin"],
        background_min_score=params["background_min_score"],
        background_min_margin=params["background_min_margin"],
        smoothing_steps=params["smoothing_steps"],
        protein_markers=params["protein_markers"],
    )
    if sorted_progenitors:
        log.info("progenitor sort: %s", progenitor_sort["reason"])
        adata.uns["annotation"]["progenitor_sort"] = progenitor_sort["reason"]
    log.info("lineage per cluster:\n%s", clusters.drop(columns="cell_types").to_string())
    calls, note = reference_calls(
        adata,
        model_path=model,
        reference=reference,
        min_shared_genes=params["reference_min_shared_genes"],
        min_cells=params["reference_min_cells"],
    )
    log.info("reference: %s", note)
    final_types(
        adata,
        panels,
        calls=calls,
        min_confidence=params["reference_min_confidence"],
    )
    adata.uns["annotation"]["reference"] = {"id": (reference or {}).get("id", ""), "note": note}
    log.info("cells by source: %s", adata.obs["cell_type_source"].value_counts().to_dict())
    evidence, _ = marker_evidence(adata, panels, adata.obs["cell_type"], case_insensitive=upper)
    flags = tissue_flags(adata.obs["cell_type"], tissue=tissue)
    for flag in flags.values():
        log.warning("%s", flag)
    sources = sources_table(adata.obs, evidence=evidence["marker_evidence"].to_dict(), flags=flags)
    agreement, confusion, unmapped = agreement_tables(adata, label_map)
    if unmapped:
        log.warning("author labels missing from the registry's author_label_map: %s", unmapped)
    log.info("cells per lineage: %s", adata.obs["cell_lineage"].value_counts().to_dict())
    coverage.to_csv(output.coverage, sep="\t")
    sources.to_csv(output.sources, sep="\t", index=False)
    agreement.to_csv(output.agreement, sep="\t", index=False)
    confusion.to_csv(output.confusion, sep="\t")
    composition_table(adata.obs).to_csv(output.composition, sep="\t", index=False)
    # the annotations alone: the later jobs read the matrices from the clustered file
    write_h5ad(annotations(adata), output.h5ad, compression=compression)


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            model=snakemake.input.get("model") or None,
            label_map=snakemake.params.label_map,
            progenitor_sort=snakemake.params.progenitor_sort,
            reference=snakemake.params.reference,
            tissue=snakemake.params.tissue,
            params=snakemake.params.annotation,
            output=snakemake.output,
            compression=snakemake.params.compression,
        )
