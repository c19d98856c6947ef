"""Snakemake rule report_dataset: the self-contained HTML report of one dataset."""

import json
from pathlib import Path

import anndata as ad
import pandas as pd

from osteoimmune.report import dataset_report
from osteoimmune.runlog import logged
from osteoimmune.samples import read_parts

# Inputs of rule report_dataset that are not tables; every other input is a TSV table, passed
# to the report under its input name (workflow/rules/report.smk lists them).
NOT_TABLES = ("h5ad", "manifests", "pseudobulk", "sources", "note")


def read_tsv(path, **kwargs):
    return pd.read_csv(path, sep="\t", **kwargs)


def read_tsv_or_empty(path, **kwargs):
    # a table with no columns is written as an empty line, which pandas cannot read back
    try:
        return read_tsv(path, **kwargs)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def read_manifests(paths):
    """The files of every fetch manifest of a dataset (its own, then its samples')."""
    return {"files": [row for path in paths for row in json.loads(Path(path).read_text())["files"]]}


def read_sources(path):
    """The annotation's call sources table, or None (runs whose annotation made none)."""
    return read_tsv(path, dtype={"flag": str, "marker_evidence": str}) if path else None


def read_tables(paths, *, text):
    """Each table of the report, read with the column types its content needs.

    ``text``: columns that hold labels (donors, conditions, groups) and stay text. The
    case-control tables (not listed in the readers below) may be empty.
    """
    readers = {
        "design": lambda p: read_tsv(p, dtype=text | {"sample": str}),
        "qc": lambda p: read_tsv(p, index_col=0),
        "lineage": read_tsv,
        "qc_cells": lambda p: read_tsv(p, index_col=0, dtype={"sample": str}),
        "qc_thresholds": lambda p: read_tsv(p, dtype={"sample": str}),
        "stability": read_tsv,
        "markers": lambda p: read_tsv(p, dtype={"cluster": str}),
        "agreement": read_tsv,
        "confusion": lambda p: read_tsv(p, index_col=0),
        "composition": lambda p: read_tsv(p, dtype={"sample": str}),
        "panel_coverage": lambda p: read_tsv(p, index_col=0),
        "coverage": lambda p: read_tsv(p, index_col=0),
        "by_group": lambda p: read_tsv(p, dtype={"group": str}),
        "method_agreement": lambda p: read_tsv(p, index_col=0),
        "states": read_tsv_or_empty,
        "genes": lambda p: read_tsv_or_empty(p, dtype={"cell_type": str}),
        "aggregates": lambda p: read_tsv_or_empty(p, dtype=text),
        "comparison": lambda p: read_tsv_or_empty(p, dtype=text),
        "prerank": lambda p: read_tsv_or_empty(p, dtype=text),
        "ora": lambda p: read_tsv_or_empty(p, dtype={"leiden": str}),
    }
    case_control = text | {"group": str, "sample": str}
    return {
        key: readers[key](path) if key in readers else read_tsv_or_empty(path, dtype=case_control)
        for key, path in paths.items()
    }


def main(
    *,
    h5ad,
    manifests,
    tables,
    note,
    pseudobulk,
    entry,
    settings,
    shown_config,
    html,
    fig_dir,
    sources=None,
):
    # the report draws from obs, obsm and uns: the matrices and the graph stay on disk
    adata = read_parts(h5ad, x=False)
    # group and condition labels stay text (e.g. Leiden "0", conditions "2", "4", "6")
    groups = (settings["compare_group_key"], settings["enrichment_group_key"])
    text = {key: str for key in ("donor", "condition", "condition_a", "condition_b", *groups)}
    page = dataset_report(
        adata,
        entry=entry,
        manifest=read_manifests(manifests),
        tables=read_tables(tables, text=text),
        fig_dir=Path(fig_dir),
        group_key=settings["compare_group_key"],
        enrichment_key=settings["enrichment_group_key"],
        composition_key=settings["composition_group_key"],
        communication_key=settings["communication_group_key"],
        min_donors=settings["min_donors"],
        pseudobulk_min_cells=settings["pseudobulk"]["min_cells"],
        pseudobulk_min_counts=settings["pseudobulk"]["min_counts"],
        pseudobulk_min_samples=settings["pseudobulk"]["min_samples"],
        pseudobulk_n_top=settings["pseudobulk"]["n_top"],
        shown_config=shown_config,
        sources=read_sources(sources),
        design_note=Path(note).read_text(encoding="utf-8").strip(),
        pseudobulk=ad.read_h5ad(pseudobulk),
    )
    Path(html).write_text(page, encoding="utf-8")


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            manifests=snakemake.input.manifests,
            pseudobulk=snakemake.input.pseudobulk,
            note=snakemake.input.note,
            tables={key: path for key, path in snakemake.input.items() if key not in NOT_TABLES},
            entry=snakemake.params.entry,
            settings=snakemake.params,
            shown_config=dict(snakemake.params.config),
            sources=snakemake.input.get("sources") or None,
            html=snakemake.output.html,
            fig_dir=snakemake.output.figures,
        )
