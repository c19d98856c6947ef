"""Reference-based cell typing (CellTypist) and its reconciliation with the marker panels.

A labelled reference (a registry entry with ``reference: true``: its cells and its authors'
labels) trains a CellTypist logistic-regression model (Dominguez Conde et al. 2022, Science,
doi:10.1126/science.abl5197) on log1p counts per 10k. The model labels every cell of a dataset of
the same species; the reference's ``author_label_map`` turns its labels into this project's
vocabulary (:data:`osteoimmune.panels.CELL_TYPES`). When the dataset is the reference itself,
each donor is labelled by a model trained on the other donors only. A trained model can also be
registered (the registry's ``models:``, e.g. a CellTypist atlas model) and is fetched by URL
and sha256 like a dataset's files; its ``label_map`` does what ``author_label_map`` does.

The marker panels stay as the explanation and the check (:func:`reconcile`): every cell's final
type has a source (``both`` when reference and markers agree, ``reference``, ``markers``), a
confidence, and a flag when the markers contradict the reference's call.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from osteoimmune.panels import CELL_TYPES, UNASSIGNED

log = logging.getLogger("osteoimmune")

SOURCES = ("both", "reference", "markers")
REFERENCE_COLUMNS = (
    "reference_label",
    "reference_cell_type",
    "reference_lineage",
    "reference_confidence",
)
TARGET_SUM = 1e4


def log_cp10k(adata: AnnData, *, layer: str | None = "counts") -> AnnData:
    """CellTypist's input: log1p of values per 10,000 per cell, sparse.

    From raw counts in ``layers[layer]`` where the dataset has them; otherwise from the
    log-normalised ``X`` (log1p of size-normalised values, TPM or CP10k alike: expm1, rescaled
    to 10,000 per cell, log1p again).
    """
    if layer is not None and layer in adata.layers:
        values = sparse.csr_matrix(adata.layers[layer], dtype=np.float64)
    else:
        values = sparse.csr_matrix(adata.X, dtype=np.float64, copy=True)
        values.data = np.expm1(values.data)
    totals = np.asarray(values.sum(axis=1)).ravel()
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    matrix = sparse.csr_matrix(sparse.diags(scale) @ values)
    matrix.data = np.log1p(matrix.data)
    return AnnData(
        X=matrix.astype(np.float32),
        obs=pd.DataFrame(index=adata.obs_names.copy()),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )


def training_labels(labels: pd.Series, *, min_cells: int) -> pd.Series:
    """The labels with at least ``min_cells`` cells; the others (and missing ones) NaN."""
    labels = labels.astype("object")
    counts = labels.value_counts()
    keep = counts.index[counts >= min_cells]
    return labels.where(labels.isin(keep))


def train_model(expression: AnnData, labels: pd.Series, *, max_iter: int = 1000):
    """A CellTypist model trained on the labelled cells of ``expression`` (log1p CP10k).

    Labels that are NaN are left out. The solver is L-BFGS on the full data (no SGD, no
    feature selection): deterministic for the same input. CellTypist centres the genes, so the
    reference's cells x genes are dense while it trains (as every CellTypist model is made):
    references of up to ~50k cells fit this project's 24 GB machines.
    """
    import celltypist

    labelled = labels.notna().to_numpy()
    if labelled.sum() == 0 or labels[labelled].nunique() < 2:
        msg = "the reference has fewer than two labels with enough cells to train on"
        raise ValueError(msg)
    cells = expression[labelled]
    return celltypist.train(
        cells,
        labels=labels[labelled].astype(str).to_numpy(),
        check_expression=False,
        max_iter=max_iter,
        n_jobs=1,
    )


def load_model(path: str | os.PathLike, *, reference: str):
    """A CellTypist model from its file (as ``celltypist.models.Model.write`` saves it).

    Raises
    ------
    ValueError
        Naming the reference and the file when it is not a CellTypist model.
    """
    from celltypist.models import Model

    try:
        return Model.load(str(Path(path).resolve()))
    except Exception as error:  # celltypist re-raises every load failure as a bare Exception
        msg = (
            f"Reference '{reference}': {path} is not a CellTypist model ({error!r}); register "
            "a .pkl written by celltypist (celltypist.train(...).write(path))."
        )
        raise ValueError(msg) from error


def _vocabulary(label_map: dict) -> pd.DataFrame:
    """Author label -> (cell_type, lineage) of this project's vocabulary."""
    rows = {
        str(label): ((entry or {}).get("cell_type"), (entry or {}).get("lineage"))
        for label, entry in label_map.items()
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=["cell_type", "lineage"])


def vocabulary_calls(
    decisions: pd.DataFrame, vocabulary: pd.DataFrame
) -> tuple[pd.Series, np.ndarray]:
    """The most probable type of this project's vocabulary per cell, and its probability.

    The model's labels are finer than the vocabulary (CD4+ T naive, CD4+ T activated, ...):
    the softmax of CellTypist's multinomial decision values is summed over the labels of each
    vocabulary type (labels mapped to a lineage only count as ``lineage: <lineage>``; labels
    missing from the map as themselves), so the confidence is that of the type, not of one
    fine label.
    """
    shifted = decisions.to_numpy() - decisions.to_numpy().max(axis=1, keepdims=True)
    probability = np.exp(shifted)
    probability /= probability.sum(axis=1, keepdims=True)
    types = vocabulary["cell_type"].dropna()
    lineages = vocabulary["lineage"].dropna()
    target = [
        types[label]
        if label in types.index
        else f"lineage: {lineages[label]}"
        if label in lineages.index
        else label
        for label in decisions.columns.astype(str)
    ]
    summed = pd.DataFrame(probability, index=decisions.index, columns=target)
    summed = summed.T.groupby(level=0, sort=True).sum().T
    best = summed.to_numpy().argmax(axis=1)
    return pd.Series(summed.columns[best], index=decisions.index), summed.to_numpy().max(axis=1)


def known_vocabulary(labels, vocabulary: pd.DataFrame) -> tuple[set[str], set[str]]:
    """The vocabulary types and lineages that a model trained on ``labels`` can call."""
    labels = [str(label) for label in labels if str(label) in vocabulary.index]
    rows = vocabulary.loc[labels]
    return set(rows["cell_type"].dropna()), set(rows["lineage"].dropna())


def _model_case(expression: AnnData, features) -> AnnData:
    """``expression`` with gene names spelled as the model's where only the case differs.

    Datasets that upper-case mouse symbols (``SPI1`` for ``Spi1``) then share the model's
    genes; names the model spells the same way are left as they are.
    """
    spelling = {str(f).upper(): str(f) for f in features}
    names = [spelling.get(name.upper(), name) for name in expression.var_names]
    if names == list(expression.var_names) or len(set(names)) < len(names):
        return expression
    renamed = expression.copy()
    renamed.var_names = names
    return renamed


def predict(
    expression: AnnData,
    model,
    *,
    label_map: dict,
    min_shared_genes: int,
    chunk_size: int = 2000,
) -> tuple[pd.DataFrame, str]:
    """Reference labels of every cell, in this project's vocabulary.

    Returns
    -------
    tuple
        A frame indexed like ``expression.obs`` with :data:`REFERENCE_COLUMNS` (all missing
        when the reference was not used), and a sentence saying what was done or why not.
    """
    import celltypist

    table = pd.DataFrame(index=expression.obs_names, columns=list(REFERENCE_COLUMNS))
    table["reference_confidence"] = np.nan
    expression = _model_case(expression, model.features)
    shared = int(np.isin(model.features, expression.var_names).sum())
    if shared < min_shared_genes:
        note = (
            f"reference not used: only {shared} of its {len(model.features)} genes are in "
            f"this dataset (annotation.reference_min_shared_genes = {min_shared_genes})"
        )
        return table, note
    decisions = []
    # CellTypist scales the shared genes densely: label chunks of cells to bound the memory.
    for start in range(0, expression.n_obs, chunk_size):
        chunk = expression[start : start + chunk_size].copy()
        decisions.append(celltypist.annotate(chunk, model=model).decision_matrix)
    vocabulary = _vocabulary(label_map)
    call, confidence = vocabulary_calls(pd.concat(decisions), vocabulary)
    table["reference_label"] = call.to_numpy()
    known = set(vocabulary["cell_type"].dropna())
    table["reference_cell_type"] = call.where(call.isin(known)).to_numpy()
    lineage_of = dict(zip(vocabulary["cell_type"].fillna(""), vocabulary["lineage"], strict=True))
    table["reference_lineage"] = [
        lineage_of.get(c) or (c.removeprefix("lineage: ") if c.startswith("lineage: ") else None)
        for c in call.astype(str)
    ]
    table["reference_confidence"] = confidence
    table.attrs["known_types"], table.attrs["known_lineages"] = known_vocabulary(
        model.cell_types, vocabulary
    )
    note = f"reference used: {shared} of its {len(model.features)} genes in this dataset"
    return table, note


def leave_one_donor_out(
    expression: AnnData,
    labels: pd.Series,
    donors: pd.Series,
    *,
    label_map: dict,
    min_cells: int,
    min_shared_genes: int,
    max_iter: int = 1000,
) -> tuple[pd.DataFrame, str]:
    """Reference labels of a reference dataset: each donor labelled by the other donors.

    A cell's own label never reaches the model that labels it. With one donor, nothing is
    labelled (the note says so).
    """
    table = pd.DataFrame(index=expression.obs_names, columns=list(REFERENCE_COLUMNS))
    table["reference_confidence"] = np.nan
    donor_ids = sorted(donors.astype(str).unique())
    if len(donor_ids) < 2:
        return table, "reference not used: this dataset is the reference and has one donor"
    for donor in donor_ids:
        held_out = (donors.astype(str) == donor).to_numpy()
        train = training_labels(labels[~held_out], min_cells=min_cells)
        model = train_model(expression[~held_out], train, max_iter=max_iter)
        part, _ = predict(
            expression[held_out], model, label_map=label_map, min_shared_genes=min_shared_genes
        )
        table.loc[part.index] = part
        for key in ("known_types", "known_lineages"):
            known = part.attrs.get(key, set())
            table.attrs[key] = table.attrs[key] & known if key in table.attrs else known
    table["reference_confidence"] = table["reference_confidence"].astype(float)
    note = (
        f"this dataset is the reference: each of its {len(donor_ids)} donors was labelled by a "
        "model trained on the other donors"
    )
    return table, note


def _refine(reference: pd.Series, markers: pd.Series, parents: dict[str, str]) -> pd.Series:
    """The reference's type, with subtypes (``CD4 T``) decided by the markers' evidence.

    A subtype needs the markers: where they call another subtype of the same parent (or the
    reference calls the parent), the markers' subtype is taken; where they call neither, the
    parent (``T cell``): CD4 vs CD8 only with CD4/CD8 evidence.
    """
    ref_parent = reference.map(parents).fillna(reference)
    marker_parent = markers.map(parents).fillna(markers)
    refined = reference.where(markers.map(parents).isna() | (marker_parent != ref_parent), markers)
    unsupported = reference.map(parents).notna() & (refined != markers)
    return refined.where(~unsupported, ref_parent)


def _marker_confidence(margin: pd.Series) -> np.ndarray:
    """The markers' lineage margin (z units, >= 0) as a 0-1 confidence: m / (1 + m)."""
    values = np.clip(margin.astype(float).fillna(0.0).to_numpy(), 0.0, None)
    return values / (1.0 + values)


def reconcile(
    obs: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    reference_types: set[str],
    reference_lineages: set[str],
    parents: dict[str, str],
    min_confidence: float,
) -> pd.DataFrame:
    """Final cell type per cell from the reference's call and the marker panels' call.

    The lineage is the markers' where they call one (they are right about lineages far more
    often than about types); the reference then decides the type within that lineage when
    its confidence is at least ``min_confidence``, among the types it was trained on
    (``reference_types``). The markers decide where the reference is not confident, where it
    has no label for the markers' lineage or type (an osteoclast against a blood reference),
    and between subtypes (:func:`_refine`). A reference call in another lineage than the
    markers' is not taken; it and a reference type that the markers contradict within the
    lineage are flagged ``contradicted``.

    Returns
    -------
    pandas.DataFrame
        Indexed like ``obs``: ``cell_type``, ``cell_lineage``, ``cell_type_source`` (one of
        :data:`SOURCES`), ``cell_type_confidence`` (0-1), ``cell_type_contradicted``.
    """
    marker_type = obs["cell_type"].astype(str)
    marker_lineage = obs["cell_lineage"].astype(str)
    ref_type = reference["reference_cell_type"].reindex(obs.index).astype(object)
    ref_lineage = reference["reference_lineage"].reindex(obs.index).astype(object)
    confidence = reference["reference_confidence"].reindex(obs.index).astype(float)
    assigned = marker_lineage != UNASSIGNED
    typed = marker_type != UNASSIGNED
    confident = ref_lineage.notna() & (confidence >= min_confidence)
    known_lineage = marker_lineage.isin(reference_lineages)
    other_lineage = confident & assigned & known_lineage & (ref_lineage != marker_lineage)
    usable = confident & ~other_lineage
    usable &= ~(assigned & ~known_lineage)
    usable &= ~(typed & ~marker_type.isin(reference_types))
    called = ref_type.where(ref_type.notna(), marker_type.where(marker_lineage == ref_lineage))
    called = _refine(called.fillna(UNASSIGNED), marker_type, parents)
    final_type = marker_type.where(~usable, called)
    final_lineage = final_type.map(CELL_TYPES).fillna(marker_lineage.where(~usable, ref_lineage))
    related = (final_type.map(parents).fillna(final_type) == marker_type) | (
        marker_type.map(parents).fillna(marker_type) == final_type
    )
    agree = usable & ((final_type == marker_type) | related)
    source = np.select([agree, usable], ["both", "reference"], default="markers")
    result = pd.DataFrame(index=obs.index)
    result["cell_type"] = final_type.astype(str)
    result["cell_lineage"] = final_lineage.astype(str)
    result["cell_type_source"] = pd.Categorical(source, categories=list(SOURCES))
    result["cell_type_confidence"] = np.where(
        usable, confidence.fillna(0.0), _marker_confidence(obs["annotation_margin"])
    ).round(4)
    result["cell_type_contradicted"] = (other_lineage | (usable & typed & ~agree)).to_numpy()
    return result


SOURCES_COLUMNS = (
    "cell_type",
    "cell_lineage",
    "n_cells",
    "source_both",
    "source_reference",
    "source_markers",
    "median_confidence",
    "marker_evidence",
    "contradicted",
    "flag",
)


def sources_table(
    obs: pd.DataFrame, *, evidence: dict[str, str], flags: dict[str, str]
) -> pd.DataFrame:
    """Per final cell type: cells by source, median confidence, marker evidence, flags.

    ``evidence`` maps a cell type to a sentence of marker detection (:func:`marker_evidence`);
    ``flags`` a cell type to a caveat (e.g. a bone cell type in a dataset that is not bone).
    """
    groups = obs.groupby(obs["cell_type"].astype(str), observed=True, sort=True)
    rows = []
    for cell_type, cells in groups:
        counts = cells["cell_type_source"].astype(str).value_counts()
        rows.append(
            {
                "cell_type": cell_type,
                "cell_lineage": cells["cell_lineage"].astype(str).mode().iat[0],
                "n_cells": len(cells),
                **{f"source_{s}": int(counts.get(s, 0)) for s in SOURCES},
                "median_confidence": round(float(cells["cell_type_confidence"].median()), 3),
                "marker_evidence": evidence.get(cell_type, ""),
                "contradicted": int(cells["cell_type_contradicted"].sum()),
                "flag": flags.get(cell_type, ""),
            }
        )
    table = pd.DataFrame(rows, columns=list(SOURCES_COLUMNS))
    return table.sort_values(["n_cells", "cell_type"], ascending=[False, True], ignore_index=True)
