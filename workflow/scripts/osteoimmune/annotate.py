"""Marker-panel annotation of bone-marrow cells: lineage per cluster, then cell type per cell.

1. Every used panel (see :mod:`osteoimmune.panels`) gets a per-cell score: the sum over its
   present genes of the gene's z-score across cells, divided by ``n_genes + shrink`` (computed
   on the sparse X, never densified), so a panel resting on one or two genes wins only on
   strong evidence.
2. Each cluster of ``cluster_key`` gets a lineage from its mean scores of the lineage-specific
   panels (genes listed by one lineage only, plus a union panel per lineage; a lineage with
   fewer than ``min_lineage_genes`` such genes expressed is not used): the lineage with
   the highest score wins if that score is at least ``min_score`` and beats the next lineage
   by ``min_margin``. Scores across cells need contrast between cells: in a dataset of one
   population (e.g. cultured dendritic cells) no lineage stands out. So a cluster without a
   winner is tried once more, against its cells' own background (:func:`background_scores`:
   a panel's genes ranked within each cell among all the cell's genes, i.e. against random
   gene sets of the panel's size), with ``background_min_score`` and
   ``background_min_margin``. Clusters still without a lineage are ``unassigned`` and their
   cells are tried one by one with the across-cell rule, on their neighbourhood-smoothed
   scores. The background rule is used for clusters only: a cluster's mean is robust where a
   single cell's ranks are noisy, and it never overrides a lineage named across cells.
   In a dataset whose cells all passed a stem/progenitor sort (``progenitor_sort``, from the
   registry), a cluster still without a lineage is ``hspc`` instead: every cell is a
   progenitor, and one primed toward no lineage is an uncommitted one. That call rests on
   the sort and on the absence of a committed program, not on an HSPC marker; its
   ``lineage_basis`` says so.
   Cell types stay across-cell calls: type panels share genes that most myeloid cells
   express (Mmp9, Fpr2, Csf3r, Acp5), so ranked within cells they would name neutrophils or
   osteoclasts in cultured dendritic cells.
3. Within its lineage, each cell gets the cell type whose panel wins by the same rule on the
   cell's scores smoothed over its neighbours of the same lineage (``smoothing_steps`` steps
   of a lazy random walk on the neighbour graph); then a subtype (CD4 / CD8 T, immature /
   mature neutrophil) where subtype panels win clearly, else the parent type stays. No clear
   winner gives ``unassigned``.
4. Where the dataset carries surface-protein counts of the same cells (CITE-seq ADT in
   ``obsm['protein']``), the proteins named by ``protein_markers`` join their panels' scores
   at the cell-type step (CLR per cell, z-scored across cells, like one more gene each): the
   random RNA gene panels of such datasets often lack the few genes that split T cells into
   CD4 and CD8. Lineages stay RNA-only.

Author labels are never read here; :mod:`osteoimmune.agreement` compares with them afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from osteoimmune.errors import InputError, SignatureError
from osteoimmune.kernels.sparse_ranks import sparse_ranks
from osteoimmune.panels import (
    BONE_TYPES,
    CELL_TYPES,
    CORE_GENES,
    LINEAGES,
    SUBTYPE_GENES,
    SUBTYPE_MIN_FRACTION,
    SUBTYPE_MIN_RATIO,
    UNASSIGNED,
    Panel,
    gene_positions,
    lineage_specific,
    panel_coverage,
)

log = logging.getLogger(__name__)

CLUSTER_COLUMNS = (
    "n_cells",
    "cell_lineage",
    "lineage_score",
    "lineage_margin",
    "lineage_basis",
    "background_score",
    "background_margin",
    "cell_types",
)
ACROSS_CELLS = "across cells"
WITHIN_CELLS = "within cells"
UNCOMMITTED = "progenitor sort, no committed lineage"
HSPC = "hspc"
PROTEIN_KEY = "protein"


def score_panels(
    adata: AnnData,
    panels: dict[str, Panel],
    coverage: pd.DataFrame,
    *,
    case_insensitive: bool = False,
    shrink: float = 1.0,
    clip: float = 10.0,
    proteins: pd.DataFrame | None = None,
    protein_members: dict[str, list[str]] | None = None,
    split: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Per-cell score of every used panel from the z-scores of its present genes.

    Parameters
    ----------
    adata
        Log-normalised expression in X (sparse stays sparse: only the panel genes' columns
        are copied, as float32 CSR).
    panels
        The panels, from :func:`osteoimmune.panels.build_panels`.
    coverage
        From :func:`osteoimmune.panels.panel_coverage`; only panels with ``used`` are scored.
    case_insensitive
        Match gene symbols on upper case.
    shrink
        The sum of a panel's z-scores is divided by ``n_genes + shrink`` (0: their mean).
    clip
        Values more than ``clip`` standard deviations above a gene's mean are capped, so one
        extreme cell cannot carry a panel.
    proteins, protein_members
        Optional z-scored protein values (cells x proteins, :func:`protein_values`) and, per
        panel, the proteins that count as genes of the panel.
    split
        Return the RNA part and the protein part of the scores separately (they add up to
        the scores).

    Returns
    -------
    pandas.DataFrame
        Cells x used panels (float32), indexed by ``adata.obs_names``; with ``split`` the two
        parts.
    """
    positions = gene_positions(adata, case_insensitive=case_insensitive)
    key = str.upper if case_insensitive else str
    used = [name for name in coverage.index if coverage.at[name, "used"]]
    members = {
        name: sorted({positions[key(g)] for g in coverage.at[name, "present"].split(",") if g})
        for name in used
    }
    columns = sorted({c for cols in members.values() for c in cols})
    x = adata.X[:, columns]
    x = sparse.csr_matrix(x, dtype=np.float32) if sparse.issparse(x) else np.asarray(x, float)
    mean = np.asarray(x.mean(axis=0, dtype=np.float64)).ravel()
    square = x.multiply(x) if sparse.issparse(x) else x * x
    variance = np.asarray(square.mean(axis=0, dtype=np.float64)).ravel() - mean**2
    sd = np.sqrt(np.maximum(variance, 0))
    detected = sd > 0  # an undetected (constant) gene carries no information
    sd[~detected] = 1.0
    cap = (mean + clip * sd).astype(x.dtype)
    if sparse.issparse(x):
        x.data = np.minimum(x.data, cap[x.indices])
    else:
        x = np.minimum(x, cap)
    index = {c: i for i, c in enumerate(columns)}
    weights = np.zeros((len(columns), len(used)))
    extra = np.zeros((adata.n_obs, len(used)))
    for j, name in enumerate(used):
        rows = [index[c] for c in members[name] if detected[index[c]]]
        own = (protein_members or {}).get(name, [])
        weights[rows, j] = 1.0 / (sd[rows] * (len(rows) + len(own) + shrink))
        if own:
            extra[:, j] = proteins[own].to_numpy().sum(axis=1) / (len(rows) + len(own) + shrink)
    rna = np.asarray(x @ weights) - mean @ weights
    if split:
        return tuple(
            pd.DataFrame(part.astype(np.float32), index=adata.obs_names, columns=used)
            for part in (rna, extra)
        )
    return pd.DataFrame((rna + extra).astype(np.float32), index=adata.obs_names, columns=used)


def _within_row_ranks(x: sparse.csr_matrix) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Mid-ranks (1 .. n_genes) of every row's values among all the row's genes.

    Returns the ranks of the stored entries minus the rank of the row's zeros (CSR, same
    pattern as ``x``), the rank of each row's zeros and the standard deviation of each row's
    ranks over all its genes.
    """
    n_genes = x.shape[1]
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    rank, zero_rank = sparse_ranks(x.data, x.indptr, n_genes)
    zeros = n_genes - np.diff(x.indptr)
    centre = (n_genes + 1) / 2.0
    square = zeros * zero_rank**2 + np.bincount(rows, rank**2, minlength=x.shape[0])
    sd = np.sqrt(np.maximum(square / n_genes - centre**2, 0))
    shifted = sparse.csr_matrix((rank - zero_rank[rows], x.indices, x.indptr), shape=x.shape)
    return shifted, zero_rank, sd


def background_scores(
    adata: AnnData,
    panels: dict[str, Panel],
    coverage: pd.DataFrame,
    *,
    case_insensitive: bool = False,
    shrink: float = 1.0,
    chunk_size: int = 4096,
) -> pd.DataFrame:
    """Per-cell panel scores against the cell's own background, not against other cells.

    Within each cell, every gene gets its mid-rank among all the cell's genes, standardised
    by the mean and standard deviation of the cell's ranks; a panel's score is the sum over
    its present genes of that value divided by ``n_genes + shrink``, as in
    :func:`score_panels`. A random gene set of the panel's size scores 0 on average in every
    cell, so the score says how far the panel's genes stand above the cell's other genes,
    whatever the other cells express. Ranks make it independent of the normalisation; genes
    never detected count, as genes the cell does not express. Rows are ranked ``chunk_size``
    cells at a time, sparse (zeros share one rank).

    Returns
    -------
    pandas.DataFrame
        Cells x used panels (float32), indexed by ``adata.obs_names``.
    """
    positions = gene_positions(adata, case_insensitive=case_insensitive)
    key = str.upper if case_insensitive else str
    used = [name for name in coverage.index if coverage.at[name, "used"]]
    weights = np.zeros((adata.n_vars, len(used)))
    for j, name in enumerate(used):
        columns = sorted({positions[key(g)] for g in coverage.at[name, "present"].split(",") if g})
        weights[columns, j] = 1.0
    size = weights.sum(axis=0)
    centre = (adata.n_vars + 1) / 2.0
    scores = np.zeros((adata.n_obs, len(used)))
    for start in range(0, adata.n_obs, chunk_size):
        x = sparse.csr_matrix(adata.X[start : start + chunk_size], dtype=np.float64)
        shifted, zero_rank, sd = _within_row_ranks(x)
        total = np.asarray(shifted @ weights) + np.outer(zero_rank - centre, size)
        sd[sd == 0] = np.inf  # a cell with one value everywhere ranks no gene above another
        scores[start : start + chunk_size] = total / sd[:, None] / (size + shrink)
    return pd.DataFrame(scores.astype(np.float32), index=adata.obs_names, columns=used)


def protein_values(adata: AnnData, *, clip: float = 10.0) -> pd.DataFrame:
    """Surface-protein counts (``obsm['protein']``) as CLR values z-scored across cells.

    CLR: a cell's log1p count of a protein minus its mean log1p count over all proteins (as in
    :func:`osteoimmune.agreement.protein_check`). Proteins constant across cells are dropped;
    values above ``clip`` standard deviations are capped, as for genes.
    """
    counts = adata.obsm[PROTEIN_KEY]
    logged = np.log1p(np.asarray(counts, dtype=np.float64))
    clr = logged - logged.mean(axis=1, keepdims=True)
    sd = clr.std(axis=0)
    keep = sd > 0
    z = (clr[:, keep] - clr[:, keep].mean(axis=0)) / sd[keep]
    return pd.DataFrame(
        np.minimum(z, clip),
        index=adata.obs_names,
        columns=pd.Index(counts.columns[keep]).astype(str),
    )


def protein_members(
    adata: AnnData, panels: dict[str, Panel], markers: dict[str, list[str]] | None
) -> dict[str, list[str]]:
    """The proteins of ``markers`` (panel -> protein names) measured in ``obsm['protein']``.

    Names match case-insensitively; a panel name that is not a panel raises. Without protein
    counts in the dataset, or without markers, the result is empty.
    """
    unknown = sorted(set(markers or {}) - set(panels))
    if unknown:
        msg = (
            f"annotation.protein_markers names unknown panels {unknown}; known panels: "
            f"{', '.join(panels)}."
        )
        raise SignatureError(msg)
    if not markers or PROTEIN_KEY not in adata.obsm:
        return {}
    measured = {str(c).upper(): str(c) for c in adata.obsm[PROTEIN_KEY].columns}
    found = {
        name: [measured[p.upper()] for p in names if p.upper() in measured]
        for name, names in markers.items()
    }
    return {name: names for name, names in found.items() if names}


def by_label(scores: pd.DataFrame, panels: dict[str, Panel], attribute: str) -> pd.DataFrame:
    """The best panel score per lineage or cell type (``attribute``), per row.

    Panels whose ``attribute`` is None (lineage-only panels, for cell types) are left out.
    """
    labels: dict[str, list[str]] = {}
    for name in scores.columns:
        label = getattr(panels[name], attribute)
        if label is not None:
            labels.setdefault(label, []).append(name)
    return pd.DataFrame(
        {label: scores[names].max(axis=1) for label, names in labels.items()}, index=scores.index
    )


def best_labels(
    values: pd.DataFrame, *, min_score: float, min_margin: float
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Per row: the best column, if it reaches ``min_score`` and beats the next by ``min_margin``.

    Returns
    -------
    tuple of pandas.Series
        The label (``unassigned`` when the rule fails), the best score and its margin over
        the runner-up (over 0 when there is a single column; NaN for no column).
    """
    if values.shape[1] == 0:
        nan = pd.Series(np.nan, index=values.index)
        return pd.Series(UNASSIGNED, index=values.index), nan, nan
    array = values.to_numpy(dtype=float)
    order = np.argsort(-array, axis=1, kind="stable")
    rows = np.arange(len(array))
    best = array[rows, order[:, 0]]
    second = array[rows, order[:, 1]] if array.shape[1] > 1 else np.zeros(len(array))
    margin = best - second
    labels = values.columns.to_numpy()[order[:, 0]].astype(object)
    labels[(best < min_score) | (margin < min_margin)] = UNASSIGNED
    return (
        pd.Series(labels, index=values.index),
        pd.Series(best, index=values.index),
        pd.Series(margin, index=values.index),
    )


def smoothing_operator(adata: AnnData, blocks: pd.Series) -> sparse.csr_matrix:
    """One step of a lazy random walk on the neighbour graph, within blocks of cells.

    Edges between cells of different ``blocks`` (e.g. lineages) are dropped, so smoothing never
    mixes a cell with neighbours of another block. Returns a cells x cells row-stochastic matrix
    (self weight 1 plus the connectivities, normalised per row); apply it with :func:`smooth`.
    """
    if "connectivities" not in adata.obsp:
        msg = "The AnnData has no neighbour graph (obsp['connectivities']); cluster it first."
        raise InputError(msg)
    graph = sparse.coo_matrix(adata.obsp["connectivities"], dtype=np.float64)
    codes = pd.factorize(np.asarray(blocks))[0]
    keep = codes[graph.row] == codes[graph.col]
    graph = sparse.csr_matrix(
        (graph.data[keep], (graph.row[keep], graph.col[keep])), shape=graph.shape
    )
    step = graph + sparse.identity(graph.shape[0], format="csr")
    return (sparse.diags(1.0 / np.asarray(step.sum(axis=1)).ravel()) @ step).tocsr()


def smooth(values: pd.DataFrame, operator: sparse.csr_matrix, *, steps: int) -> pd.DataFrame:
    """Apply the one-step ``operator`` ``steps`` times to a cells x columns table."""
    array = values.to_numpy(dtype=np.float64)
    for _ in range(steps):
        array = operator @ array
    return pd.DataFrame(array.astype(np.float32), index=values.index, columns=values.columns)


def assign_types(
    scores: pd.DataFrame,
    lineage: pd.Series,
    panels: dict[str, Panel],
    *,
    min_score: float,
    min_margin: float,
) -> pd.Series:
    """Cell type of each cell within its lineage, then subtype where a subtype wins clearly.

    Parameters
    ----------
    scores
        Cells x panels (smoothed per-cell panel scores).
    lineage
        The lineage of each cell (``unassigned`` cells get no type).
    panels
        The panels scored.
    min_score, min_margin
        The winner rule (see :func:`best_labels`).
    """
    cell_type = pd.Series(UNASSIGNED, index=scores.index, dtype=object)
    rule = {"min_score": min_score, "min_margin": min_margin}
    for name in [n for n in LINEAGES if (lineage == n).any()]:
        cells = (lineage == name).to_numpy()
        top = [n for n in scores.columns if panels[n].lineage == name and panels[n].parent is None]
        labels, _, _ = best_labels(by_label(scores.loc[cells, top], panels, "cell_type"), **rule)
        cell_type[cells] = labels
    for parent in {p.parent for p in panels.values() if p.parent}:
        cells = (cell_type == parent).to_numpy()
        children = [n for n in scores.columns if panels[n].parent == parent]
        if cells.any() and children:
            values = by_label(scores.loc[cells, children], panels, "cell_type")
            labels, _, _ = best_labels(values, **rule)
            cell_type[cells] = labels.where(labels != UNASSIGNED, parent)
    return cell_type


def assign_clusters(
    specific_scores: pd.DataFrame,
    clusters: pd.Series,
    specific: dict[str, Panel],
    *,
    min_score: float,
    min_margin: float,
) -> pd.DataFrame:
    """Lineage of each cluster from its mean lineage-specific panel scores.

    Returns
    -------
    pandas.DataFrame
        One row per cluster (index ``cluster``): ``n_cells``, ``cell_lineage``,
        ``lineage_score``, ``lineage_margin``, ``lineage_basis`` (``across cells``, or empty
        when unassigned), ``background_score`` and ``background_margin`` (NaN; see
        :func:`assign_by_background`).
    """
    means = specific_scores.groupby(clusters.to_numpy(), observed=True, sort=True).mean()
    lineage, score, margin = best_labels(
        by_label(means, specific, "lineage"), min_score=min_score, min_margin=min_margin
    )
    table = pd.DataFrame(
        {
            "n_cells": clusters.value_counts().reindex(means.index).to_numpy(),
            "cell_lineage": lineage,
            "lineage_score": score,
            "lineage_margin": margin,
            "lineage_basis": np.where(lineage != UNASSIGNED, ACROSS_CELLS, ""),
            "background_score": np.nan,
            "background_margin": np.nan,
        }
    )
    return table.rename_axis("cluster")


def assign_by_background(
    table: pd.DataFrame,
    background: pd.DataFrame,
    clusters: pd.Series,
    specific: dict[str, Panel],
    *,
    min_score: float,
    min_margin: float,
) -> pd.DataFrame:
    """Lineage of the clusters of ``background`` from their mean scores against own background.

    Parameters
    ----------
    table
        From :func:`assign_clusters`; a copy is returned with the clusters of ``background``
        updated (``lineage_basis`` ``within cells`` where a lineage wins).
    background
        :func:`background_scores` of the lineage-specific panels for the cells of the
        clusters to try (and only those).
    clusters
        The cluster of every cell of ``background``.
    specific, min_score, min_margin
        The lineage-specific panels and the winner rule (:func:`best_labels`).
    """
    means = background.groupby(clusters.to_numpy(), observed=True, sort=True).mean()
    labels, score, margin = best_labels(
        by_label(means, specific, "lineage"), min_score=min_score, min_margin=min_margin
    )
    table = table.copy()
    table.loc[means.index, "cell_lineage"] = labels
    table.loc[means.index, "lineage_basis"] = np.where(labels != UNASSIGNED, WITHIN_CELLS, "")
    table.loc[means.index, "background_score"] = score
    table.loc[means.index, "background_margin"] = margin
    return table


def _cell_margin(lineages: pd.DataFrame, assigned: pd.Series) -> np.ndarray:
    """Each cell's score for its assigned lineage minus its best other lineage score."""
    margin = np.full(len(assigned), np.nan, dtype=np.float32)
    values = lineages.to_numpy()
    for j, lineage in enumerate(lineages.columns):
        cells = (assigned == lineage).to_numpy()
        others = np.delete(values[cells], j, axis=1)
        margin[cells] = values[cells, j] - (others.max(axis=1) if others.shape[1] else 0.0)
    return margin


def _for_uns(table: pd.DataFrame) -> dict[str, list]:
    # Plain Python values only (None as ""), so the table writes to h5ad.
    out: dict[str, list] = {table.index.name or "index": [str(i) for i in table.index]}
    for column in table.columns:
        values = [v.item() if isinstance(v, np.generic) else v for v in table[column]]
        out[column] = ["" if v is None else v for v in values]
    return out


def _lineages(
    adata: AnnData,
    clusters: pd.Series,
    table: pd.DataFrame,
    specific_scores: pd.DataFrame,
    specific: dict[str, Panel],
    *,
    steps: int,
    rule: dict,
) -> pd.Series:
    """Each cell's cluster lineage; cells of unassigned clusters are tried one by one."""
    lineage = clusters.map(table["cell_lineage"]).astype(object)
    loose = (lineage == UNASSIGNED).to_numpy()
    if loose.any():
        smoothed = smooth(specific_scores, smoothing_operator(adata, lineage), steps=steps)
        own, _, _ = best_labels(by_label(smoothed[loose], specific, "lineage"), **rule)
        lineage[loose] = own
    return lineage


def weak_lineages(coverage: pd.DataFrame, *, min_genes: int) -> dict[str, int]:
    """Lineages with fewer than ``min_genes`` specific genes present and detected.

    ``coverage`` is the coverage of the lineage-specific panels (with their union panels,
    :func:`osteoimmune.panels.lineage_specific`). Such a lineage is not used for lineage
    calls: one gene is not a lineage program (the 240 genes of Paul 2015 hold one lymphoid
    gene, Nkg7, which its neutrophils express). Returns lineage -> its number of genes.
    """
    out = {}
    for lineage in LINEAGES:
        union = f"{lineage}_lineage"
        if union in coverage.index and coverage.at[union, "n_expressed"] < min_genes:
            out[lineage] = int(coverage.at[union, "n_expressed"])
    return out


def _scored(
    adata: AnnData,
    panels: dict[str, Panel],
    *,
    options: dict,
    shrink: float,
    protein_markers: dict[str, list[str]] | None = None,
    min_lineage_genes: int = 2,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Panel], pd.DataFrame, pd.DataFrame]:
    """Coverage, scores and their protein part; lineage-specific panels, coverage and scores."""
    specific = lineage_specific(panels)
    coverage = panel_coverage(adata, panels, **options)
    coverage_specific = panel_coverage(adata, specific, **options)
    weak = weak_lineages(coverage_specific, min_genes=min_lineage_genes)
    for lineage, n_genes in weak.items():
        panels_of = coverage_specific["lineage"] == lineage
        noted = coverage.index.isin(coverage_specific.index[panels_of & coverage_specific["used"]])
        coverage.loc[noted, "reason"] = (
            f"not used for lineage calls: {n_genes} {lineage}-specific gene(s) expressed "
            f"(min_lineage_genes {min_lineage_genes})"
        )
        coverage_specific.loc[panels_of, "used"] = False
    _core_coverage(coverage, adata, panels, options=options)
    used_specific = coverage_specific.index[coverage_specific["used"]]
    coverage["used_for_lineage"] = coverage.index.isin(used_specific)
    members = protein_members(adata, panels, protein_markers)
    coverage["proteins"] = [",".join(members.get(name, [])) for name in coverage.index]
    with_protein = coverage.index.isin(list(members))
    coverage.loc[with_protein & ~coverage["used"], "reason"] = ""
    coverage["used"] = coverage["used"] | with_protein
    scoring = {"case_insensitive": options["case_insensitive"], "shrink": shrink}
    proteins = protein_values(adata) if members else None
    # The protein part is kept apart: it is not smoothed, as the RNA neighbour graph does not
    # see proteins (CD4 and CD8 T cells mix).
    rna, protein = score_panels(
        adata,
        panels,
        coverage,
        **scoring,
        proteins=proteins,
        protein_members=members,
        split=True,
    )
    specific_scores = score_panels(adata, specific, coverage_specific, **scoring)
    return coverage, rna + protein, protein, specific, coverage_specific, specific_scores


def core_panels(panels: dict[str, Panel]) -> dict[str, Panel]:
    """Panels ``<name>_core`` of the :data:`~osteoimmune.panels.CORE_GENES` of each panel.

    Only the panel's own genes that are core genes (matched on upper case) are kept; the core
    panels mark no cell type (they check a call, :func:`apply_core_rule`).
    """
    out = {}
    for name, (genes, _) in CORE_GENES.items():
        if name in panels:
            panel = panels[name]
            own = tuple(g for g in panel.genes if g.upper() in genes)
            if own:
                out[f"{name}_core"] = Panel(
                    f"{name}_core", panel.lineage, None, None, own, panel.sources
                )
    return out


def _core_table(adata: AnnData, cores: dict[str, Panel], *, case_insensitive: bool) -> pd.DataFrame:
    """Present and detected genes of the core panels (``present``, ``n_expressed``, ``used``).

    Unlike :func:`osteoimmune.panels.panel_coverage` it does not raise when no core gene is
    there: a dataset without them simply calls none of those types.
    """
    positions = gene_positions(adata, case_insensitive=case_insensitive)
    key = str.upper if case_insensitive else str
    rows = {}
    for name, panel in cores.items():
        present = [g for g in panel.genes if key(g) in positions]
        x = adata.X[:, [positions[key(g)] for g in present]]
        nonzero = np.asarray((x != 0).sum(axis=0)).ravel() if present else np.zeros(0)
        expressed = [g for g, n in zip(present, nonzero, strict=True) if n > 0]
        rows[name] = {
            "present": ",".join(expressed),
            "n_expressed": len(expressed),
            "used": bool(expressed),
        }
    columns = ["present", "n_expressed", "used"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)


def _core_coverage(
    coverage: pd.DataFrame, adata: AnnData, panels: dict[str, Panel], *, options: dict
) -> None:
    """Mark panels with fewer core genes present and detected than required as not used."""
    table = _core_table(adata, core_panels(panels), case_insensitive=options["case_insensitive"])
    for name, (_, minimum) in CORE_GENES.items():
        if name not in coverage.index or not coverage.at[name, "used"]:
            continue
        core = f"{name}_core"
        n = int(table.at[core, "n_expressed"]) if core in table.index else 0
        if n < minimum:
            coverage.at[name, "used"] = False
            coverage.at[name, "reason"] = (
                f"{n} of its core genes ({', '.join(CORE_GENES[name][0])}) present and "
                f"detected, below the {minimum} needed to call the type"
            )


def core_scores(
    adata: AnnData, panels: dict[str, Panel], *, options: dict, shrink: float
) -> pd.DataFrame:
    """Per-cell scores of the core panels (:func:`core_panels`) used in the dataset."""
    cores = core_panels(panels)
    coverage = _core_table(adata, cores, case_insensitive=options["case_insensitive"])
    if not coverage["used"].any():
        return pd.DataFrame(index=adata.obs_names)
    return score_panels(
        adata,
        cores,
        coverage,
        case_insensitive=options["case_insensitive"],
        shrink=shrink,
    )


# A call failing its core rule falls back to this type where that type's score reaches
# min_score (an osteoclast-like cell without osteoclast-specific genes is a lipid-associated,
# osteoclast-like macrophage, Jaitin 2019), else to unassigned.
CORE_FALLBACK = {"osteoclast": "lipid-associated macrophage"}


def apply_core_rule(
    cell_type: pd.Series,
    core: pd.DataFrame,
    type_scores: pd.DataFrame,
    panels: dict[str, Panel],
    *,
    min_score: float,
) -> pd.Series:
    """Keep a call of a type with core genes only where the cell's core score reaches min_score.

    An osteoclast call also needs the osteoclast score above the lipid-associated macrophage
    score (that signature must not dominate). A failed call becomes its
    :data:`CORE_FALLBACK` where that type scores ``min_score`` or more, else unassigned.

    Parameters
    ----------
    cell_type
        Calls per cell (:func:`assign_types`).
    core
        Smoothed :func:`core_scores`.
    type_scores
        Smoothed best panel score per cell type (:func:`by_label`).
    panels, min_score
        The panels and the winner rule's minimum.
    """
    out = cell_type.copy()
    for name in CORE_GENES:
        if name not in panels:
            continue
        kind = panels[name].cell_type
        cells = (out == kind).to_numpy()
        if not cells.any():
            continue
        column = f"{name}_core"
        own = core[column] if column in core else pd.Series(-np.inf, index=out.index)
        failed = cells & (own < min_score).to_numpy()
        fallback = CORE_FALLBACK.get(kind)
        rival = type_scores[fallback] if fallback in type_scores else None
        if rival is not None:
            failed |= cells & (rival >= type_scores[kind]).to_numpy()
            to_fallback = failed & (rival >= min_score).to_numpy()
            out[to_fallback] = fallback
            failed &= ~to_fallback
        out[failed] = UNASSIGNED
    return out


def _detected_any(adata: AnnData, genes: tuple[str, ...]) -> np.ndarray:
    """Per cell: whether any of ``genes`` (matched on upper case) is detected."""
    positions = gene_positions(adata, case_insensitive=True)
    columns = sorted({positions[g] for g in genes if g in positions})
    if not columns:
        return np.zeros(adata.n_obs, dtype=bool)
    x = adata.X[:, columns]
    counts = (x != 0).sum(axis=1) if sparse.issparse(x) else (np.asarray(x) != 0).sum(axis=1)
    return np.asarray(counts).ravel() > 0


def t_subtype_evidence(
    adata: AnnData,
    cell_type: pd.Series,
    clusters: pd.Series,
    *,
    case_insensitive: bool = False,
    protein_types: set | None = None,
) -> pd.Series:
    """CD4 T / CD8 T calls kept only in clusters whose T cells show the subtype's genes.

    Per cluster, among its cells typed T cell, CD4 T or CD8 T: the fraction with any gene of
    :data:`~osteoimmune.panels.SUBTYPE_GENES` detected. A subtype stays where its fraction is
    at least ``SUBTYPE_MIN_FRACTION`` and ``SUBTYPE_MIN_RATIO`` times the other subtype's;
    elsewhere its cells become ``T cell``. Types in ``protein_types`` (called with surface
    proteins, whose RNA often lacks the genes) are left as they are.
    """
    out = cell_type.copy()
    family = out.isin(["T cell", *SUBTYPE_GENES]).to_numpy()
    if not family.any():
        return out
    detected = {kind: _detected_any(adata, genes) for kind, genes in SUBTYPE_GENES.items()}
    fractions = (
        pd.DataFrame(detected, index=out.index)[family]
        .groupby(clusters[family].to_numpy(), observed=True)
        .mean()
    )
    (first, second) = SUBTYPE_GENES
    for kind, other in ((first, second), (second, first)):
        if kind in (protein_types or set()):
            continue
        ok = (fractions[kind] >= SUBTYPE_MIN_FRACTION) & (
            fractions[kind] >= SUBTYPE_MIN_RATIO * fractions[other]
        )
        demote = (out == kind).to_numpy() & ~clusters.map(ok).eq(True).to_numpy()
        out[demote] = "T cell"
    return out


def annotate_cells(
    adata: AnnData,
    panels: dict[str, Panel],
    *,
    cluster_key: str = "leiden",
    min_genes: int = 1,
    min_coverage: float = 0.5,
    shrink: float = 1.0,
    min_score: float = 0.1,
    min_margin: float = 0.1,
    background_min_score: float = 0.5,
    background_min_margin: float = 0.5,
    smoothing_steps: int = 4,
    case_insensitive: bool = False,
    protein_markers: dict[str, list[str]] | None = None,
    progenitor_sort: bool = False,
    min_lineage_genes: int = 2,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Annotate every cell with a lineage and a cell type from marker panels.

    Adds obs ``cell_lineage`` and ``cell_type`` (categorical) and ``annotation_margin`` (the
    cell's smoothed score for its lineage minus its best other lineage; NaN when unassigned or
    when no panel of its lineage is scored, as for ``hspc`` by ``progenitor_sort``),
    obsm ``panel_scores`` (cells x used panels, unsmoothed) and ``lineage_scores`` (cells x
    lineages, smoothed), and uns ``annotation`` (parameters, panel coverage, cluster table).
    Author labels are not read. The workflow passes every threshold from the config's
    ``annotation:`` section (config/config.yaml, schema defaults); the keyword defaults here
    serve direct calls.

    Parameters
    ----------
    adata
        Log-normalised X, clusters in ``obs[cluster_key]`` and the neighbour graph.
    panels
        From :func:`osteoimmune.panels.build_panels`.
    cluster_key
        The clusters that get a lineage.
    min_genes, min_coverage
        Panel use and completeness thresholds (:func:`osteoimmune.panels.panel_coverage`).
    shrink
        Panel score = sum of z-scores / (n_genes + shrink) (:func:`score_panels`).
    min_score, min_margin
        The winner rule at both levels, in z-score units (:func:`best_labels`).
    background_min_score, background_min_margin
        The winner rule for clusters without a lineage across cells, on their mean scores
        against the cells' own background (:func:`background_scores`; units: standard
        deviations of a cell's gene ranks).
    smoothing_steps
        Steps of the within-lineage random walk that smooths scores before cells are typed.
    case_insensitive
        Match gene symbols on upper case.
    protein_markers
        Panel -> surface proteins (names in ``obsm['protein']``) that join the panel's genes
        at the cell-type step when the dataset has protein counts (:func:`protein_members`).
    progenitor_sort
        Every cell passed a stem/progenitor sort: clusters without a lineage by either rule
        are ``hspc`` (``lineage_basis`` :data:`UNCOMMITTED`) rather than ``unassigned``, and
        their cells are typed among the hspc panels.
    min_lineage_genes
        A lineage is called only when at least this many of its lineage-specific genes are
        present and detected (:func:`weak_lineages`); 1 lets one gene name a lineage.

    Returns
    -------
    tuple of pandas.DataFrame
        The panel coverage table (:func:`osteoimmune.panels.panel_coverage`, plus
        ``used_for_lineage`` and ``proteins``) and the per-cluster table
        (:func:`assign_clusters`, plus ``cell_types``: the cell types of the cluster's cells
        and their counts).
    """
    if cluster_key not in adata.obs:
        msg = f"Column '{cluster_key}' is not in obs; cluster the cells before annotating them."
        raise InputError(msg)
    rule = {"min_score": min_score, "min_margin": min_margin}
    options = {
        "min_genes": min_genes,
        "min_coverage": min_coverage,
        "case_insensitive": case_insensitive,
    }
    coverage, scores, protein_part, specific, coverage_specific, specific_scores = _scored(
        adata,
        panels,
        options=options,
        shrink=shrink,
        protein_markers=protein_markers,
        min_lineage_genes=min_lineage_genes,
    )
    clusters = adata.obs[cluster_key].astype(str)
    table = assign_clusters(specific_scores, clusters, specific, **rule)
    loose = clusters.isin(table.index[table["cell_lineage"] == UNASSIGNED]).to_numpy()
    if loose.any():
        # Ranks are per cell, so scoring only the cells of unassigned clusters is exact.
        background = background_scores(
            adata[loose],
            specific,
            coverage_specific,
            case_insensitive=case_insensitive,
            shrink=shrink,
        )
        table = assign_by_background(
            table,
            background,
            clusters[loose],
            specific,
            min_score=background_min_score,
            min_margin=background_min_margin,
        )
    if progenitor_sort:
        left = table["cell_lineage"] == UNASSIGNED
        table.loc[left, "cell_lineage"] = HSPC
        table.loc[left, "lineage_basis"] = UNCOMMITTED
    lineage = _lineages(
        adata, clusters, table, specific_scores, specific, steps=smoothing_steps, rule=rule
    )
    operator = smoothing_operator(adata, lineage)
    smoothed = smooth(specific_scores, operator, steps=smoothing_steps)
    lineages = by_label(smoothed, specific, "lineage")
    smoothed = smooth(scores - protein_part, operator, steps=smoothing_steps) + protein_part
    cell_type = assign_types(smoothed, lineage, panels, **rule)
    core = smooth(
        core_scores(adata, panels, options=options, shrink=shrink), operator, steps=smoothing_steps
    )
    cell_type = apply_core_rule(
        cell_type, core, by_label(smoothed, panels, "cell_type"), panels, min_score=min_score
    )
    with_protein = {panels[n].cell_type for n in coverage.index[coverage["proteins"] != ""]}
    cell_type = t_subtype_evidence(
        adata,
        cell_type,
        clusters,
        case_insensitive=case_insensitive,
        protein_types=with_protein,
    )
    adata.obs["cell_lineage"] = pd.Categorical(lineage, categories=[*LINEAGES, UNASSIGNED])
    adata.obs["cell_type"] = pd.Categorical(cell_type, categories=[*CELL_TYPES, UNASSIGNED])
    adata.obs["annotation_margin"] = _cell_margin(lineages, lineage)
    adata.obsm["panel_scores"] = scores
    adata.obsm["lineage_scores"] = lineages
    table["cell_types"] = [
        ", ".join(f"{t}: {n}" for t, n in cell_type[clusters == c].value_counts().items())
        for c in table.index
    ]
    params = {
        "cluster_key": cluster_key,
        **options,
        "shrink": shrink,
        **rule,
        "background_min_score": background_min_score,
        "background_min_margin": background_min_margin,
        "smoothing_steps": smoothing_steps,
        "min_lineage_genes": min_lineage_genes,
        "progenitor_sort": progenitor_sort,
        "protein_markers": "; ".join(
            f"{k}: {','.join(v)}" for k, v in (protein_markers or {}).items()
        ),
    }
    adata.uns["annotation"] = {
        "params": params,
        "coverage": _for_uns(coverage),
        "clusters": _for_uns(table),
    }
    return coverage, table


# A tissue counts as bone when its registry text names bone or a bone site; cells grown in
# culture (bone-marrow-derived cells, HSPC in culture) do not, as they left the bone.
_BONE_TISSUE = r"\bbone|femor|femur|tibia|calvari|endoste|skelet|vertebra"
_CULTURE = r"cultur|-derived|\bderived\b|organoid|cell line"


def tissue_flags(cell_types: pd.Series, *, tissue: str) -> dict[str, str]:
    """Bone types called in a dataset whose tissue is not bone: type -> a sentence for the report.

    Parameters
    ----------
    cell_types
        The cell type of each cell.
    tissue
        The registry's ``tissue`` of the dataset (e.g. ``bone-marrow mononuclear cells``,
        ``peripheral blood``). Bone, bone marrow and bone sites count as bone, unless the cells
        were grown in culture.

    Returns
    -------
    dict
        Each type of :data:`~osteoimmune.panels.BONE_TYPES` with cells, mapped to why the call
        is doubtful here; empty in bone tissue.
    """
    text = str(tissue or "").lower()
    cultured = bool(pd.Series([text]).str.contains(_CULTURE).iloc[0])
    if pd.Series([text]).str.contains(_BONE_TISSUE).iloc[0] and not cultured:
        return {}
    where = "cells grown in culture" if cultured else "not bone or bone marrow"
    counts = cell_types.astype(str).value_counts()
    flags = {}
    for kind in BONE_TYPES:
        n = int(counts.get(kind, 0))
        if n:
            flags[kind] = (
                f"{n} cells ({n / len(cell_types):.0%}) called {kind} in tissue '{tissue}' "
                f"({where}): a bone cell type here is unexpected; its marker genes are shared "
                "with other cells (e.g. lipid-associated, osteoclast-like macrophages express "
                "ACP5, DCSTAMP and MMP9), so check the marker evidence before reading it as "
                f"{kind}."
            )
    return flags


def _type_genes(panels: dict[str, Panel], kind: str) -> list[str]:
    """The genes of all panels of cell type ``kind``, in panel order, without duplicates."""
    return list(dict.fromkeys(g for p in panels.values() if p.cell_type == kind for g in p.genes))


def _detection(adata: AnnData, genes: list[str], *, case_insensitive: bool) -> pd.DataFrame:
    """Cells x present genes: detected (count > 0), as a boolean frame of a few columns."""
    positions = gene_positions(adata, case_insensitive=case_insensitive)
    key = str.upper if case_insensitive else str
    present = [g for g in genes if key(g) in positions]
    x = adata.X[:, [positions[key(g)] for g in present]]
    detected = (x != 0).toarray() if sparse.issparse(x) else np.asarray(x) != 0
    return pd.DataFrame(detected, index=adata.obs_names, columns=present)


# A call is supported when the cell detects its type's genes at twice the dataset-wide rate
# (chosen before measuring).
SUPPORT_OVER_CHANCE = 2.0


def marker_evidence(
    adata: AnnData,
    panels: dict[str, Panel],
    cell_types: pd.Series,
    *,
    case_insensitive: bool = False,
    n_top: int = 5,
    min_genes: int = 2,
) -> tuple[pd.DataFrame, pd.Series]:
    """The marker evidence of each called cell type, and whether each cell supports its call.

    Parameters
    ----------
    adata
        Log-normalised (or count) X; only the panel genes' columns are read.
    panels
        The panels (:func:`osteoimmune.panels.build_panels`); a type's genes are those of all
        its panels.
    cell_types
        The cell type of each cell (index ``adata.obs_names``).
    case_insensitive
        Match gene symbols on upper case.
    n_top
        Genes named per type, by the fraction of the type's cells that detect them.
    min_genes
        A cell supports its call when it detects at least this many of its type's panel genes
        (all of them when fewer are present) and at least :data:`SUPPORT_OVER_CHANCE` times as
        many as an average cell of the dataset detects.

    Returns
    -------
    tuple
        A table indexed by cell type: ``n_cells``, ``n_genes_present``, ``marker_evidence``
        (e.g. ``CD14 92%, LYZ 99%``: the top genes with their detected fraction in the type)
        and ``fraction_supported``; and per cell ``marker_supported`` (boolean; False for
        types without panel genes in the data, such as ``unassigned``).
    """
    kinds = [k for k in pd.unique(cell_types.astype(str))]
    genes = list(dict.fromkeys(g for k in kinds for g in _type_genes(panels, k)))
    detected = _detection(adata, genes, case_insensitive=case_insensitive)
    supported = pd.Series(False, index=cell_types.index, name="marker_supported")
    rows = {}
    for kind in sorted(kinds):
        cells = (cell_types.astype(str) == kind).to_numpy()
        own = [g for g in _type_genes(panels, kind) if g in detected.columns]
        fractions = detected.loc[cells, own].mean().sort_values(ascending=False, kind="stable")
        need = min(min_genes, len(own))
        hits = detected.loc[cells, own].sum(axis=1)
        # the rate at which any cell of the dataset detects these genes, i.e. by chance
        chance = float(detected[own].to_numpy().mean()) if own else 1.0
        enough = (hits >= need) & (hits >= SUPPORT_OVER_CHANCE * chance * len(own))
        supported[cells] = enough.to_numpy() & (len(own) > 0)
        rows[kind] = {
            "n_cells": int(cells.sum()),
            "n_genes_present": len(own),
            "marker_evidence": _evidence_text(fractions[:n_top], panel=_type_genes(panels, kind)),
            "fraction_supported": float(supported[cells].mean()),
        }
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("cell_type")
    return table, supported


def _evidence_text(fractions: pd.Series, *, panel: Sequence[str]) -> str:
    """``CD14 92%, LYZ 99%``; or why there is none: the panel's genes are not in the data."""
    if len(fractions):
        return ", ".join(f"{g} {v:.0%}" for g, v in fractions.items())
    if panel:
        return f"none of its {len(set(panel))} panel genes is in this dataset"
    return ""
