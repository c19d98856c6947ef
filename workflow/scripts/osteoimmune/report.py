"""Self-contained HTML reports (jinja2, autoescaped) with figures embedded as PNG."""

from __future__ import annotations

import base64
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import jinja2
import pandas as pd
import yaml

from osteoimmune import figures

TEMPLATES = Path(__file__).parent / "templates"
PACKAGES = ("osteoimmune", "scanpy", "anndata", "numpy", "scipy", "pandas", "leidenalg",
            "harmonypy", "pooch", "rdata", "snakemake")


@dataclass
class Figure:
    """A figure in a report: its caption, file name and PNG bytes."""

    caption: str
    filename: str
    png: bytes

    @property
    def data_uri(self) -> str:
        """The PNG as a data URI, so the report opens offline as one file."""
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def render(template: str, **context) -> str:
    """Render a template of this package with HTML autoescaping."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template(template).render(**context)


def software_versions() -> dict[str, str]:
    """Installed versions of the packages the results depend on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def table_html(df: pd.DataFrame, *, index: bool = True, float_format: str = "{:.3g}") -> str:
    """A DataFrame as an HTML table (pandas escapes cell text)."""
    return df.to_html(
        index=index, escape=True, border=0, classes="table", na_rep="",
        float_format=float_format.format,
    )


def dataset_figures(
    adata: ad.AnnData,
    *,
    fig_dir: Path,
    by_cluster: pd.DataFrame,
    stability: pd.DataFrame,
    qc_cells: pd.DataFrame,
    qc_thresholds: pd.DataFrame,
    composition: pd.DataFrame,
    confusion: pd.DataFrame,
) -> dict:
    """Make every figure of a dataset report into ``fig_dir``; returns section -> [Figure]."""
    fig_dir.mkdir(parents=True, exist_ok=True)

    def make(name: str, caption: str, fig) -> Figure:
        return Figure(caption, f"{name}.png", figures.save(fig, fig_dir / f"{name}.png"))

    out = {"qc": [
        make("qc_thresholds", "QC metrics of every cell before QC (grey) and of the cells kept "
             "(blue), per sample; dashed: the sample's thresholds, dotted: thresholds within "
             "its coarse clusters (lineage-aware mode)",
             figures.qc_threshold_plot(qc_cells, qc_thresholds)),
        make("qc_metrics", "QC metrics of the cells kept, per sample",
             figures.qc_histograms(adata.obs)),
    ]}
    chosen = adata.uns["osteoimmune"]["clustering"]["resolution"]
    out["clusters"] = [
        make("cluster_stability", "Clustering stability per Leiden resolution",
             figures.stability_plot(stability, chosen=chosen)),
        make("umap_leiden", "UMAP by Leiden cluster",
             figures.umap_categorical(adata, "leiden", title=f"Leiden, resolution {chosen:g}")),
    ]
    for key in ("author_cell_type", "sample", "condition"):
        if key in adata.obs and (key == "author_cell_type" or adata.obs[key].nunique() > 1):
            out["clusters"].append(make(f"umap_{key}", f"UMAP by {key}",
                                        figures.umap_categorical(adata, key, title=key)))
    out["annotation"] = [
        make(f"umap_{key}", f"UMAP by {key} (marker panels; author labels not used)",
             figures.umap_categorical(adata, key, title=key))
        for key in ("cell_lineage", "cell_type") if key in adata.obs
    ]
    if not composition.empty:
        out["annotation"].append(make("composition", "Cell types per sample (fractions)",
                                      figures.composition_bars(composition)))
    if not confusion.empty:
        out["annotation"].append(make(
            "annotation_confusion", "Author labels (rows) vs our cell types (columns)",
            figures.confusion_heatmap(confusion)))
    score_cols = [c for c in adata.obs.columns if c.startswith("score_")]
    out["scores"] = [
        make(f"umap_{col}", f"UMAP by {col}", figures.umap_continuous(adata, col, title=col))
        for col in score_cols
    ]
    sets = [c.removeprefix("score_") for c in score_cols]
    if sets and not by_cluster.empty:
        out["scores"].insert(0, make(
            "scores_by_cluster", "Mean score per Leiden cluster (z-scored per set)",
            figures.score_heatmap(by_cluster[sets], title="Signature scores by cluster"),
        ))
    return out


def dataset_report(
    adata: ad.AnnData,
    *,
    entry: dict,
    manifest: dict,
    tables: dict[str, pd.DataFrame],
    config: dict,
    fig_dir: Path,
) -> str:
    """Render the HTML report of one dataset and write its figures to ``fig_dir``.

    ``tables`` holds the rule outputs: qc, lineage, qc_cells, qc_thresholds, stability,
    markers, agreement, confusion, composition, panel_coverage, coverage, by_group.
    """
    meta = adata.uns["osteoimmune"]
    by_group = tables["by_group"]
    by_cluster = by_group[by_group["grouping"] == "leiden"].drop(columns="grouping")
    by_cluster = by_cluster.set_index("group")
    figs = dataset_figures(
        adata, fig_dir=fig_dir, by_cluster=by_cluster, stability=tables["stability"],
        qc_cells=tables["qc_cells"], qc_thresholds=tables["qc_thresholds"],
        composition=tables["composition"], confusion=tables["confusion"],
    )
    return render(
        "report.html",
        dataset=meta["dataset"], entry=entry, meta=meta, manifest=manifest,
        n_cells=adata.n_obs, n_genes=adata.n_vars,
        n_clusters=adata.obs["leiden"].nunique(), figures=figs,
        qc_table=table_html(tables["qc"]),
        lineage_table=table_html(tables["lineage"], index=False),
        stability_table=table_html(tables["stability"], index=False),
        markers_table=table_html(top_markers(tables["markers"]), index=False),
        coverage_table=table_html(tables["coverage"]),
        agreement_rows=len(tables["agreement"]),
        agreement_table=table_html(tables["agreement"], index=False),
        confusion_table=table_html(tables["confusion"]),
        composition_table=table_html(composition_wide(tables["composition"])),
        panel_table=table_html(tables["panel_coverage"][PANEL_COLUMNS]),
        score_tables={
            key: table_html(group.drop(columns="grouping").set_index("group"))
            for key, group in by_group.groupby("grouping", sort=False)
        },
        versions=software_versions(),
        config_yaml=yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False),
    )


PANEL_COLUMNS = ["lineage", "cell_type", "n_genes", "n_present", "used", "complete", "reason",
                 "sources"]


def composition_wide(composition: pd.DataFrame) -> pd.DataFrame:
    """Cells per cell type (rows, with lineage) and sample (columns)."""
    if composition.empty:
        return composition
    return composition.pivot_table(index=["cell_lineage", "cell_type"], columns="sample",
                                   values="n_cells", aggfunc="sum", fill_value=0)


def top_markers(markers: pd.DataFrame, *, n: int = 8) -> pd.DataFrame:
    """The first ``n`` marker genes of each cluster, one row per cluster."""
    top = markers[markers["rank"] <= n]  # ranks start at 1
    return top.groupby("cluster", sort=False)["gene"].agg(", ".join).reset_index(
        name=f"top {n} markers (Wilcoxon)")


def index_row(adata: ad.AnnData, *, entry: dict) -> dict:
    """Summary of one dataset for the index page."""
    meta = adata.uns["osteoimmune"]
    scores = [c for c in adata.obs.columns if c.startswith("score_")]
    return {
        "dataset": meta["dataset"], "title": entry["title"], "species": entry["species"],
        "value_type": meta["value_type"], "cells": adata.n_obs, "genes": adata.n_vars,
        "clusters": adata.obs["leiden"].nunique(), "scored_sets": len(scores),
        "author_labels": int(adata.obs["author_cell_type"].nunique())
        if "author_cell_type" in adata.obs else 0,
        "means": {c.removeprefix("score_"): float(adata.obs[c].mean()) for c in scores},
    }
