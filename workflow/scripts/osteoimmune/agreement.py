"""Agreement of the annotation with the authors' labels, composition per sample, protein check.

The authors' labels are mapped to the annotation vocabulary by the registry's
``author_label_map`` (label -> lineage and cell type, either may be null) and compared with
``obs['cell_lineage']`` / ``obs['cell_type']`` after the fact; they never feed the annotation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score, f1_score, roc_auc_score

from osteoimmune.errors import InputError, SignatureError
from osteoimmune.panels import CELL_TYPES, FAMILIES, LINEAGES, UNASSIGNED

AUTHOR_KEY = "author_cell_type"
AGREEMENT_COLUMNS = ("level", "metric", "reference", "annotation", "leiden", "n_cells")
COMPOSITION_COLUMNS = ("sample", "cell_lineage", "cell_type", "n_cells", "fraction")
MAPPED = "author labels mapped to the vocabulary"
RAW = "author labels as published"


def check_label_map(label_map: dict, *, dataset: str = "") -> None:
    """Raise if a mapping names a lineage or cell type outside the vocabulary.

    Parameters
    ----------
    label_map
        Author label -> ``{"lineage": ..., "cell_type": ...}`` (None for no match).
    dataset
        The dataset id, for the message.
    """
    where = f"Dataset '{dataset}', author_label_map" if dataset else "author_label_map"
    for label, target in label_map.items():
        lineage, cell_type = (target or {}).get("lineage"), (target or {}).get("cell_type")
        if lineage is not None and lineage not in LINEAGES:
            msg = f"{where}, label '{label}': lineage {lineage!r} is not one of {LINEAGES}."
            raise SignatureError(msg)
        if cell_type is not None and CELL_TYPES.get(cell_type) != lineage:
            allowed = [t for t, lin in CELL_TYPES.items() if lin == lineage]
            msg = (
                f"{where}, label '{label}': cell_type {cell_type!r} is not a type of lineage "
                f"{lineage!r}; types of that lineage: {allowed}."
            )
            raise SignatureError(msg)


def map_author_labels(labels: pd.Series, label_map: dict) -> tuple[pd.DataFrame, list[str]]:
    """The authors' label of each cell in the annotation vocabulary.

    Returns
    -------
    tuple
        A frame (index of ``labels``) with ``author_lineage`` and ``author_cell_type`` (None
        where the map has no match or the label is not in the map), and the sorted labels
        that are not in the map.
    """
    check_label_map(label_map)
    text = labels.astype("string")
    lineage = text.map(lambda v: (label_map.get(v) or {}).get("lineage"), na_action="ignore")
    cell_type = text.map(lambda v: (label_map.get(v) or {}).get("cell_type"), na_action="ignore")
    unmapped = sorted(set(text.dropna()) - set(label_map))
    frame = pd.DataFrame(
        {"author_lineage": lineage.astype(object), "author_cell_type": cell_type.astype(object)}
    )
    return frame.where(frame.notna(), None), unmapped


def fine_labels(obs: pd.DataFrame) -> pd.Series:
    """Cell type, or ``<lineage> (no type)`` for cells typed ``unassigned`` within a lineage.

    Used for the cell-type ARI, so cells left untyped in different lineages are not pooled.
    """
    cell_type = obs["cell_type"].astype(str)
    lineage = obs["cell_lineage"].astype(str)
    untyped = (cell_type == UNASSIGNED) & (lineage != UNASSIGNED)
    return cell_type.where(~untyped, lineage + " (no type)")


def at_reference_level(truth: pd.Series, ours: pd.Series) -> pd.Series:
    """Our calls, with a state of the reference's type counted as that type.

    A lipid-associated macrophage where the authors say macrophage is a macrophage
    (:data:`osteoimmune.panels.FAMILIES`); the reverse (our ``T cell`` for their ``CD4 T``)
    stays a miss, as it is less specific.
    """
    family = ours.map(FAMILIES)
    return ours.where(family.to_numpy() != truth.to_numpy(), truth)


def _scores(truth: pd.Series, ours: pd.Series) -> dict[str, float]:
    labels = sorted(set(truth))
    return {
        "accuracy": float((truth == ours).mean()),
        "accuracy_of_assigned": float((truth == ours)[ours != UNASSIGNED].mean())
        if (ours != UNASSIGNED).any()
        else np.nan,
        "fraction_assigned": float((ours != UNASSIGNED).mean()),
        "macro_f1": float(f1_score(truth, ours, labels=labels, average="macro", zero_division=0)),
    }


def agreement_table(
    obs: pd.DataFrame, label_map: dict, *, cluster_key: str = "leiden"
) -> pd.DataFrame:
    """Accuracy, macro-F1 and ARI of the annotation against the authors' labels.

    Accuracy counts ``unassigned`` as wrong (``accuracy_of_assigned`` and
    ``fraction_assigned`` split it); macro-F1 averages over the authors' classes. A state of
    the authors' type counts as that type (:func:`at_reference_level`). Each level
    uses the cells whose author label maps to that level. The ARI is also given for the raw
    Leiden clusters (``leiden`` column), against the mapped and the published labels.

    Parameters
    ----------
    obs
        With ``cell_lineage``, ``cell_type``, ``author_cell_type`` and ``cluster_key``.
    label_map
        The registry's ``author_label_map``.
    cluster_key
        The clusters compared as a baseline.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`AGREEMENT_COLUMNS`, one row per level and metric.
    """
    mapped, _ = map_author_labels(obs[AUTHOR_KEY], label_map)
    clusters, fine = obs[cluster_key].astype(str), fine_labels(obs)
    rows = []
    levels = (
        ("lineage", "author_lineage", obs["cell_lineage"].astype(str)),
        ("cell_type", "author_cell_type", obs["cell_type"].astype(str)),
    )
    for level, column, ours in levels:
        known = mapped[column].notna().to_numpy()
        truth = mapped.loc[known, column].astype(str)
        n = int(known.sum())
        if n == 0:
            continue
        for metric, value in _scores(truth, at_reference_level(truth, ours[known])).items():
            rows.append((level, metric, MAPPED, value, np.nan, n))
        labels = ours if level == "lineage" else fine
        rows.append(
            (
                level,
                "ari",
                MAPPED,
                adjusted_rand_score(truth, labels[known]),
                adjusted_rand_score(truth, clusters[known]),
                n,
            )
        )
    published = obs[AUTHOR_KEY].notna().to_numpy()
    raw = obs.loc[published, AUTHOR_KEY].astype(str)
    rows.append(
        (
            "cell_type",
            "ari",
            RAW,
            adjusted_rand_score(raw, fine[published]),
            adjusted_rand_score(raw, clusters[published]),
            int(published.sum()),
        )
    )
    return pd.DataFrame(rows, columns=list(AGREEMENT_COLUMNS))


def confusion_table(obs: pd.DataFrame, label_map: dict) -> pd.DataFrame:
    """Cells per author label (rows) and annotated cell type (columns).

    Returns
    -------
    pandas.DataFrame
        Index ``author_label``; columns ``author_lineage``, ``author_cell_type`` (the mapping,
        empty when unmapped), ``n_cells``, then one count column per annotated cell type.
    """
    labelled = obs[obs[AUTHOR_KEY].notna()]
    counts = pd.crosstab(labelled[AUTHOR_KEY].astype(str), fine_labels(labelled))
    counts.index.name, counts.columns.name = "author_label", None
    mapping = pd.DataFrame(
        {
            "author_lineage": [(label_map.get(a) or {}).get("lineage") for a in counts.index],
            "author_cell_type": [(label_map.get(a) or {}).get("cell_type") for a in counts.index],
            "n_cells": counts.sum(axis=1).to_numpy(),
        },
        index=counts.index,
    ).fillna("")
    return pd.concat([mapping, counts], axis=1)


def composition_table(obs: pd.DataFrame, *, sample_key: str = "sample") -> pd.DataFrame:
    """Cells of each lineage and cell type per sample, and their fraction of the sample.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COMPOSITION_COLUMNS`, sorted by sample and decreasing count.
    """
    if sample_key not in obs:
        msg = f"Column '{sample_key}' is not in obs; composition needs the sample of each cell."
        raise InputError(msg)
    keys = [sample_key, "cell_lineage", "cell_type"]
    table = obs[keys].astype(str).value_counts().rename("n_cells").reset_index()
    table["fraction"] = table["n_cells"] / table.groupby(sample_key)["n_cells"].transform("sum")
    table = table.rename(columns={sample_key: "sample"})
    return table.sort_values(["sample", "n_cells"], ascending=[True, False], ignore_index=True)


def protein_check(
    adata: AnnData,
    *,
    protein: str = "CD14",
    cell_types: tuple[str, ...] = ("classical monocyte",),
    obsm_key: str = "protein",
) -> pd.Series:
    """Surface protein (CITE-seq ADT) of predicted cell types against all other cells.

    A check that does not depend on RNA markers: ADT counts are CLR-normalised per cell
    (log1p counts minus the cell's mean log1p over proteins), then compared between cells
    whose ``cell_type`` is in ``cell_types`` and the other cells.

    Returns
    -------
    pandas.Series
        ``protein``, ``n_cells_in``, ``n_cells_out``, ``mean_counts_in``, ``mean_counts_out``,
        ``ratio_of_means`` (counts), ``mean_clr_in``, ``mean_clr_out`` and ``auroc`` (of CLR:
        the probability that a predicted cell has more of the protein than another cell).
    """
    if obsm_key not in adata.obsm or protein not in adata.obsm[obsm_key]:
        have = list(adata.obsm[obsm_key].columns[:8]) if obsm_key in adata.obsm else []
        msg = f"No protein '{protein}' in obsm['{obsm_key}'] (proteins: {have}...)."
        raise SignatureError(msg)
    counts = adata.obsm[obsm_key].astype(float)
    logged = np.log1p(counts.to_numpy())
    clr = logged[:, counts.columns.get_loc(protein)] - logged.mean(axis=1)
    inside = adata.obs["cell_type"].astype(str).isin(cell_types).to_numpy()
    if inside.all() or not inside.any():
        msg = f"Protein check needs cells inside and outside {cell_types}; found {inside.sum()}."
        raise SignatureError(msg)
    raw = counts[protein].to_numpy()
    return pd.Series(
        {
            "protein": protein,
            "n_cells_in": int(inside.sum()),
            "n_cells_out": int((~inside).sum()),
            "mean_counts_in": raw[inside].mean(),
            "mean_counts_out": raw[~inside].mean(),
            "ratio_of_means": raw[inside].mean() / max(raw[~inside].mean(), 1e-9),
            "mean_clr_in": clr[inside].mean(),
            "mean_clr_out": clr[~inside].mean(),
            "auroc": roc_auc_score(inside, clr),
        }
    )


def protein_rows(check: pd.Series) -> pd.DataFrame:
    """The :func:`protein_check` result as rows of the agreement table (level ``protein``)."""
    reference = f"{check['protein']} ADT of the same cells"
    n = int(check["n_cells_in"] + check["n_cells_out"])
    rows = [
        ("protein", f"{check['protein']}_{metric}", reference, float(check[metric]), np.nan, n)
        for metric in ("auroc", "ratio_of_means", "mean_clr_in", "mean_clr_out")
    ]
    return pd.DataFrame(rows, columns=list(AGREEMENT_COLUMNS))


def agreement_tables(
    adata: AnnData,
    label_map: dict,
    *,
    cluster_key: str = "leiden",
    protein: str = "CD14",
    protein_types: tuple[str, ...] = ("classical monocyte",),
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Agreement and confusion tables of an annotated dataset; empty without author labels.

    Adds the :func:`protein_check` rows when ``obsm['protein']`` holds ``protein`` and some
    cells are of ``protein_types``.

    Returns
    -------
    tuple
        The agreement table (:func:`agreement_table`), the confusion table
        (:func:`confusion_table`) and the author labels missing from ``label_map``.
    """
    agreement = pd.DataFrame(columns=list(AGREEMENT_COLUMNS))
    confusion = pd.DataFrame(columns=["author_lineage", "author_cell_type", "n_cells"])
    confusion.index.name = "author_label"
    unmapped: list[str] = []
    if AUTHOR_KEY in adata.obs and adata.obs[AUTHOR_KEY].notna().any() and label_map:
        agreement = agreement_table(adata.obs, label_map, cluster_key=cluster_key)
        confusion = confusion_table(adata.obs, label_map)
        unmapped = map_author_labels(adata.obs[AUTHOR_KEY], label_map)[1]
    typed = adata.obs["cell_type"].astype(str).isin(protein_types)
    has_protein = "protein" in adata.obsm and protein in adata.obsm["protein"]
    if has_protein and 0 < typed.sum() < len(typed):
        check = protein_check(adata, protein=protein, cell_types=protein_types)
        agreement = pd.concat([agreement, protein_rows(check)], ignore_index=True)
    return agreement, confusion, unmapped
