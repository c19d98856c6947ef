"""Report figures (matplotlib, Agg backend), each saved as PNG and SVG, returned as PNG bytes."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

QC_METRICS = ("total_counts", "n_genes_by_counts", "pct_counts_mt")
# Scatter plots of more points than this draw them as one image inside the SVG (and PDF),
# axes and labels staying vector: 100,000 vector markers make a ~20 MB SVG that is slow to
# write and to open. Smaller plots stay fully vector.
RASTERIZE_POINTS = 10_000


def _raster(n_points: int) -> dict:
    """``rasterized=True`` for a scatter of more than :data:`RASTERIZE_POINTS` points."""
    return {"rasterized": True} if n_points > RASTERIZE_POINTS else {}


def save(fig: plt.Figure, path: Path) -> bytes:
    """Save ``fig`` as PNG to ``path`` and as SVG beside it, close it, return the PNG bytes.

    Neither file carries a creation date, so the same figure gives the same bytes.
    """
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    fig.savefig(
        path.with_suffix(".svg"), format="svg", bbox_inches="tight", metadata={"Date": None}
    )
    plt.close(fig)
    data = buffer.getvalue()
    path.write_bytes(data)
    return data


def wrap_label(text: str, *, width: int = 28) -> str:
    """A long tick label broken on spaces or after underscores into lines of ~``width`` chars."""
    text = str(text)
    if len(text) <= width:
        return text
    lines = textwrap.wrap(text.replace("_", "_ "), width, break_long_words=False)
    return "\n".join(line.replace("_ ", "_") for line in lines)


def label_fontsize(n: int) -> float:
    """Tick label size for ``n`` labels: 8 pt for a few, down to 5 pt for many."""
    return float(np.clip(240 / max(n, 1), 5, 8))


def grid_size(
    n_rows: int,
    n_cols: int,
    *,
    cell: tuple[float, float] = (0.45, 0.3),
    extra: tuple[float, float] = (2.0, 1.4),
    minimum: tuple[float, float] = (3.6, 2.6),
) -> tuple[float, float]:
    """Figure size (inches) of a grid plot: ``cell`` per row and column, never below ``minimum``.

    One or two rows stay readable (colour bar included); cells shrink a little with the label
    font of many rows, never below the labels' height.
    """
    scale = max(label_fontsize(max(n_rows, n_cols)) / 7, 0.8)
    width = extra[0] + cell[0] * scale * n_cols
    height = extra[1] + cell[1] * scale * n_rows
    return max(width, minimum[0]), max(height, minimum[1])


def set_tick_labels(ax, *, x: list, y: list) -> None:
    """Tick labels of a grid, wrapped and sized by their count so that none overlap.

    Column labels stand upright (90 degrees): rotated at a slant, long neighbours overlap.
    """
    ax.set_xticks(
        range(len(x)),
        [wrap_label(t, width=40) for t in x],
        rotation=90,
        fontsize=label_fontsize(len(x)),
    )
    ax.set_yticks(
        range(len(y)), [wrap_label(t, width=36) for t in y], fontsize=label_fontsize(len(y))
    )


def umap_categorical(adata: ad.AnnData, key: str, *, title: str) -> plt.Figure:
    """UMAP coloured by a categorical obs column, legend at the side."""
    xy = adata.obsm["X_umap"]
    values = adata.obs[key].astype("category")
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, category in enumerate(values.cat.categories):
        mask = (values == category).to_numpy()
        ax.scatter(
            *xy[mask].T,
            s=6,
            color=cmap(i % 20),
            label=f"{category} ({mask.sum()})",
            **_raster(len(xy)),
        )
    ax.set(title=title, xticks=[], yticks=[], xlabel="UMAP1", ylabel="UMAP2")
    ncol = 1 if values.cat.categories.size <= 20 else 2
    ax.legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize=7, markerscale=2, ncol=ncol)
    return fig


def umap_continuous(adata: ad.AnnData, key: str, *, title: str) -> plt.Figure:
    """UMAP coloured by a numeric obs column; high values drawn on top."""
    xy = adata.obsm["X_umap"]
    values = adata.obs[key].to_numpy(dtype=float)
    order = np.argsort(values, kind="stable")
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    points = ax.scatter(*xy[order].T, c=values[order], s=6, cmap="viridis", **_raster(len(xy)))
    fig.colorbar(points, ax=ax, shrink=0.8)
    ax.set(title=title, xticks=[], yticks=[], xlabel="UMAP1", ylabel="UMAP2")
    return fig


def qc_histograms(obs: pd.DataFrame, *, metrics=QC_METRICS) -> plt.Figure:
    """Histograms of QC metrics per sample (cells after QC)."""
    present = [m for m in metrics if m in obs]
    fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], present, strict=True):
        for sample, values in obs.groupby("sample", observed=True)[metric]:
            # float64: normalised input has totals equal to float32 precision
            ax.hist(values.to_numpy(dtype=float), bins=40, alpha=0.6, label=str(sample))
        ax.set(xlabel=metric, ylabel="cells")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


THRESHOLD_METRICS = (
    "total_counts",
    "n_genes_by_counts",
    "pct_counts_mt",
    "pct_counts_in_top_20_genes",
)


def _draw_bounds(ax, bounds: pd.DataFrame) -> None:
    """Vertical lines at the sample's bounds (dashed) and its coarse groups' (dotted)."""
    for row in bounds.itertuples():
        style = (
            dict(color="black", linestyle="--", linewidth=1.2)
            if row.scope == "sample"
            else dict(color="tab:red", linestyle=":", linewidth=0.9)
        )
        for value in (row.lower, row.upper):
            if pd.notna(value) and value > 0:
                ax.axvline(value, **style)


def qc_threshold_plot(
    cells: pd.DataFrame, thresholds: pd.DataFrame, *, max_samples: int = 8
) -> plt.Figure:
    """Per sample (rows) and metric (columns): all cells before QC, kept cells, thresholds.

    Black dashed lines are the sample's MAD/absolute bounds, red dotted lines those of its
    coarse groups (lineage-aware mode); counts and genes on log axes.
    """
    metrics = [m for m in THRESHOLD_METRICS if m in cells and m in set(thresholds["metric"])]
    samples = list(dict.fromkeys(thresholds["sample"].astype(str)))[:max_samples]
    fig, axes = plt.subplots(
        len(samples), len(metrics), squeeze=False, figsize=(3.4 * len(metrics), 2.4 * len(samples))
    )
    for row, sample in zip(axes, samples, strict=True):
        mine = cells[cells["sample"].astype(str) == sample]
        for ax, metric in zip(row, metrics, strict=True):
            values = mine[metric].to_numpy(dtype=float)
            log_axis = metric in ("total_counts", "n_genes_by_counts")
            edges = (
                np.geomspace(max(values.min(), 1), max(values.max(), 2), 40)
                if log_axis
                else np.linspace(values.min(), max(values.max(), values.min() + 1), 40)
            )
            ax.hist(values, bins=edges, color="lightgrey", label="all cells")
            ax.hist(
                values[mine["qc_pass"].to_numpy(dtype=bool)],
                bins=edges,
                color="tab:blue",
                alpha=0.7,
                label="kept",
            )
            sel = (thresholds["sample"].astype(str) == sample) & (thresholds["metric"] == metric)
            _draw_bounds(ax, thresholds[sel])
            ax.set(xscale="log" if log_axis else "linear", xlabel=metric)
            ax.set_title(sample, fontsize=8, loc="left")
        row[0].set_ylabel("cells")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def composition_bars(composition: pd.DataFrame, *, level: str = "cell_type") -> plt.Figure:
    """Stacked bars: fraction of each sample's cells per ``level`` (cell_type or lineage)."""
    table = composition.pivot_table(
        index="sample", columns=level, values="n_cells", aggfunc="sum", fill_value=0
    )
    table = table.div(table.sum(axis=1), axis=0)
    table = table[table.sum().sort_values(ascending=False).index]
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(4 + 0.5 * len(table), 4))
    bottom = np.zeros(len(table))
    for i, column in enumerate(table.columns):
        ax.bar(
            table.index.astype(str),
            table[column],
            bottom=bottom,
            color=cmap(i % 20),
            label=str(column),
        )
        bottom += table[column].to_numpy()
    ax.set(ylabel="fraction of cells", ylim=(0, 1), title=f"{level} per sample")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize=7)
    return fig


def confusion_heatmap(confusion: pd.DataFrame) -> plt.Figure:
    """Author labels (rows) x our cell types (columns), as the fraction of each row."""
    counts = confusion.drop(
        columns=["author_lineage", "author_cell_type", "n_cells"], errors="ignore"
    )
    fractions = counts.div(counts.sum(axis=1).replace(0, 1), axis=0)
    fig, ax = plt.subplots(figsize=grid_size(*counts.shape))
    image = ax.imshow(fractions.to_numpy(dtype=float), aspect="auto", cmap="Blues", vmin=0, vmax=1)
    set_tick_labels(ax, x=list(counts.columns.astype(str)), y=list(counts.index.astype(str)))
    ax.set(xlabel="our cell_type", ylabel="author label")
    fig.colorbar(image, ax=ax, shrink=0.7, label="fraction of the author\nlabel's cells")
    return fig


def _annotate_cells(ax, values: np.ndarray, *, limit: float) -> None:
    """Write each cell's value in it (small grids), white on the strongest colours."""
    fontsize = label_fontsize(max(values.shape)) - 1
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            colour = "white" if abs(value) > 0.6 * limit else "black"
            ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=fontsize, color=colour)


def score_heatmap(means: pd.DataFrame, *, title: str, limit: float = 2.5) -> plt.Figure:
    """Heatmap of mean scores (rows groups, columns sets).

    With three or more groups each set is z-scored across groups (which group is highest);
    with one or two, where that would say nothing, the means are drawn as they are and written
    in the cells.
    """
    relative = means.shape[0] > 2
    values = (means - means.mean()) / means.std(ddof=0).replace(0, 1) if relative else means
    fig, ax = plt.subplots(figsize=grid_size(*means.shape))
    grid = values.to_numpy(dtype=float)
    image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
    if not relative:
        _annotate_cells(ax, grid, limit=limit)
    set_tick_labels(
        ax, x=[c.removeprefix("score_") for c in means.columns], y=list(means.index.astype(str))
    )
    ax.set_title(title, fontsize=9)
    label = "z of group mean\n(across groups)" if relative else "group mean"
    fig.colorbar(image, ax=ax, shrink=0.7, label=label)
    return fig


def stability_plot(table: pd.DataFrame, *, chosen: float) -> plt.Figure:
    """Mean ARI (± sd) of subsample clusterings and cluster count per Leiden resolution."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.errorbar(
        table["resolution"],
        table["mean_ari"],
        yerr=table["sd_ari"],
        marker="o",
        capsize=3,
        label="mean ARI, 80% subsamples",
    )
    ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen: {chosen:g}")
    ax.set(xlabel="Leiden resolution", ylabel="ARI vs full data", ylim=(0, 1.05))
    twin = ax.twinx()
    twin.plot(
        table["resolution"], table["n_clusters"], color="tab:orange", marker="s", label="clusters"
    )
    twin.set_ylabel("clusters", color="tab:orange")
    ax.legend(loc="lower left", fontsize=7)
    return fig


STATE_COLORS = {
    "M1-like": "tab:red",
    "M2-like": "tab:blue",
    "mixed": "tab:purple",
    "unpolarized": "lightgrey",
}


def state_map(obs: pd.DataFrame, *, m1: str, m2: str) -> plt.Figure:
    """Calibrated M1 vs M2 z-scores of the gated cells, coloured by polarization state."""
    gated = obs[obs["polarization_state"].notna()]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for state, color in STATE_COLORS.items():
        part = gated[gated["polarization_state"] == state]
        ax.scatter(
            part[f"z_{m1}"],
            part[f"z_{m2}"],
            s=8,
            color=color,
            label=f"{state} ({len(part)})",
            **_raster(len(gated)),
        )
    ax.axline((0, 0), slope=1, color="grey", linestyle=":", linewidth=0.8)
    ax.set(xlabel=f"z {m1}", ylabel=f"z {m2}", title=f"M1/M2 states of {len(gated)} gated cells")
    ax.legend(fontsize=7, loc="best")
    return fig


def _dot_size(fraction):
    return 10 + 190 * fraction


def _legend_sizes(ax) -> None:
    """A legend of dot sizes (fraction of cells expressing), in ``ax`` (an empty side axis)."""
    handles = [
        ax.scatter([], [], s=_dot_size(f), color="grey", edgecolors="none", label=f"{f:.0%}")
        for f in (0.1, 0.25, 0.5, 0.75, 1.0)
    ]
    ax.legend(
        handles=handles, title="fraction of cells\nexpressing (size)", loc="upper left",
        fontsize=7, title_fontsize=7, frameon=False, labelspacing=1.1, borderaxespad=0,
    )  # fmt: skip


def dot_plot(
    table: pd.DataFrame,
    *,
    group_col: str,
    title: str,
    always: tuple[str, ...] = (),
    aliases: dict[str, str] | None = None,
) -> plt.Figure:
    """Genes (columns) x groups (rows): dot size = fraction expressing, colour = mean.

    Genes absent from the dataset are left out, except those in ``always`` (matched
    case-insensitively, e.g. RANKL and OPG), drawn as grey crosses labelled "not in data".
    ``aliases`` (upper-case symbol -> protein name) label columns, e.g. "Tnfsf11 (RANKL)".
    A legend gives the dot sizes; the colour bar the mean log expression.
    """
    aliases, keep = aliases or {}, [g.upper() for g in always]
    present = table["present"].astype(bool)
    genes = [g for g in dict.fromkeys(table["gene"]) if present[table["gene"] == g].any()]
    absent = [g for g in dict.fromkeys(table["gene"]) if g.upper() in keep and g not in genes]
    # the ``always`` genes first, in their order; the others as in the table
    order = {g: keep.index(g.upper()) if g.upper() in keep else len(keep) for g in genes + absent}
    genes = sorted(genes + absent, key=order.get)
    groups = list(dict.fromkeys(table[group_col].astype(str)))
    shown = table[present & table["gene"].isin(genes)]
    fig, (ax, side) = plt.subplots(
        1, 2, figsize=grid_size(len(groups), len(genes), extra=(3.2, 1.6)),
        gridspec_kw={"width_ratios": [max(len(genes), 1), 2.4]},
    )  # fmt: skip
    column = {g: i for i, g in enumerate(genes)}
    row = {g: i for i, g in enumerate(groups)}
    points = ax.scatter(
        shown["gene"].map(column), shown[group_col].astype(str).map(row),
        s=_dot_size(shown["fraction"].to_numpy(dtype=float)),
        c=shown["mean"].to_numpy(dtype=float), cmap="Reds", vmin=0,
    )  # fmt: skip
    for gene in absent:
        ax.scatter([column[gene]] * len(groups), range(len(groups)), marker="x", color="grey")
    labels = [f"{g} ({aliases[g.upper()]})" if g.upper() in aliases else g for g in genes]
    labels = [
        f"{label}\nnot in data" if g in absent else label
        for g, label in zip(genes, labels, strict=True)
    ]
    set_tick_labels(ax, x=labels, y=groups)
    ax.set(xlim=(-0.6, len(genes) - 0.4), ylim=(len(groups) - 0.4, -0.6))
    ax.set_title(title, fontsize=9)
    side.axis("off")
    _legend_sizes(side)
    bar = side.inset_axes([0.05, 0.0, 0.12, 0.4])
    fig.colorbar(points, cax=bar, label="mean log expression (colour)")
    return fig


def donor_comparison_plot(
    plot_data: pd.DataFrame,
    comparison: pd.DataFrame,
    *,
    group_key: str = "cell_type",
    n: int = 6,
) -> plt.Figure:
    """Donor values per condition (one dot per donor) of the ``n`` largest effects.

    Variables are ranked by FDR when tested, else by the absolute difference of the
    condition means; each panel title carries the test result or "descriptive".
    """
    ranked = (
        comparison.assign(
            _order=comparison["fdr"].fillna(2.0),
            _size=-comparison["difference"].abs().fillna(0),
        )
        .sort_values(["_order", "_size"], kind="stable")
        .head(n)
    )
    fig, axes = plt.subplots(
        1, max(len(ranked), 1), figsize=(2.6 * max(len(ranked), 1), 3.2), squeeze=False
    )
    conditions = [str(c) for c in plot_data["condition"].astype("category").cat.categories]
    for ax, row in zip(axes[0], ranked.itertuples(), strict=False):
        group, variable = getattr(row, group_key), row.variable
        values = plot_data[
            (plot_data[group_key].astype(str) == str(group)) & (plot_data["variable"] == variable)
        ]
        for i, condition in enumerate(conditions):
            donors = values[values["condition"].astype(str) == condition]
            if donors.empty:  # no donor of this condition has a value (too few cells)
                continue
            jitter = np.linspace(-0.12, 0.12, len(donors)) if len(donors) > 1 else 0.0
            ax.scatter(i + jitter, donors["value"], s=28, zorder=3)
            ax.hlines(donors["value"].mean(), i - 0.25, i + 0.25, color="black")
        result = "descriptive" if row.descriptive_only else f"FDR {row.fdr:.2g}"
        ax.set_xticks(range(len(conditions)), conditions, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{group}\n{variable.removeprefix('z_')}\n{result}", fontsize=7)
        ax.set_xlim(-0.6, len(conditions) - 0.4)
    axes[0][0].set_ylabel("donor value (one dot per donor)")
    fig.tight_layout()
    return fig


def top_terms_plot(
    prerank: pd.DataFrame,
    *,
    group_col: str = "cell_type",
    n_terms: int = 15,
    max_fdr: float = 0.25,
) -> plt.Figure:
    """Prerank GSEA: NES of the most significant terms (rows) per group (columns).

    Terms are the ``n_terms`` with the smallest FDR anywhere; cells with FDR above
    ``max_fdr`` are drawn pale, missing (not testable) cells blank.
    """
    best = prerank.groupby("term")["fdr"].min().sort_values(kind="stable").head(n_terms)
    grid = (
        prerank[prerank["term"].isin(best.index)]
        .pivot_table(index="term", columns=group_col, values="nes", aggfunc="first")
        .reindex(best.index)
    )
    fdr = (
        prerank[prerank["term"].isin(best.index)]
        .pivot_table(index="term", columns=group_col, values="fdr", aggfunc="first")
        .reindex(index=grid.index, columns=grid.columns)
    )
    values = grid.to_numpy(dtype=float)
    limit = max(np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0, 1.0)
    fig, ax = plt.subplots(figsize=grid_size(*grid.shape, extra=(3.0, 1.5)))
    image = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
    weak = np.ma.masked_where(~(fdr.to_numpy(dtype=float) > max_fdr), np.ones_like(values))
    ax.imshow(weak, aspect="auto", cmap="Greys", vmin=0, vmax=4, alpha=0.6)
    set_tick_labels(ax, x=list(grid.columns.astype(str)), y=list(grid.index.astype(str)))
    ax.set_title(f"Prerank GSEA, top {len(grid)} terms (pale: FDR > {max_fdr:g})", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.7, label="NES")
    return fig
