"""Donor-level pseudobulk differential expression per cell type, its enrichment and figures.

Cells of one sample share its donor, handling and sequencing run, so they are not replicates
of a condition: the counts of each sample x cell type are summed (a pseudobulk) and the
samples are the replicates of a negative-binomial GLM (PyDESeq2, DESeq2's model). Groups with
fewer than ``min_samples`` samples in a condition are reported, not tested.

Glue only, over maintained libraries:

- Summing: scanpy's ``sc.get.aggregate`` (sparse indicator matrix times the CSR counts; the
  cells x genes matrix is never densified). Not decoupler 2.2.0's ``dc.pp.pseudobulk``, which
  densifies every sample x group block of cells (``profile.toarray()``), returns an all-zero
  row for every absent sample x group combination (scverse/decoupler#268), drops genes with
  no counts and any obs column that is not constant within a sample x group. scanpy's own
  known bugs are avoided: no NaN in the grouping columns (scverse/scanpy#3903, checked) and no
  ``mask`` (scverse/scanpy#4178; cells are subset first).
- Gene filter: decoupler's ``dc.pp.filter_by_expr`` (edgeR's filterByExpr, edgeR defaults),
  given conditions as plain text: on a categorical column with an unused category its
  smallest group size is 0 and the filter keeps nearly every gene.
- Model, Wald test, Benjamini-Hochberg ``padj`` (after PyDESeq2's independent filtering and
  Cook's outlier handling) and apeGLM-style shrunken fold changes: PyDESeq2 0.5.
- Enrichment: :func:`osteoimmune.enrichment.prerank_by_group` (gseapy prerank, offline).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import anndata as ad
import decoupler as dc
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scanpy as sc  # noqa: E402
from formulaic import model_matrix  # noqa: E402
from pydeseq2.dds import DeseqDataSet  # noqa: E402
from pydeseq2.default_inference import DefaultInference  # noqa: E402
from pydeseq2.ds import DeseqStats  # noqa: E402

from osteoimmune.enrichment import PRERANK_COLUMNS, prerank_by_group  # noqa: E402
from osteoimmune.errors import PseudobulkError  # noqa: E402
from osteoimmune.panels import UNASSIGNED  # noqa: E402
from osteoimmune.signatures import SPECIES, SignatureLibrary, load_library  # noqa: E402

log = logging.getLogger(__name__)

DONOR, CONDITION, GROUP = "donor", "condition", "group"
TABLE_COLUMNS = (
    "sample",
    "donor",
    "condition",
    "group",
    "n_cells",
    "total_counts",
    "kept",
    "reason",
)
RESULT_COLUMNS = (
    "group",
    "contrast",
    "gene",
    "base_mean",
    "log2fc",
    "log2fc_shrunk",
    "lfc_se",
    "stat",
    "pvalue",
    "padj",
)
SUMMARY_COLUMNS = (
    "group",
    "contrast",
    "case",
    "reference",
    "n_samples_case",
    "n_samples_ref",
    "tested",
    "reason",
    "genes_tested",
    "n_significant",
    "design",
    "note",
)
ENRICHMENT_COLUMNS = ("group", "contrast", *PRERANK_COLUMNS[1:])
MEDIATORS = {
    "human": ("TNFSF11", "TNFRSF11B", "TNFRSF11A", "CSF1", "IL1B", "TNF", "IL6", "IL17A"),
    "mouse": ("Tnfsf11", "Tnfrsf11b", "Tnfrsf11a", "Csf1", "Il1b", "Tnf", "Il6", "Il17a"),
}
CORE_SETS = (
    "macrophage_M1_classical_core",
    "macrophage_M2a_alternative_core",
    "trained_immunity_core6_zhang2022",
)


# --- pseudobulk --------------------------------------------------------------------------


def _where(adata: ad.AnnData) -> str:
    return f"Dataset {adata.uns.get('osteoimmune', {}).get('dataset', '(unnamed)')}"


def _check_cells(adata: ad.AnnData, *, keys: Sequence[str], layer: str) -> None:
    where = _where(adata)
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        msg = (
            f"{where}: obs has no column(s) {missing} for the pseudobulk; the reader sets sample, "
            "donor and condition, annotation sets cell_type."
        )
        raise PseudobulkError(msg)
    for key in keys:
        n_missing = int(adata.obs[key].isna().sum())
        if n_missing:
            msg = f"{where}: {n_missing} cells have no '{key}'; fill obs['{key}'] first."
            raise PseudobulkError(msg)
    if layer not in adata.layers:
        msg = f"{where}: no layer '{layer}' of raw counts; keep the counts layer of the reader."
        raise PseudobulkError(msg)
    if not _raw_counts(adata.layers[layer]):
        msg = (
            f"{where}: layer '{layer}' holds negative or non-integer values; pseudobulk "
            "differential expression needs raw counts."
        )
        raise PseudobulkError(msg)


def _raw_counts(matrix, *, chunk: int = 10_000_000) -> bool:
    """Whether the stored values are non-negative integers, checked a chunk at a time."""
    values = matrix.data if hasattr(matrix, "data") else np.asarray(matrix).ravel()
    for start in range(0, values.size, chunk):
        part = values[start : start + chunk]
        if (part < 0).any() or not np.array_equal(part, np.rint(part)):
            return False
    return True


def _sample_design(obs: pd.DataFrame, *, sample_key: str, where: str) -> pd.DataFrame:
    """One row per sample with its donor and condition; a sample may have only one of each."""
    design = obs.groupby(sample_key, observed=True)[[DONOR, CONDITION]].nunique()
    mixed = design.index[(design > 1).any(axis=1)].astype(str).tolist()
    if mixed:
        msg = (
            f"{where}: samples {mixed} have cells of several donors or conditions; a "
            "pseudobulk sample must be one donor in one condition: fix the samplesheet."
        )
        raise PseudobulkError(msg)
    first = obs.groupby(sample_key, observed=True)[[DONOR, CONDITION]].first()
    return first.astype(str)


def _covariate_values(obs: pd.DataFrame, covariates: Sequence[str], keys: list[str]):
    """Per sample x group: numeric covariates averaged, categorical ones if single (else NaN)."""
    by = [
        obs[k].astype(str).rename(name) for k, name in zip(keys, ("sample", "group"), strict=True)
    ]
    values = {}
    for name in covariates:
        column = obs[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            values[name] = column.astype(float).groupby(by).mean()
        else:
            text = column.astype(object).where(column.notna())
            values[name] = text.groupby(by).agg(
                lambda v: v.iloc[0] if v.nunique(dropna=False) == 1 else None
            )
    return pd.DataFrame(values)


def _grid(obs: pd.DataFrame, assigned: np.ndarray, *, sample_key: str, group_key: str):
    samples = sorted(obs[sample_key].astype(str).unique())
    groups = sorted(obs.loc[assigned, group_key].astype(str).unique())
    index = pd.MultiIndex.from_product([samples, groups], names=["sample", "group"])
    return index


def _reason(n_cells: int, total: float, *, min_cells: int, min_counts: float) -> str:
    if n_cells == 0:
        return "no cells"
    if n_cells < min_cells:
        return f"{n_cells} cells < min_cells {min_cells}"
    if total < min_counts:
        return f"{int(total)} counts < min_counts {min_counts:g}"
    return ""


def pseudobulk(
    adata: ad.AnnData,
    *,
    group_key: str = "cell_type",
    sample_key: str = "sample",
    layer: str = "counts",
    min_cells: int = 10,
    min_counts: float = 1000,
) -> tuple[ad.AnnData, pd.DataFrame]:
    """Sum the raw counts of every sample x group (cell type); 'unassigned' cells never count.

    Parameters
    ----------
    adata
        The pipeline's final AnnData: raw counts in ``layers[layer]`` (CSR), obs
        ``group_key``, ``sample_key``, ``donor``, ``condition`` and the covariates named in
        ``uns['osteoimmune']['covariates']``.
    group_key, sample_key
        The cell grouping and the sample column of obs.
    layer
        The layer of raw (integer) counts.
    min_cells, min_counts
        A sample x group is kept with at least this many cells and summed counts.

    Returns
    -------
    pseudobulk : anndata.AnnData
        Kept sample x groups (rows) x genes: ``X`` the summed counts (dense int64), obs
        ``sample``, ``donor``, ``condition`` (categorical, the dataset's order), the
        covariates (numeric ones averaged over the cells, categorical ones when one value,
        else NaN), ``group``, ``n_cells``, ``total_counts``; ``uns['osteoimmune']`` copied,
        with ``covariates``.
    table : pandas.DataFrame
        Every sample x group (:data:`TABLE_COLUMNS`), ``kept`` and the ``reason`` when not.
    """
    covariates = list(adata.uns.get("osteoimmune", {}).get("covariates", []))
    keys = [sample_key, group_key]
    _check_cells(adata, keys=[*keys, DONOR, CONDITION, *covariates], layer=layer)
    where = _where(adata)
    obs = adata.obs
    assigned = (obs[group_key].astype(str) != UNASSIGNED).to_numpy()
    design = _sample_design(obs, sample_key=sample_key, where=where)
    grid = _grid(obs, assigned, sample_key=sample_key, group_key=group_key)
    # All cells at once, no copy of the matrix: unassigned cells sum into rows of their own,
    # which are dropped here (reindexed to the grid of assigned groups).
    summed = sc.get.aggregate(adata, by=keys, func="sum", layer=layer)
    summed_index = pd.MultiIndex.from_arrays([summed.obs[k].astype(str) for k in keys])
    sums = pd.DataFrame(np.rint(summed.layers["sum"]).astype(np.int64), index=summed_index)
    sums = sums[summed_index.isin(grid)]
    n_cells = obs.loc[assigned, keys].astype(str).value_counts().reindex(grid, fill_value=0)
    table = pd.DataFrame(
        {
            "n_cells": n_cells.to_numpy(),
            "total_counts": sums.sum(axis=1).reindex(grid, fill_value=0).to_numpy(),
        },
        index=grid,
    )
    table = table.reset_index().join(design, on="sample")
    table["reason"] = [
        _reason(n, t, min_cells=min_cells, min_counts=min_counts)
        for n, t in zip(table["n_cells"], table["total_counts"], strict=True)
    ]
    table["kept"] = table["reason"] == ""
    table = table[list(TABLE_COLUMNS)]
    pb = _pseudobulk_anndata(adata, sums, table, covariates=covariates, keys=keys)
    return pb, table


def _pseudobulk_anndata(adata, sums, table, *, covariates, keys) -> ad.AnnData:
    kept = table[table["kept"]].reset_index(drop=True)
    index = pd.MultiIndex.from_frame(kept[["sample", "group"]])
    obs = kept[["sample", "donor", "condition"]].copy()
    cov = _covariate_values(adata.obs, covariates, keys)
    for name in covariates:
        obs[name] = cov[name].reindex(index).to_numpy()
    obs[GROUP] = kept["group"].to_numpy()
    obs["n_cells"] = kept["n_cells"].to_numpy()
    obs["total_counts"] = kept["total_counts"].to_numpy()
    obs.index = pd.Index([f"{s}|{g}" for s, g in index])
    obs[CONDITION] = pd.Categorical(obs[CONDITION], categories=condition_order(adata.obs))
    matrix = sums.reindex(index).to_numpy(dtype=np.int64)
    pb = ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=adata.var_names.astype(str)))
    pb.uns["osteoimmune"] = {**adata.uns.get("osteoimmune", {}), "covariates": covariates}
    return pb


def condition_order(obs: pd.DataFrame) -> list[str]:
    """The conditions present in ``obs``, in their categorical order (else sorted)."""
    column = obs[CONDITION]
    present = set(column.astype(str))
    if isinstance(column.dtype, pd.CategoricalDtype):
        return [str(c) for c in column.cat.categories if str(c) in present]
    return sorted(present)


# --- differential expression -------------------------------------------------------------


def _term(name: str) -> str:
    return name if name.isidentifier() else f"`{name}`"


def _estimable(meta: pd.DataFrame, terms: list[str]) -> bool:
    """Whether ``~ terms + condition`` is full rank with at least one residual df."""
    matrix = model_matrix(" + ".join(["1", *map(_term, terms), CONDITION]), meta)
    values = np.asarray(matrix, dtype=float)
    n, p = values.shape
    return n - p >= 1 and np.linalg.matrix_rank(values) == p


def _shared_donors(meta: pd.DataFrame) -> list[str]:
    per_donor = meta.groupby(DONOR, observed=True)[CONDITION].nunique()
    return sorted(per_donor.index[per_donor > 1].astype(str))


def _design(meta: pd.DataFrame, *, covariates: Sequence[str], paired: bool, group: str):
    """Choose the design's terms: donor (paired), covariates, then condition; with notes."""
    terms, notes = [], []
    shared = _shared_donors(meta)
    if paired and not shared:
        notes.append(f"paired, but no donor of {group} is in two tested conditions: no donor term")
    elif paired and not _estimable(meta, [DONOR]):
        notes.append(f"paired, but too few samples of {group} for a donor term: donor not blocked")
    elif paired:
        terms.append(DONOR)
    elif shared:
        notes.append(
            f"donors {', '.join(shared)} are in two conditions but the study is not paired"
        )
    for name in covariates:
        values = meta[name]
        if values.isna().any():
            notes.append(
                f"covariate {name} dropped: unknown or mixed in {values.isna().sum()} samples"
            )
        elif values.nunique() < 2:
            notes.append(f"covariate {name} dropped: constant in {group}")
        elif not _estimable(meta, [*terms, name]):
            notes.append(f"covariate {name} dropped: confounded with condition or donor in {group}")
        else:
            terms.append(name)
    return "~ " + " + ".join([*map(_term, terms), CONDITION]), notes


def _prepare_meta(sub: ad.AnnData, *, conditions: list[str], covariates: Sequence[str]):
    meta = sub.obs[[DONOR, CONDITION, *covariates]].copy()
    meta[DONOR] = pd.Categorical(meta[DONOR].astype(str))
    meta[CONDITION] = pd.Categorical(meta[CONDITION].astype(str), categories=conditions)
    for name in covariates:
        values = meta[name]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            # scaled so that the GLM's coefficients are of similar size (as DESeq2 advises)
            sd = values.std(ddof=0)
            meta[name] = (values - values.mean()) / (sd if sd > 0 else 1.0)
        else:
            meta[name] = pd.Categorical(values.astype(object).where(values.notna()))
    return meta


def _expressed_genes(sub: ad.AnnData) -> list[str]:
    """Genes passing edgeR's filterByExpr (decoupler), conditions given as plain text."""
    frame = ad.AnnData(
        X=np.asarray(sub.X, dtype=float),
        obs=pd.DataFrame(
            {CONDITION: sub.obs[CONDITION].astype(str).to_numpy()}, index=sub.obs_names
        ),
        var=pd.DataFrame(index=sub.var_names),
    )
    genes = dc.pp.filter_by_expr(frame, group=CONDITION, inplace=False)
    keep = set(map(str, genes))
    return [g for g in sub.var_names if g in keep]  # the dataset's gene order


def _contrast_table(dds: DeseqDataSet, *, case: str, reference: str, alpha: float):
    inference = DefaultInference(n_cpus=1)
    stats = DeseqStats(
        dds, contrast=[CONDITION, case, reference], alpha=alpha, inference=inference, quiet=True
    )
    stats.summary()
    table = stats.results_df.copy()  # lfc_shrink overwrites results_df in place
    vector = np.asarray(stats.contrast_vector, dtype=float)
    (coef,) = np.flatnonzero(vector)  # the reference is the base level: one coefficient
    stats.lfc_shrink(coeff=stats.LFC.columns[coef])
    return pd.DataFrame(
        {
            "gene": table.index.astype(str),
            "base_mean": table["baseMean"].to_numpy(float),
            "log2fc": table["log2FoldChange"].to_numpy(float),
            "log2fc_shrunk": stats.results_df["log2FoldChange"].to_numpy(float),
            "lfc_se": table["lfcSE"].to_numpy(float),
            "stat": table["stat"].to_numpy(float),
            "pvalue": table["pvalue"].to_numpy(float),
            "padj": table["padj"].to_numpy(float),
        }
    )


def _untested_reason(counts: dict[str, int], names: Sequence[str], min_samples: int) -> str:
    few = [f"{counts[c]} sample{'s' * (counts[c] != 1)} in {c}" for c in names]
    few = [text for text, c in zip(few, names, strict=True) if counts[c] < min_samples]
    return f"{'; '.join(few)}: no test (needs {min_samples} per condition)" if few else ""


def _summary_row(group, case, reference, counts, **fields) -> dict:
    row = {
        "group": group,
        "contrast": f"{case} vs {reference}" if case else "",
        "case": case,
        "reference": reference,
        "n_samples_case": counts.get(case, 0) if case else 0,
        "n_samples_ref": counts.get(reference, 0),
        "tested": False,
        "reason": "",
        "genes_tested": 0,
        "n_significant": 0,
        "design": "",
        "note": "",
    }
    row.update(fields)
    return row


def _check_reference(conditions: list[str], reference: str) -> None:
    if reference not in conditions:
        msg = (
            f"Reference condition '{reference}' is not in the pseudobulk (conditions: "
            f"{', '.join(conditions)}); set the registry's reference_condition to one of them."
        )
        raise PseudobulkError(msg)


def _fit(sub: ad.AnnData, meta: pd.DataFrame, genes: list[str], design: str) -> DeseqDataSet:
    counts = pd.DataFrame(sub[:, genes].X.astype(np.int64), index=sub.obs_names, columns=genes)
    dds = DeseqDataSet(
        counts=counts,
        metadata=meta,
        design=design,
        refit_cooks=True,
        inference=DefaultInference(n_cpus=1),
        quiet=True,
    )
    dds.deseq2()
    return dds


def differential_expression(
    pb: ad.AnnData,
    *,
    group: str,
    reference: str,
    covariates: Sequence[str] = (),
    paired: bool = False,
    min_samples: int = 2,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test every condition against ``reference`` in one group's pseudobulk samples.

    Samples of conditions with at least ``min_samples`` samples in the group are fitted
    together with PyDESeq2, design ``~ [donor +] covariates + condition``; genes pass
    edgeR's filterByExpr first (decoupler, edgeR's defaults). ``donor`` blocks only when
    ``paired`` and a donor has samples in two fitted conditions; a covariate that is
    unknown for a sample, constant, or confounded with condition or donor (design not full
    rank, or no residual degree of freedom) is dropped and the summary's ``note`` says so.

    Parameters
    ----------
    pb
        The pseudobulk of :func:`pseudobulk`.
    group
        The group (cell type) to test.
    reference
        The condition every other condition is compared with.
    covariates
        obs columns of ``pb`` to adjust for; numeric ones are standardised.
    paired
        The study has donors in several conditions (the registry's ``paired``).
    min_samples
        Fewer samples in a condition and its contrast is not tested; the summary says why.
    alpha
        Significance level of ``padj`` (also PyDESeq2's independent-filtering target).
    seed
        Kept for the pipeline's interface: PyDESeq2's fit has no random step, results do
        not depend on it.

    Returns
    -------
    results : pandas.DataFrame
        :data:`RESULT_COLUMNS`, one row per contrast x tested gene: Wald ``stat`` and
        ``pvalue``, PyDESeq2's Benjamini-Hochberg ``padj`` (NaN for genes removed by
        independent filtering or Cook's distance), ``log2fc`` (MLE) with ``lfc_se`` and
        ``log2fc_shrunk`` (apeGLM-style prior).
    summary : pandas.DataFrame
        :data:`SUMMARY_COLUMNS`, one row per contrast (one row without contrast when the
        data have a single condition).
    """
    del seed  # no random step; see the docstring
    conditions = condition_order(pb.obs)
    _check_reference(conditions, reference)
    sub = pb[pb.obs[GROUP].astype(str) == group]
    # a condition with no pseudobulk of this group counts 0 samples (not a missing key)
    counts = dict.fromkeys(conditions, 0) | sub.obs[CONDITION].astype(str).value_counts().to_dict()
    cases = [c for c in conditions if c != reference]
    if not cases:
        row = _summary_row(group, "", reference, counts)
        row["reason"] = f"single condition ({reference}): nothing to compare"
        return pd.DataFrame(columns=RESULT_COLUMNS), pd.DataFrame([row], columns=SUMMARY_COLUMNS)
    reasons = {c: _untested_reason(counts, [c, reference], min_samples) for c in cases}
    testable = [c for c in cases if not reasons[c]]
    rows = {c: _summary_row(group, c, reference, counts, reason=reasons[c]) for c in cases}
    tables = []
    if testable:
        fitted = [reference, *testable]
        sub = sub[sub.obs[CONDITION].astype(str).isin(fitted)]
        tables = _test_group(sub, fitted, rows, covariates=covariates, paired=paired, alpha=alpha)
    results = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    summary = pd.DataFrame([rows[c] for c in cases], columns=SUMMARY_COLUMNS)
    return results.reindex(columns=RESULT_COLUMNS), summary


def _test_group(sub, fitted, rows, *, covariates, paired, alpha) -> list[pd.DataFrame]:
    group = str(sub.obs[GROUP].iloc[0])
    genes = _expressed_genes(sub)
    if not genes:
        for case in fitted[1:]:
            rows[case]["reason"] = "no gene passed the expression filter (filterByExpr)"
        return []
    meta = _prepare_meta(sub, conditions=fitted, covariates=covariates)
    design, notes = _design(meta, covariates=covariates, paired=paired, group=group)
    log.info("Pseudobulk DE of %s: %d samples, %d genes, %s", group, sub.n_obs, len(genes), design)
    dds = _fit(sub, meta, genes, design)
    tables = []
    for case in fitted[1:]:
        table = _contrast_table(dds, case=case, reference=fitted[0], alpha=alpha)
        table.insert(0, "contrast", rows[case]["contrast"])
        table.insert(0, "group", group)
        tables.append(table)
        rows[case].update(
            tested=True,
            genes_tested=len(genes),
            n_significant=int((table["padj"] < alpha).sum()),
            design=design,
            note="; ".join(notes),
        )
    return tables


def _sort_results(results: pd.DataFrame) -> pd.DataFrame:
    order = results.sort_values(
        ["group", "contrast", "padj", "pvalue", "gene"], na_position="last", kind="mergesort"
    )
    return order.reset_index(drop=True)


def compare_expression(
    adata: ad.AnnData,
    *,
    group_key: str = "cell_type",
    reference: str | None = None,
    covariates: Sequence[str] | None = None,
    paired: bool = False,
    min_cells: int = 10,
    min_counts: float = 1000,
    min_samples: int = 2,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Pseudobulk differential expression of every group (cell type) between conditions.

    Parameters
    ----------
    adata
        The pipeline's final AnnData (see :func:`pseudobulk`).
    group_key
        The cell grouping; 'unassigned' cells are never used.
    reference
        The reference condition (the registry's ``reference_condition``); None takes the
        first condition.
    covariates
        Covariates of the design; None takes ``uns['osteoimmune']['covariates']``.
    paired
        The registry's ``paired``: donors in several conditions are blocked.
    min_cells, min_counts
        Pseudobulk sample filters (:func:`pseudobulk`).
    min_samples, alpha, seed
        As in :func:`differential_expression`.

    Returns
    -------
    results : pandas.DataFrame
        :data:`RESULT_COLUMNS`, sorted by group, contrast, ``padj``, ``pvalue``, gene.
    summary : pandas.DataFrame
        :data:`SUMMARY_COLUMNS`, one row per group x contrast, sorted by group and contrast.
    table : pandas.DataFrame
        The pseudobulk table of every sample x group (:func:`pseudobulk`).
    """
    pb, table = pseudobulk(adata, group_key=group_key, min_cells=min_cells, min_counts=min_counts)
    results, summary = compare_pseudobulk(
        pb, table, conditions=condition_order(adata.obs), reference=reference,
        covariates=covariates, paired=paired, min_samples=min_samples, alpha=alpha, seed=seed,
    )  # fmt: skip
    return results, summary, table


def compare_pseudobulk(
    pb: ad.AnnData,
    table: pd.DataFrame,
    *,
    conditions: list[str],
    reference: str | None = None,
    covariates: Sequence[str] | None = None,
    paired: bool = False,
    min_samples: int = 2,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The DE step of :func:`compare_expression` on pseudobulks already summed.

    ``pb`` and ``table`` are :func:`pseudobulk`'s; ``conditions`` the dataset's conditions in
    order (the first is the default reference). Returns ``(results, summary)``.
    """
    reference = conditions[0] if reference is None else reference
    _check_reference(conditions, reference)
    if covariates is None:
        covariates = pb.uns["osteoimmune"]["covariates"]
    unknown = [c for c in covariates if c not in pb.obs.columns]
    if unknown:
        msg = f"{_where(pb)}: covariates {unknown} are not obs columns; list existing ones."
        raise PseudobulkError(msg)
    results, summaries = [], []
    for group in sorted(table["group"].unique()):
        res, summ = differential_expression(
            pb,
            group=group,
            reference=reference,
            covariates=covariates,
            paired=paired,
            min_samples=min_samples,
            alpha=alpha,
            seed=seed,
        )
        results.append(res)
        summaries.append(summ)
    results = pd.concat([r for r in results if not r.empty] or [pd.DataFrame()], ignore_index=True)
    # no group with a pseudobulk (too few cells everywhere): an empty summary
    summary = pd.concat(summaries or [pd.DataFrame(columns=SUMMARY_COLUMNS)], ignore_index=True)
    summary = summary.sort_values(["group", "contrast"])
    results = _sort_results(results.reindex(columns=RESULT_COLUMNS))
    return results, summary.reset_index(drop=True)


# --- genes of interest and enrichment ----------------------------------------------------


def osteoimmune_genes(species: str, *, library: SignatureLibrary | None = None) -> list[str]:
    """The RANKL/OPG/RANK axis, CSF1 and osteoclastogenic cytokines, then the core sets' genes.

    Parameters
    ----------
    species
        ``human`` or ``mouse`` (symbols spelled for it: TNFSF11 or Tnfsf11).
    library
        The signature library; None loads the packaged one. Its M1, M2a and trained-immunity
        core sets (:data:`CORE_SETS`) add their genes.

    Returns
    -------
    list of str
        Genes in that order, each once.
    """
    if species not in SPECIES:
        msg = f"Unknown species '{species}'; use one of {', '.join(SPECIES)}."
        raise PseudobulkError(msg)
    library = load_library() if library is None else library
    genes = [*MEDIATORS[species]]
    for name in CORE_SETS:
        genes.extend(library.genes(name, species))
    return list(dict.fromkeys(genes))


def highlight(results: pd.DataFrame, genes: Iterable[str]) -> pd.DataFrame:
    """The rows of ``genes`` (exact symbols), whatever their rank, in the order of ``results``."""
    wanted = set(map(str, genes))
    return results[results["gene"].astype(str).isin(wanted)].reset_index(drop=True)


def de_enrichment(
    results: pd.DataFrame,
    *,
    gene_sets: Mapping[str, Sequence[str]],
    min_size: int = 5,
    max_size: int = 500,
    permutations: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Prerank GSEA of each group x contrast, genes ranked by the DE Wald statistic.

    A positive NES means the set's genes are up in the case condition, e.g. the osteoclast
    program up in monocytes of osteoporotic donors is one row.

    Parameters
    ----------
    results
        The results of :func:`compare_expression` (all tested genes of each contrast).
    gene_sets
        ``{set name: genes}``, e.g. :func:`osteoimmune.enrichment.gene_set_dict`.
    min_size, max_size, permutations, seed
        As in :func:`osteoimmune.enrichment.prerank_by_group` (gseapy prerank, one thread).

    Returns
    -------
    pandas.DataFrame
        :data:`ENRICHMENT_COLUMNS`, one row per group x contrast x set that could be tested,
        sorted by group, contrast, ``pval`` and term.
    """
    keys = results[["group", "contrast"]].drop_duplicates().sort_values(["group", "contrast"])
    label = {(g, c): f"{i:06d}" for i, (g, c) in enumerate(keys.itertuples(index=False))}
    ranked = results.assign(
        _key=[label[(g, c)] for g, c in zip(results["group"], results["contrast"], strict=True)]
    )
    table = prerank_by_group(
        ranked,
        gene_sets,
        group_col="_key",
        score_col="stat",
        min_size=min_size,
        max_size=max_size,
        permutations=permutations,
        seed=seed,
    )
    back = {v: k for k, v in label.items()}
    table.insert(0, "contrast", [back[k][1] for k in table["group"]])
    table["group"] = [back[k][0] for k in table["group"]]
    table = table.sort_values(["group", "contrast", "pval", "term"], kind="mergesort")
    return table.reset_index(drop=True)[list(ENRICHMENT_COLUMNS)]


# --- figures -----------------------------------------------------------------------------


def volcano(
    results: pd.DataFrame,
    *,
    group: str,
    contrast: str,
    highlight: Iterable[str] = (),
    alpha: float = 0.05,
) -> plt.Figure:
    """Volcano plot of one group x contrast: log2 fold change vs -log10 p, highlighted genes named.

    Genes with ``padj`` < ``alpha`` are red; genes in ``highlight`` are circled and labelled
    whatever their rank.
    """
    rows = results[(results["group"] == group) & (results["contrast"] == contrast)]
    rows = rows.dropna(subset=["pvalue", "log2fc"])
    y = -np.log10(rows["pvalue"].clip(lower=1e-300).to_numpy(float))
    x = rows["log2fc"].to_numpy(float)
    significant = (rows["padj"] < alpha).to_numpy()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(x[~significant], y[~significant], s=6, color="lightgrey", label="not significant")
    ax.scatter(
        x[significant],
        y[significant],
        s=8,
        color="tab:red",
        label=f"padj < {alpha:g} ({significant.sum()})",
    )
    marked = rows["gene"].isin(set(highlight)).to_numpy()
    ax.scatter(x[marked], y[marked], s=30, facecolors="none", edgecolors="black", linewidths=0.8)
    for gene, xi, yi in zip(rows["gene"][marked], x[marked], y[marked], strict=True):
        ax.annotate(gene, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axvline(0, color="grey", linewidth=0.6, linestyle=":")
    ax.set(xlabel=f"log2 fold change ({contrast})", ylabel="-log10 p (Wald)")
    ax.set_title(f"{group}: {contrast} ({len(rows)} genes)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def _log_cpm(pb: ad.AnnData) -> pd.DataFrame:
    counts = np.asarray(pb.X, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    values = np.log2(counts / np.where(totals > 0, totals, 1) * 1e6 + 1)
    return pd.DataFrame(values, index=pb.obs_names, columns=pb.var_names)


def _top_genes(results: pd.DataFrame, group: str, n: int) -> list[str]:
    rows = results[results["group"] == group].dropna(subset=["padj"])
    rows = rows.sort_values(["padj", "pvalue", "gene"], kind="mergesort")
    return list(dict.fromkeys(rows["gene"].astype(str)))[:n]


def top_gene_heatmap(
    pb: ad.AnnData, results: pd.DataFrame, *, n: int = 30, alpha: float = 0.05
) -> plt.Figure:
    """Per group, log2(CPM + 1) of its ``n`` top genes (smallest padj) in its samples.

    One panel per tested group; rows are genes, columns samples ordered by condition, colour
    the expression z-scored per gene across the group's samples. Each title gives how many
    genes of the group have ``padj`` < ``alpha`` (the top genes are drawn even when none).
    """
    groups = sorted(results["group"].dropna().unique()) if len(results) else []
    fig, axes = plt.subplots(
        1, max(len(groups), 1), figsize=(3 + 3.2 * len(groups), 1.5 + 0.16 * n), squeeze=False
    )
    expression = _log_cpm(pb)
    conditions = list(pb.obs[CONDITION].cat.categories)
    for ax, group in zip(axes[0], groups, strict=False):
        genes = _top_genes(results, group, n)
        samples = pb.obs[pb.obs[GROUP] == group]
        samples = samples.assign(_order=samples[CONDITION].map(conditions.index).astype(int))
        samples = samples.sort_values(["_order", "sample"], kind="mergesort")
        values = expression.loc[samples.index, genes].T
        z = values.sub(values.mean(axis=1), axis=0).div(
            values.std(axis=1, ddof=0).replace(0, 1), axis=0
        )
        image = ax.imshow(z.to_numpy(float), aspect="auto", cmap="RdBu_r", vmin=-2.5, vmax=2.5)
        labels = [f"{c} | {s}" for c, s in zip(samples[CONDITION], samples["sample"], strict=True)]
        ax.set_xticks(range(len(labels)), labels, rotation=70, ha="right", fontsize=6)
        ax.set_yticks(range(len(genes)), genes, fontsize=6)
        n_significant = results.loc[results["group"] == group, "padj"].lt(alpha).sum()
        ax.set_title(f"{group}: top {len(genes)} genes ({n_significant} significant)", fontsize=8)
    if groups:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.6, label="z of log2(CPM + 1)")
    return fig
