"""Snakemake rule report_dataset: the self-contained HTML report of one dataset."""

import json
from pathlib import Path

import anndata as ad
import pandas as pd

from osteoimmune.report import dataset_report
from osteoimmune.runlog import logged

TABLES = (
    "design",
    "qc",
    "lineage",
    "qc_cells",
    "qc_thresholds",
    "stability",
    "markers",
    "agreement",
    "confusion",
    "composition",
    "panel_coverage",
    "coverage",
    "method_agreement",
    "by_group",
    "states",
    "genes",
    "aggregates",
    "comparison",
    "note",
    "prerank",
    "ora",
    "de_results",
    "de_summary",
    "de_genes",
    "de_enrichment",
    "composition_props",
    "composition_test",
    "communication",
    "communication_axes",
    "communication_comparison",
)


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


def main(*, h5ad, manifests, tables, pseudobulk, entry, config, html, fig_dir, sources=None):
    adata = ad.read_h5ad(h5ad)
    # group and condition labels stay text (e.g. Leiden "0", conditions "2", "4", "6")
    groups = (config["compare"]["group_key"], config["enrichment"]["group_key"])
    text = {key: str for key in ("donor", "condition", "condition_a", "condition_b", *groups)}
    page = dataset_report(
        adata,
        entry=entry,
        manifest=read_manifests(manifests),
        tables={
            "design": read_tsv(tables["design"], dtype=text | {"sample": str}),
            "qc": read_tsv(tables["qc"], index_col=0),
            "lineage": read_tsv(tables["lineage"]),
            "qc_cells": read_tsv(tables["qc_cells"], index_col=0, dtype={"sample": str}),
            "qc_thresholds": read_tsv(tables["qc_thresholds"], dtype={"sample": str}),
            "stability": read_tsv(tables["stability"]),
            "markers": read_tsv(tables["markers"], dtype={"cluster": str}),
            "agreement": read_tsv(tables["agreement"]),
            "confusion": read_tsv(tables["confusion"], index_col=0),
            "composition": read_tsv(tables["composition"], dtype={"sample": str}),
            "panel_coverage": read_tsv(tables["panel_coverage"], index_col=0),
            "coverage": read_tsv(tables["coverage"], index_col=0),
            "by_group": read_tsv(tables["by_group"], dtype={"group": str}),
            "method_agreement": read_tsv(tables["method_agreement"], index_col=0),
            "states": read_tsv_or_empty(tables["states"]),
            "genes": read_tsv_or_empty(tables["genes"], dtype={"cell_type": str}),
            "aggregates": read_tsv_or_empty(tables["aggregates"], dtype=text),
            "comparison": read_tsv_or_empty(tables["comparison"], dtype=text),
            "prerank": read_tsv_or_empty(tables["prerank"], dtype=text),
            "ora": read_tsv_or_empty(tables["ora"], dtype={"leiden": str}),
            **{
                key: read_tsv_or_empty(tables[key], dtype=text | {"group": str, "sample": str})
                for key in TABLES[TABLES.index("de_results") :]
            },
        },
        config=config,
        fig_dir=Path(fig_dir),
        sources=read_sources(sources),
        design_note=Path(tables["note"]).read_text(encoding="utf-8").strip(),
        pseudobulk=ad.read_h5ad(pseudobulk),
    )
    Path(html).write_text(page, encoding="utf-8")


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            manifests=snakemake.input.manifests,
            pseudobulk=snakemake.input.pseudobulk,
            tables={key: snakemake.input[key] for key in TABLES},
            entry=snakemake.params.entry,
            config=dict(snakemake.params.config),
            sources=snakemake.input.get("sources") or None,
            html=snakemake.output.html,
            fig_dir=snakemake.output.figures,
        )
