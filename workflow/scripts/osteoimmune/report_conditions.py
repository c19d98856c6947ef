"""The report's case-control sections: pseudobulk DE, composition and communication.

Figures are made from the comparison rules' tables (and the pseudobulk AnnData); tables are
trimmed to what a reader scans first, the full ones being under ``tables/``.
"""

from __future__ import annotations

from collections.abc import Callable

import anndata as ad
import pandas as pd

from osteoimmune.communication import axes_plot
from osteoimmune.composition import proportion_plot
from osteoimmune.pseudobulk import top_gene_heatmap, volcano

# Volcano plots in the report: the cell type x contrast pairs with the most significant genes.
N_VOLCANOES = 4
DE_SUMMARY = ["group", "contrast", "n_samples_case", "n_samples_ref", "tested", "reason",
              "genes_tested", "n_significant", "design"]  # fmt: skip
DE_TOP = ["group", "contrast", "gene", "base_mean", "log2fc_shrunk", "stat", "padj"]


def tested_pairs(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """Cell type x contrast pairs that were tested, most significant genes first."""
    if summary.empty or "tested" not in summary:
        return []
    tested = summary[summary["tested"].astype(bool)]
    tested = tested.sort_values(["n_significant", "group"], ascending=[False, True], kind="stable")
    return list(zip(tested["group"], tested["contrast"], strict=True))


def top_genes(results: pd.DataFrame, *, n: int = 5) -> pd.DataFrame:
    """The ``n`` most significant genes of each cell type x contrast."""
    if results.empty:
        return results
    ranked = results.dropna(subset=["padj"]).sort_values(
        ["group", "contrast", "padj", "pvalue", "gene"], kind="stable"
    )
    return ranked.groupby(["group", "contrast"], sort=False).head(n)[DE_TOP]


def expression_figures(
    *, make: Callable, results: pd.DataFrame, summary: pd.DataFrame, genes: pd.DataFrame,
    pseudobulk: ad.AnnData | None, n_top: int,
) -> list:  # fmt: skip
    """Volcano plots of the most changed cell types and the top-gene heatmap."""
    out = []
    highlight = set(genes["gene"]) if not genes.empty else set()
    for group, contrast in tested_pairs(summary)[:N_VOLCANOES]:
        name = f"volcano_{group}_{contrast}".replace(" ", "_").replace("/", "_")
        out.append(
            make(name, f"Pseudobulk DE in {group}, {contrast} (Wald p against log2 fold change; "
                 "osteoimmune genes labelled)",
                 volcano(results, group=group, contrast=contrast, highlight=highlight))
        )  # fmt: skip
    if pseudobulk is not None and pseudobulk.n_obs and not results.empty:
        out.append(
            make("pseudobulk_heatmap", "Top DE genes per cell type: log CPM of each pseudobulk "
                 "sample, samples by condition",
                 top_gene_heatmap(pseudobulk, results, n=n_top))
        )  # fmt: skip
    return out


def composition_figures(
    *, make: Callable, proportions: pd.DataFrame, test: pd.DataFrame, reference: str | None,
    group_key: str,
) -> list:  # fmt: skip
    """Proportions per sample by condition, with the test's FDR in the titles."""
    if proportions.empty or proportions["condition"].nunique() < 2:
        return []
    reference = reference or str(proportions["condition"].iloc[0])
    fig = proportion_plot(
        proportions, reference=reference, group_key=group_key,
        results=test if not test.empty else None,
    )  # fmt: skip
    return [make("composition_by_condition", "Cell-type proportions per sample by condition", fig)]


def communication_figures(*, make: Callable, axes: pd.DataFrame) -> list:
    """The osteoimmune axes of LIANA's ranking per condition."""
    if axes.empty:
        return []
    return [
        make("communication_axes", "Osteoimmune ligand-receptor axes per condition (LIANA+ "
             "rank aggregate; size: specificity, colour: magnitude)",
             axes_plot(axes, by="condition"))
    ]  # fmt: skip


def top_rows(table: pd.DataFrame, *, by: list[str], n: int = 25) -> pd.DataFrame:
    """The first ``n`` rows by the given columns (those present), missing values last."""
    if table.empty:
        return table
    keys = [c for c in by if c in table]
    return table.sort_values(keys, kind="stable", na_position="last").head(n)


def top_interactions_by_condition(results: pd.DataFrame, *, n: int = 8) -> pd.DataFrame:
    """LIANA's ``n`` strongest interactions (magnitude rank) per condition, any resource."""
    if results.empty:
        return results
    keys = ["condition", "source", "target", "ligand_complex", "receptor_complex"]
    best = results.sort_values([*keys[:1], "magnitude_rank", *keys[1:]], kind="stable")
    best = best.drop_duplicates(keys).groupby("condition", sort=False).head(n)
    return best[[*keys, "resource", "lr_means", "specificity_rank", "magnitude_rank"]]


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The DE summary columns a reader needs, one row per cell type x contrast."""
    return summary.reindex(columns=[c for c in DE_SUMMARY if c in summary])


def top_changes(
    *, de_summary: pd.DataFrame, de_top: pd.DataFrame, composition: pd.DataFrame,
    communication: pd.DataFrame, alpha: float = 0.05,
) -> list[str]:  # fmt: skip
    """A few lines on a dataset's largest changes between conditions, for the index page."""
    lines = []
    tested = de_summary[de_summary["tested"].astype(bool)] if "tested" in de_summary else []
    if len(tested):
        hits = tested[tested["n_significant"] > 0]
        line = f"DE: {int(tested['n_significant'].sum())} gene(s) at FDR < {alpha} in "
        line += f"{len(hits)} of {len(tested)} cell type x contrast tests"
        best = de_top[de_top["padj"] < alpha] if not de_top.empty else de_top
        if len(best):
            row = best.sort_values(["padj", "gene"], kind="stable").iloc[0]
            line += f"; top: {row['gene']} in {row['group']} ({row['contrast']}, "
            line += f"shrunken log2FC {row['log2fc_shrunk']:.2f})"
        lines.append(line)
    elif "reason" in de_summary and len(de_summary):
        lines.append(f"DE: not tested ({de_summary['reason'].iloc[0]})")
    for label, table, key in (
        ("composition", composition, "cell_type"),
        ("communication", communication, "ligand_complex"),
    ):
        significant = table[table["fdr"] < alpha] if "fdr" in table else []
        if len(significant):
            row = significant.sort_values("fdr", kind="stable").iloc[0]
            what = row[key] if key in row else ""
            if label == "communication":
                what = f"{row['source']} -> {row['target']} {row['ligand_complex']}-"
                what += f"{row['receptor_complex']}"
            lines.append(f"{label}: {len(significant)} change(s) at FDR < {alpha}; top: {what}")
    return lines
