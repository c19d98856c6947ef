"""Self-contained HTML reports (jinja2, autoescaped) with figures embedded as PNG.

Every figure is also written as PNG and SVG next to the report (``figures/``).
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import jinja2
import pandas as pd
import yaml

from osteoimmune import figures, report_conditions
from osteoimmune.annotate import CLUSTER_COLUMNS
from osteoimmune.communication import RESOURCE_NOTES, RESOURCES, receivers
from osteoimmune.compare import COMPARISON_COLUMNS, comparison_plot_data
from osteoimmune.signatures import load_library
from osteoimmune.values import count_figures_note

TEMPLATES = Path(__file__).parent / "templates"
PACKAGES = (
    "osteoimmune",
    "scanpy",
    "anndata",
    "numpy",
    "scipy",
    "pandas",
    "leidenalg",
    "harmonypy",
    "pooch",
    "rdata",
    "snakemake",
)


@dataclass
class Figure:
    """A figure in a report: its caption, PNG file name (an SVG beside it) and PNG bytes."""

    caption: str
    filename: str
    png: bytes

    @property
    def svg_filename(self) -> str:
        """The SVG copy of the figure."""
        return str(Path(self.filename).with_suffix(".svg"))

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


def table_html(
    df: pd.DataFrame,
    *,
    index: bool = True,
    float_format: str = "{:.3g}",
    empty: str = "Nothing to show: the table has no rows.",
) -> str:
    """A DataFrame as an HTML table (pandas escapes cell text).

    A table without rows or columns is never drawn as a bare header: it becomes the sentence
    ``empty`` (saying why it is empty), escaped, in a note.
    """
    if df.empty:
        return f'<p class="note">{html.escape(empty)}</p>'
    return df.to_html(
        index=index,
        escape=True,
        border=0,
        classes="table",
        na_rep="",
        float_format=float_format.format,
    )


def figure_maker(fig_dir: Path) -> Callable:
    """``make(name, caption, fig)``: save a figure as PNG and SVG in ``fig_dir`` for the report."""
    fig_dir.mkdir(parents=True, exist_ok=True)

    def make(name: str, caption: str, fig) -> Figure:
        return Figure(caption, f"{name}.png", figures.save(fig, fig_dir / f"{name}.png"))

    return make


def dataset_figures(
    adata: ad.AnnData,
    *,
    fig_dir: Path,
    stability: pd.DataFrame,
    qc_cells: pd.DataFrame,
    qc_thresholds: pd.DataFrame,
    composition: pd.DataFrame,
    confusion: pd.DataFrame,
    by_group: pd.DataFrame,
    genes: pd.DataFrame,
    polarization: dict,
    aggregates: pd.DataFrame | None = None,
    comparison: pd.DataFrame | None = None,
    prerank: pd.DataFrame | None = None,
    group_key: str = "cell_type",
    enrichment_key: str = "cell_type",
) -> dict:
    """Make every figure of a dataset report into ``fig_dir``; returns section -> [Figure]."""
    make = figure_maker(fig_dir)
    counts = adata.uns["osteoimmune"]["value_type"] == "counts"  # QC figures of counts only
    out = {
        "qc": [
            make(
                "qc_thresholds",
                "QC metrics of every cell before QC (grey) and of the cells kept "
                "(blue), per sample; dashed: the sample's thresholds, dotted: thresholds within "
                "its coarse clusters (lineage-aware mode)",
                figures.qc_threshold_plot(qc_cells, qc_thresholds),
            ),
            make(
                "qc_metrics",
                "QC metrics of the cells kept, per sample",
                figures.qc_histograms(adata.obs),
            ),
        ]
        if counts
        else []
    }
    chosen = adata.uns["osteoimmune"]["clustering"]["resolution"]
    grid = not stability.empty  # no grid: too few cells, one cluster (stability.py)
    out["clusters"] = []
    if grid:
        out["clusters"].append(
            make(
                "cluster_stability",
                "Clustering stability per Leiden resolution",
                figures.stability_plot(stability, chosen=chosen),
            )
        )
    out["clusters"] += [
        make(
            "umap_leiden",
            "UMAP by Leiden cluster",
            figures.umap_categorical(
                adata,
                "leiden",
                title=f"Leiden, resolution {chosen:g}" if grid else "one cluster (too few cells)",
            ),
        ),
    ]
    for key in ("author_cell_type", "sample", "condition"):
        if key in adata.obs and (key == "author_cell_type" or adata.obs[key].nunique() > 1):
            out["clusters"].append(
                make(
                    f"umap_{key}", f"UMAP by {key}", figures.umap_categorical(adata, key, title=key)
                )
            )
    out["annotation"] = [
        make(
            f"umap_{key}",
            f"UMAP by {key} (marker panels; author labels not used)",
            figures.umap_categorical(adata, key, title=key),
        )
        for key in ("cell_lineage", "cell_type")
        if key in adata.obs
    ]
    if not composition.empty:
        out["annotation"].append(
            make(
                "composition",
                "Cell types per sample (fractions)",
                figures.composition_bars(composition),
            )
        )
    if not confusion.empty:
        out["annotation"].append(
            make(
                "annotation_confusion",
                "Author labels (rows) vs our cell types (columns)",
                figures.confusion_heatmap(confusion),
            )
        )
    out["scores"] = signature_figures(
        adata, make=make, by_group=by_group, genes=genes, polarization=polarization
    )
    out["comparison"] = []
    if comparison is not None and not comparison.empty:
        out["comparison"].append(
            make(
                "donor_comparison",
                "Donor values per condition of the largest differences (one "
                "dot per donor, bar = mean); tests across donors only",
                figures.donor_comparison_plot(
                    comparison_plot_data(aggregates, group_key=group_key),
                    comparison,
                    group_key=group_key,
                ),
            )
        )
    out["enrichment"] = []
    if prerank is not None and not prerank.empty:
        out["enrichment"].append(
            make(
                "enrichment_top_terms",
                "Prerank GSEA per cell type against the signature "
                "library: normalised enrichment score of the top terms",
                figures.top_terms_plot(prerank, group_col=enrichment_key),
            )
        )
    return out


KEY_SETS = (
    "macrophage_M1_classical_core",
    "macrophage_M2a_alternative_core",
    "trained_immunity_core6_zhang2022",
    "osteoclast_differentiation_core",
    "osteoblast_lineage_core",
    "bm_stromal_LEPR_CAR_niche",
)
PROGRAM_CATEGORIES = ("bone_cells", "neutrophil", "nk_cell", "dendritic_cell", "complement")


def _mean_z(by_group: pd.DataFrame, grouping: str) -> pd.DataFrame:
    rows = by_group[(by_group["grouping"] == grouping) & (by_group["value"] == "z")]
    return (
        rows.drop(columns=["grouping", "value", "n_cells"])
        .set_index("group")
        .dropna(axis=1, how="all")
    )


def signature_figures(adata, *, make, by_group, genes, polarization) -> list:
    """Figures of the signatures section: heatmaps, key-score UMAPs, states, genes."""
    library = load_library()
    by_type, by_lineage = _mean_z(by_group, "cell_type"), _mean_z(by_group, "cell_lineage")
    category = {
        name: library.sets[name]["category"] for name in by_type.columns if name in library.sets
    }
    out = []
    if not by_type.empty:
        out.append(
            make(
                "signatures_by_cell_type",
                "Mean calibrated z per cell type and set",
                figures.score_heatmap(by_type, title="Cell type x signature (mean z)"),
            )
        )
    trained = [n for n, c in category.items() if c.startswith("trained_immunity")]
    if trained and not by_lineage.empty:
        out.append(
            make(
                "trained_immunity_by_lineage",
                "Trained-immunity sets by lineage "
                "(mean z); in unstimulated cells: inflammatory priming, not training",
                figures.score_heatmap(by_lineage[trained], title="Trained immunity"),
            )
        )
    programs = [n for n, c in category.items() if c in PROGRAM_CATEGORIES]
    if programs and not by_type.empty:
        out.append(
            make(
                "osteoimmune_programs",
                "Osteoimmune programs by cell type (mean z)",
                figures.score_heatmap(by_type[programs], title="Programs"),
            )
        )
    if "polarization_state" in adata.obs and adata.obs["polarization_state"].notna().any():
        out.append(
            make(
                "m1_m2_state_map",
                "M1/M2 state map of the gated cells",
                figures.state_map(adata.obs, m1=polarization["m1"], m2=polarization["m2"]),
            )
        )
    for name in (n for n in KEY_SETS if f"score_{n}" in adata.obs):
        out.append(
            make(
                f"umap_score_{name}",
                f"UMAP by score_{name}",
                figures.umap_continuous(adata, f"score_{name}", title=name),
            )
        )
    if not genes.empty and genes["present"].astype(bool).any():
        out.append(
            make(
                "rankl_opg_cytokines",
                "RANKL/OPG axis and cytokines per cell type: dot size = fraction of the cells "
                "expressing the gene, colour = mean log expression; RANKL and OPG always shown "
                "(grey crosses: not in the data)",
                figures.dot_plot(
                    genes, group_col="cell_type", title="RANKL/OPG and cytokines",
                    always=AXIS_GENES, aliases=GENE_ALIASES,
                ),
            )
        )  # fmt: skip
    return out


# Protein names of the axis' genes (upper-case symbols; mouse symbols match upper-cased).
GENE_ALIASES = {"TNFSF11": "RANKL", "TNFRSF11B": "OPG", "TNFRSF11A": "RANK"}
AXIS_GENES = ("TNFSF11", "TNFRSF11B")


def rankl_opg_note(genes: pd.DataFrame) -> str:
    """One sentence on RANKL and OPG in a dataset: where they are, or that they are absent.

    ``genes`` is ``tables/genes_by_cell_type.tsv`` (gene, cell_type, present, ...).
    """
    if genes.empty:
        return (
            "RANKL (TNFSF11) and OPG (TNFRSF11B): no cell type has enough cells "
            "(signatures.min_cells_per_type) to summarise them per cell type."
        )
    upper = genes["gene"].str.upper()
    present = genes["present"].astype(bool).groupby(upper).any()
    spelled = dict(zip(upper, genes["gene"], strict=True))  # Tnfsf11 in mouse data
    named = {g: f"{GENE_ALIASES[g]} ({spelled.get(g, g)})" for g in AXIS_GENES}
    missing = [named[g] for g in AXIS_GENES if not present.get(g, False)]
    found = [named[g] for g in AXIS_GENES if present.get(g, False)]
    if not missing:
        return f"{' and '.join(found)} are both in the data: see the dot plot."
    line = f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} absent from "
    line += "this dataset's genes (not measured, or filtered before the data were shared), so "
    line += "the RANKL/OPG balance cannot be read from it"
    return line + (f"; {found[0]} is shown in the dot plot." if found else ".")


def dataset_report(
    adata: ad.AnnData,
    *,
    entry: dict,
    manifest: dict,
    tables: dict[str, pd.DataFrame],
    fig_dir: Path,
    group_key: str,
    enrichment_key: str,
    composition_key: str,
    communication_key: str,
    min_donors: int,
    pseudobulk_min_cells: int,
    pseudobulk_min_counts: int,
    pseudobulk_min_samples: int,
    pseudobulk_n_top: int,
    shown_config: dict,
    design_note: str = "",
    pseudobulk: ad.AnnData | None = None,
    sources: pd.DataFrame | None = None,
) -> str:
    """Render the HTML report of one dataset and write its figures to ``fig_dir``.

    ``tables`` holds the rule's tables, keyed by the input names of rule report_dataset
    (workflow/rules/report.smk), read into DataFrames; ``design_note`` the sentence on
    conditions and donors; ``pseudobulk`` the summed counts per sample and cell type;
    ``sources`` the annotation's call sources (annotation_sources.tsv; None for runs whose
    annotation made none). Empty tables render as a sentence saying why.

    The other keywords are the settings of the stages the report shows (config keys
    ``compare.group_key``, ``enrichment.group_key``, ``composition.group_key``,
    ``communication.group_key``, ``compare.min_donors``, ``pseudobulk.min_cells``,
    ``min_counts``, ``min_samples`` and ``n_top``; defaults in the config schema).
    ``shown_config`` is the run's config, printed at the end of the report and not read.
    """
    meta = adata.uns["osteoimmune"]
    by_group = tables["by_group"]
    comparison, prerank, ora = tables["comparison"], tables["prerank"], tables["ora"]
    figs = dataset_figures(
        adata,
        fig_dir=fig_dir,
        stability=tables["stability"],
        qc_cells=tables["qc_cells"],
        qc_thresholds=tables["qc_thresholds"],
        composition=tables["composition"],
        confusion=tables["confusion"],
        by_group=by_group,
        genes=tables["genes"],
        polarization=meta.get("polarization", {}),
        aggregates=tables["aggregates"],
        comparison=comparison,
        prerank=prerank,
        group_key=group_key,
        enrichment_key=enrichment_key,
    )
    figs |= case_control_figures(
        tables, fig_dir=fig_dir, pseudobulk=pseudobulk, n_top=pseudobulk_n_top,
        composition_key=composition_key, reference=entry.get("reference_condition"),
    )  # fmt: skip
    return render(
        "report.html",
        dataset=meta["dataset"],
        **case_control_context(tables),
        **cell_type_calls(sources),
        calls_reference=adata.uns.get("annotation", {}).get("reference", {}),
        rankl_opg=rankl_opg_note(tables["genes"]),
        pb={
            "min_cells": pseudobulk_min_cells,
            "min_counts": pseudobulk_min_counts,
            "min_samples": pseudobulk_min_samples,
        },
        communication_resources="; ".join(
            RESOURCE_NOTES[name] for name in RESOURCES[meta["species"]]
        ),
        bone_receivers=", ".join(receivers(adata, groupby=communication_key)),
        entry=entry,
        meta=meta,
        manifest=manifest,
        file_samples=any(f.get("sample") for f in manifest["files"]),
        n_cells=adata.n_obs,
        n_genes=adata.n_vars,
        n_clusters=adata.obs["leiden"].nunique(),
        figures=figs,
        qc_figures_note=count_figures_note(meta["value_type"]),
        design=design_summary(tables["design"], covariates=list(meta.get("covariates", []))),
        design_table=table_html(
            tables["design"], index=False, empty="No sample was registered or read."
        ),
        qc_table=table_html(tables["qc"]),
        lineage_table=table_html(
            tables["lineage"],
            index=False,
            empty="No coarse lineage groups: QC thresholds were computed per sample only.",
        ),
        stability_table=table_html(tables["stability"], index=False),
        markers_table=table_html(top_markers(tables["markers"]), index=False),
        markers_note=markers_note(adata.uns),
        coverage_table=table_html(
            tables["coverage"], empty="No signature set applies to this species."
        ),
        agreement_rows=len(tables["agreement"]),
        agreement_table=table_html(tables["agreement"], index=False),
        confusion_table=table_html(tables["confusion"], empty="No author label to compare with."),
        composition_table=table_html(
            composition_wide(tables["composition"]), empty="No cell was given a cell type."
        ),
        cluster_lineage_table=table_html(
            cluster_lineages(adata),
            index=False,
            empty="The annotation recorded no lineage per cluster (older run).",
        ),
        progenitor_sort=adata.uns.get("annotation", {}).get("progenitor_sort", ""),
        panel_table=table_html(
            tables["panel_coverage"].reindex(
                columns=[c for c in PANEL_COLUMNS if c in tables["panel_coverage"]]
            ),
            empty="No marker panel applies to this dataset's species.",
        ),
        method_table=table_html(
            tables["method_agreement"],
            empty="No set was scored, so no method agreement to show.",
        ),
        states_table=table_html(
            tables["states"],
            index=False,
            empty="No polarization states: no M1 and M2 set were both scored, or no cell is "
            "in the gate (see the notes above).",
        ),
        polarization_gate=meta.get("polarization", {}).get(
            "gate", "annotated monocytes and macrophages"
        ),
        score_tables={
            key: table_html(group.drop(columns=["grouping", "value"]).set_index("group"))
            for key, group in by_group[by_group["value"] == "z"].groupby("grouping", sort=False)
        },
        design_note=design_note,
        missing_views=missing_score_views(adata, genes=tables["genes"]),
        min_donors=min_donors,
        comparison_rows=len(comparison),
        comparison_table=table_html(top_comparisons(comparison), index=False),
        proportions_table=table_html(
            donor_proportions(tables["aggregates"], group_key),
            empty="No donor has enough cells of a type for a proportion.",
        ),
        prerank_rows=len(prerank),
        prerank_table=table_html(top_terms(prerank, "nes"), index=False),
        ora_rows=len(ora),
        ora_table=table_html(top_terms(ora, "odds_ratio"), index=False),
        versions=software_versions(),
        config_yaml=yaml.safe_dump(json.loads(json.dumps(shown_config)), sort_keys=False),
    )


def case_control_figures(
    tables: dict, *, fig_dir: Path, pseudobulk: ad.AnnData | None, n_top: int,
    composition_key: str, reference: str | None,
) -> dict:  # fmt: skip
    """The figures of the pseudobulk DE, composition and communication sections."""
    make = figure_maker(fig_dir)
    return {
        "expression": report_conditions.expression_figures(
            make=make, results=tables["de_results"], summary=tables["de_summary"],
            genes=tables["de_genes"], pseudobulk=pseudobulk,
            n_top=n_top,
        ),
        "composition_test": report_conditions.composition_figures(
            make=make, proportions=tables["composition_props"],
            test=tables["composition_test"], reference=reference,
            group_key=composition_key,
        ),
        "communication": report_conditions.communication_figures(
            make=make, axes=tables["communication_axes"]
        ),
    }  # fmt: skip


def case_control_context(tables: dict) -> dict:
    """Template values of the case-control sections (trimmed tables; full ones in tables/)."""
    rc = report_conditions
    test, comparison = tables["composition_test"], tables["communication_comparison"]
    return {
        "de_summary_table": table_html(
            rc.summary_table(tables["de_summary"]),
            index=False,
            empty="No pseudobulk could be made: no cell type has enough cells and counts per "
            "sample, or the values are not raw counts.",
        ),
        "de_tested": len(rc.tested_pairs(tables["de_summary"])),
        "de_top_table": table_html(
            rc.top_genes(tables["de_results"]),
            index=False,
            empty="No gene got an adjusted p-value in any test.",
        ),
        "de_genes_table": table_html(
            rc.top_rows(tables["de_genes"], by=["gene", "group"], n=60),
            index=False,
            empty="None of these genes was tested: they are not in the data, or were filtered "
            "for too few counts in every tested cell type.",
        ),
        "de_enrichment_table": table_html(
            rc.top_rows(tables["de_enrichment"], by=["fdr", "p_value"]),
            index=False,
            empty="No signature set has enough genes among the tested genes for the prerank test.",
        ),
        "composition_test_rows": len(test),
        "composition_test_table": table_html(
            rc.top_rows(test, by=["fdr", "p_value"]),
            index=False,
            empty="One condition only: no composition test.",
        ),
        "interactions_table": table_html(
            rc.top_interactions_by_condition(tables["communication"]),
            index=False,
            empty="LIANA+ found no interaction: too few cell types with enough cells, or "
            "none of the resource's ligands and receptors in the data.",
        ),
        "axes_rows": len(tables["communication_axes"]),
        "axes_table": table_html(
            rc.top_rows(tables["communication_axes"], by=["magnitude_rank"]),
            index=False,
            empty="No osteoimmune axis between the cell types of this dataset.",
        ),
        "communication_table": table_html(
            rc.top_rows(comparison, by=["fdr", "p_value"]),
            index=False,
            empty="No axis could be compared across conditions: one condition only, or no "
            "axis found in the samples of two conditions.",
        ),
    }


SOURCE_HEADERS = {
    "cell_type": "cell type",
    "cell_lineage": "lineage",
    "n_cells": "cells",
    "source_both": "reference and markers agree",
    "source_reference": "reference only",
    "source_markers": "markers only",
    "median_confidence": "median confidence",
    "marker_evidence": "marker evidence (cells with the marker detected)",
    "contradicted": "contradicted by markers",
    "flag": "flag",
}


def cell_type_calls(sources: pd.DataFrame | None) -> dict:
    """Template values of the "Cell type calls" subsection, from annotation_sources.tsv.

    Returns ``calls_table`` (HTML: a table, or a sentence when there is nothing to show) and
    ``calls_flags`` (``(cell_type, flag)`` of every flagged type, for a warning box).
    """
    if sources is None:
        why = (
            "This run's annotation did not record where each call came from "
            "(tables/annotation_sources.tsv is written by newer versions of annotate_cells); "
            "rerun the dataset to get it."
        )
        return {"calls_table": table_html(pd.DataFrame(), empty=why), "calls_flags": []}
    flag = sources.get("flag", pd.Series("", index=sources.index)).fillna("").astype(str)
    flags = [(str(t), f) for t, f in zip(sources["cell_type"], flag.str.strip(), strict=True) if f]
    shown = sources.assign(flag=flag).reindex(columns=[c for c in SOURCE_HEADERS if c in sources])
    return {
        "calls_table": table_html(
            shown.rename(columns=SOURCE_HEADERS),
            index=False,
            empty="The annotation wrote no cell type for this dataset "
            "(annotation_sources.tsv has no rows).",
        ),
        "calls_flags": flags,
    }


def design_summary(design: pd.DataFrame, *, covariates: list[str]) -> str:
    """One line on a dataset's design: samples x donors x conditions, and its covariates."""
    if design.empty:
        return ""
    counts = [design[key].nunique() for key in ("sample", "donor", "condition")]
    line = "{} sample(s) x {} donor(s) x {} condition(s)".format(*counts)
    if covariates:
        kinds = [
            f"{c} ({'numeric' if pd.api.types.is_numeric_dtype(design[c]) else 'categorical'})"
            for c in covariates
            if c in design
        ]
        line += "; covariates: " + ", ".join(kinds)
    return line + "."


def cluster_lineages(adata: ad.AnnData) -> pd.DataFrame:
    """The annotation's lineage per cluster (``uns['annotation']['clusters']``), with its basis."""
    table = pd.DataFrame(dict(adata.uns.get("annotation", {}).get("clusters", {})))
    if table.empty:
        return table
    table["lineage_basis"] = table["lineage_basis"].replace("", "-")
    table = table.reindex(columns=[c for c in ("cluster", *CLUSTER_COLUMNS) if c in table])
    return table.sort_values(
        "cluster", key=lambda c: pd.to_numeric(c, errors="coerce"), kind="stable"
    )


PANEL_COLUMNS = [
    "lineage",
    "cell_type",
    "n_genes",
    "n_present",
    "aliases_used",
    "proteins",
    "used",
    "complete",
    "reason",
    "sources",
]


def composition_wide(composition: pd.DataFrame) -> pd.DataFrame:
    """Cells per cell type (rows, with lineage) and sample (columns)."""
    if composition.empty:
        return composition
    return composition.pivot_table(
        index=["cell_lineage", "cell_type"],
        columns="sample",
        values="n_cells",
        aggfunc="sum",
        fill_value=0,
    )


def markers_note(uns) -> str:
    """Say when large clusters' markers were tested on a subsample of their cells."""
    params = uns.get("rank_genes_groups", {}).get("params", {})
    cap = params.get("max_cells_per_group")
    if cap is None:
        return ""
    return (
        f"Clusters of more than {int(cap):,} cells were tested on {int(cap):,} of their cells, "
        f"drawn with seed {int(params.get('seed', 0))}, as the cluster and in the rest of the "
        "others (config cluster.marker_max_cells_per_cluster); their scores and p-values are "
        "those of the cells tested."
    )


def top_markers(markers: pd.DataFrame, *, n: int = 8) -> pd.DataFrame:
    """The first ``n`` marker genes of each cluster, one row per cluster."""
    top = markers[markers["rank"] <= n]  # ranks start at 1
    return (
        top.groupby("cluster", sort=False)["gene"]
        .agg(", ".join)
        .reset_index(name=f"top {n} markers (Wilcoxon)")
    )


def index_row(adata: ad.AnnData, *, entry: dict) -> dict:
    """Summary of one dataset for the index page."""
    meta = adata.uns["osteoimmune"]
    scores = [c for c in adata.obs.columns if c.startswith("score_")]
    return {
        "dataset": meta["dataset"],
        "title": entry["title"],
        "species": entry["species"],
        "value_type": meta["value_type"],
        "cells": adata.n_obs,
        "genes": adata.n_vars,
        "clusters": adata.obs["leiden"].nunique(),
        "scored_sets": len(scores),
        "author_labels": int(adata.obs["author_cell_type"].nunique())
        if "author_cell_type" in adata.obs
        else 0,
        "means": {c.removeprefix("score_"): float(adata.obs[c].mean()) for c in scores},
    }


COMPARISON_SHOWN = [
    "variable",
    "condition_a",
    "condition_b",
    "n_donors_a",
    "n_donors_b",
    "mean_a",
    "mean_b",
    "difference",
    "effect_size",
    "p_value",
    "fdr",
    "descriptive_only",
]


def top_comparisons(comparison: pd.DataFrame, *, n: int = 25) -> pd.DataFrame:
    """The ``n`` rows with the smallest FDR, then the largest absolute difference."""
    if comparison.empty:
        return comparison
    ranked = comparison.assign(
        _fdr=comparison["fdr"].fillna(2.0), _size=-comparison["difference"].abs().fillna(0)
    )
    ranked = ranked.sort_values(["_fdr", "_size"], kind="stable").head(n)
    group = [c for c in comparison.columns if c not in COMPARISON_COLUMNS][:1]
    shown = [c for c in COMPARISON_SHOWN if ranked[c].notna().any()]
    if ranked["condition_a"].isna().all():  # several conditions: means are in the note
        shown.append("note")
    return ranked[group + shown]


def donor_proportions(aggregates: pd.DataFrame, group_key: str) -> pd.DataFrame:
    """Cell-type proportions: groups (rows) x condition and donor (columns)."""
    if aggregates.empty:
        return aggregates
    return aggregates.pivot_table(
        index=group_key,
        columns=["condition", "donor"],
        values="proportion",
        aggfunc="first",
        observed=True,
    )


def top_terms(table: pd.DataFrame, effect: str, *, n: int = 25) -> pd.DataFrame:
    """The ``n`` most significant enrichment rows (smallest FDR, then p, then effect)."""
    if table.empty:
        return table
    ranked = table.assign(_abs=-table[effect].abs())
    ranked = ranked.sort_values(["fdr", "pval", "_abs"], kind="stable").head(n)
    return ranked.drop(columns=["_abs"])


KEY_LABELS = {
    "macrophage_M1_classical_core": "M1",
    "macrophage_M2a_alternative_core": "M2a",
    "trained_immunity_core6_zhang2022": "trained (core 6)",
    "osteoclast_differentiation_core": "osteoclast",
    "osteoblast_lineage_core": "osteoblast",
    "bm_stromal_LEPR_CAR_niche": "LEPR+ niche",
}


def not_scored_reasons(coverage: pd.DataFrame | None, sets) -> dict[str, str]:
    """Why each of ``sets`` was not scored in a dataset, from its signature coverage table.

    ``coverage`` is ``tables/signature_coverage.tsv`` (index: set; columns ``scored`` and
    ``reason``); a set without a row was not among the sets scored for the dataset's species.
    """
    reasons = {}
    for name in sets:
        if coverage is None or name not in coverage.index:
            reasons[name] = "not among the sets scored for this dataset's species"
            continue
        reason = coverage.loc[name].get("reason")
        reasons[name] = reason if isinstance(reason, str) and reason else "not scored"
    return reasons


def _z_colour(value: float, limit: float) -> str:
    t = max(-1.0, min(1.0, float(value) / limit))
    fade = 255 - round(170 * abs(t))  # light enough for black text
    return f"rgb(255,{fade},{fade})" if t > 0 else f"rgb({fade},{fade},255)"


def key_signature_block(
    by_group: pd.DataFrame,
    *,
    coverage: pd.DataFrame | None = None,
    sets=KEY_SETS,
    limit: float = 2.0,
) -> dict:
    """Cell types x key signatures (mean calibrated z) of one dataset, for the index page.

    Returns ``{"sets", "rows", "notes"}``: ``rows`` are ``{"cell_type", "n_cells", "cells"}``
    with cells ``(text, colour, title)``. A set the dataset did not score shows as
    "not scored" (never "n.s.", which reads as "not significant"), its reason from the
    ``coverage`` table in the cell's hover title and in ``notes`` (one line per set); a scored
    set without a value for a cell type shows as "no value". Colours run from blue
    (z = -``limit``) through white to red (z = +``limit``).
    """
    z = by_group[(by_group["grouping"] == "cell_type") & (by_group["value"] == "z")]
    scored = {name for name in sets if name in z and z[name].notna().any()}
    reasons = not_scored_reasons(coverage, [name for name in sets if name not in scored])
    rows = []
    for record in z.sort_values("n_cells", ascending=False, kind="stable").to_dict("records"):
        cells = []
        for name in sets:
            value = record.get(name)
            if name not in scored:
                cells.append(("not scored", "#f3f3f3", f"not scored: {reasons[name]}"))
            elif value is None or pd.isna(value):
                cells.append(("no value", "#f3f3f3", "scored, but no mean for this cell type"))
            else:
                cells.append((f"{value:.2f}", _z_colour(value, limit), ""))
        rows.append(
            {"cell_type": str(record["group"]), "n_cells": int(record["n_cells"]), "cells": cells}
        )
    notes = [f"{KEY_LABELS.get(name, name)} ({name}): {reasons[name]}" for name in reasons]
    return {"sets": [KEY_LABELS.get(name, name) for name in sets], "rows": rows, "notes": notes}


def missing_score_views(adata: ad.AnnData, *, genes: pd.DataFrame) -> list[str]:
    """Why a view of the signatures section is absent from a dataset's report, one line each."""
    library = load_library()
    scored = [c.removeprefix("score_") for c in adata.obs if c.startswith("score_")]
    category = {n: library.sets[n]["category"] for n in scored if n in library.sets}
    missing = []
    polarization = adata.uns["osteoimmune"].get("polarization")
    if not scored:
        missing.append(
            "No signature set reached the coverage threshold in this dataset (see "
            "the coverage table), so there are no scores, states or score figures."
        )
    elif not polarization:
        missing.append("M1/M2 state map: no M1 and M2 set both reached the coverage threshold.")
    elif not polarization.get("gated_cells"):
        missing.append(
            "M1/M2 state map: no cell was annotated as a monocyte or macrophage "
            "(the cell types the states are defined in)."
        )
    if scored and not any(c.startswith("trained_immunity") for c in category.values()):
        missing.append("Trained immunity by lineage: no trained-immunity set was scored.")
    if scored and not any(c in PROGRAM_CATEGORIES for c in category.values()):
        missing.append("Osteoimmune programs by cell type: no program set was scored.")
    few = "no cell type has enough cells (signatures.min_cells_per_type) or none of its genes"
    if genes.empty or not genes["present"].astype(bool).any():
        missing.append(f"RANKL/OPG and cytokines per cell type: {few} is in the dataset.")
    return missing
