"""Per-sample quality control: species-aware metrics and adaptive (MAD) thresholds."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

log = logging.getLogger(__name__)

# Gene groups, matched on upper-cased symbols so that mouse data with upper-cased symbols
# (mt-Co1 stored as MT-CO1) is handled like human data.
GENE_GROUPS = {
    "mt": r"^MT-",
    "ribo": r"^RP[SL]\d",
    "hb": r"^HB[ABDEGMQZ]\d?(?:-|$)",  # HBB, HBA1, Hba-a1; not HBP1 or HBEGF
}


def annotate_gene_groups(adata: ad.AnnData) -> None:
    """Flag mitochondrial, ribosomal and hemoglobin genes in ``adata.var`` (mt, ribo, hb)."""
    upper = adata.var_names.str.upper()
    for group, pattern in GENE_GROUPS.items():
        adata.var[group] = upper.str.contains(pattern, regex=True)


def compute_qc_metrics(adata: ad.AnnData) -> None:
    """Add scanpy's standard QC metrics to ``adata.obs`` (in place, sparse-safe).

    Adds ``total_counts``, ``n_genes_by_counts``, ``pct_counts_in_top_20_genes`` and
    ``pct_counts_{mt,ribo,hb}``, computed on ``layers['counts']`` when present, else on ``X``.
    """
    annotate_gene_groups(adata)
    layer = "counts" if "counts" in adata.layers else None
    top = [20] if adata.n_vars > 20 else None
    sc.pp.calculate_qc_metrics(
        adata, qc_vars=list(GENE_GROUPS), percent_top=top, layer=layer, log1p=True, inplace=True
    )
    if top is None:
        adata.obs["pct_counts_in_top_20_genes"] = 100.0


def mad_outlier(values: np.ndarray, *, nmads: float, upper_only: bool = False) -> np.ndarray:
    """Flag values more than ``nmads`` median absolute deviations from the median.

    A MAD of zero (e.g. all values equal) flags nothing rather than everything off the median.
    """
    values = np.asarray(values, dtype=float)
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    if mad == 0:
        return np.zeros(values.shape, dtype=bool)
    high = values > median + nmads * mad
    return high if upper_only else high | (values < median - nmads * mad)


def qc_flags(
    obs: pd.DataFrame,
    *,
    counts_based: bool,
    nmads: float,
    mt_nmads: float,
    max_pct_mt: float,
    min_genes: int,
    min_counts: float,
) -> pd.DataFrame:
    """Return one boolean column per removal reason for the cells of one sample.

    Count-based reasons (MAD outliers, % mitochondrial) apply only to count input; the absolute
    lower bounds apply to every input.
    """
    flags = pd.DataFrame(index=obs.index)
    flags["low_genes"] = obs["n_genes_by_counts"].to_numpy() < max(min_genes, 1)
    flags["low_counts"] = obs["total_counts"].to_numpy() < min_counts
    if counts_based:
        flags["outlier_counts"] = mad_outlier(obs["log1p_total_counts"], nmads=nmads)
        flags["outlier_genes"] = mad_outlier(obs["log1p_n_genes_by_counts"], nmads=nmads)
        flags["outlier_top20"] = mad_outlier(obs["pct_counts_in_top_20_genes"], nmads=nmads)
        pct_mt = obs["pct_counts_mt"].to_numpy()
        flags["high_mt"] = mad_outlier(pct_mt, nmads=mt_nmads, upper_only=True) | (
            pct_mt > max_pct_mt
        )
    return flags


def filter_cells(
    adata: ad.AnnData, *, counts_based: bool, min_cells_per_gene: int, **thresholds
) -> tuple[ad.AnnData, pd.DataFrame]:
    """Filter cells per sample by adaptive thresholds and drop rarely detected genes.

    Parameters
    ----------
    adata
        Standard AnnData with QC metrics (see :func:`compute_qc_metrics`) and ``obs['sample']``.
    counts_based
        Whether the values are raw counts; otherwise count-based criteria are skipped.
    min_cells_per_gene
        Genes detected in fewer cells are removed.
    **thresholds
        ``nmads``, ``mt_nmads``, ``max_pct_mt``, ``min_genes``, ``min_counts`` (see qc_flags).

    Returns
    -------
    The filtered AnnData (a copy) and a table per sample: cells in, removed per reason (a cell
    can have several), cells removed, cells out.
    """
    flags = pd.concat(
        [
            qc_flags(obs, counts_based=counts_based, **thresholds)
            for _, obs in adata.obs.groupby("sample", observed=True)
        ]
    ).reindex(adata.obs_names)
    remove = flags.any(axis=1).to_numpy()
    adata.obs["qc_pass"] = ~remove
    summary = flags.groupby(adata.obs["sample"], observed=True).sum()
    summary.insert(0, "cells_in", adata.obs.groupby("sample", observed=True).size())
    summary["cells_removed"] = pd.Series(remove, index=adata.obs_names).groupby(
        adata.obs["sample"], observed=True
    ).sum()
    summary["cells_out"] = summary["cells_in"] - summary["cells_removed"]
    summary.index.name = "sample"
    out = adata[~remove].copy()
    if out.n_obs == 0:
        return out, summary
    n_cells = np.asarray((out.X != 0).sum(axis=0)).ravel()
    return out[:, n_cells >= min_cells_per_gene].copy(), summary
