"""Highly variable genes of log1p values, scanpy's ``seurat`` flavour, without copies.

Mirrors ``sc.pp.highly_variable_genes(flavor="seurat")`` of scanpy 1.11.x
(``scanpy.preprocessing._highly_variable_genes._highly_variable_genes_single_batch``) on one
batch: gene means and dispersions of ``expm1`` of the log values, dispersions normalised within
20 bins of the mean, then the cut-offs or the top genes. scanpy copies the log matrix twice
(``x.copy()``, then ``np.expm1``); here cells are expanded a chunk at a time and summed in
float64, so a gene exactly at a cut-off could differ in the last bit (tests/test_kernels.py
compares the two). Switch back: ``implementation="scanpy"`` of :func:`seurat_hvg` (and of
:func:`osteoimmune.qc.coarse_groups`) runs scanpy's function on the same values.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from osteoimmune.kernels import check_implementation

# Cells whose log values are expanded at a time by :func:`seurat_hvg`.
HVG_CHUNK_CELLS = 10_000


def seurat_hvg(
    x: sparse.csr_matrix,
    *,
    logged: bool,
    n_top_genes: int | None = None,
    min_mean: float = 0.0125,
    max_mean: float = 3.0,
    min_disp: float = 0.5,
    n_bins: int = 20,
    implementation: str = "osteoimmune",
) -> np.ndarray:
    """Scanpy's ``highly_variable_genes(flavor="seurat")`` of log1p values, without copies.

    scanpy copies the log matrix twice (``x.copy()``, then ``np.expm1``) to take the gene
    means and variances of ``expm1(log1p(x))``. Here each chunk of ``HVG_CHUNK_CELLS`` cells
    is expanded in turn (float32, as scanpy) and summed in float64; the dispersions, their
    20 mean bins and the cut-offs or top genes follow scanpy 1.11 line by line. Sums are
    taken in another order than scanpy's threaded kernel, so a gene exactly at a cut-off
    could differ in the last bit (tests/test_kernels.py compares the two).

    Parameters
    ----------
    x
        Normalised values, or their log1p.
    logged
        Whether ``x`` holds log1p values already; if not, log1p is applied per chunk, as
        ``highly_variable_genes`` of a ``log1p`` layer sees them.
    n_top_genes
        The genes of the ``n_top_genes`` highest normalised dispersions; None: the cut-offs.
    min_mean, max_mean, min_disp, n_bins
        scanpy's defaults.
    implementation
        ``osteoimmune`` (chunked sums) or ``scanpy`` (:func:`scanpy_seurat_hvg`).

    Returns
    -------
    A boolean mask of the highly variable genes.
    """
    check_implementation(implementation)
    cutoffs = dict(min_mean=min_mean, max_mean=max_mean, min_disp=min_disp, n_bins=n_bins)
    if implementation == "scanpy":
        return scanpy_seurat_hvg(x, logged=logged, n_top_genes=n_top_genes, **cutoffs)
    x = sparse.csr_matrix(x)
    n_cells, n_genes = x.shape
    sums, squares = np.zeros(n_genes), np.zeros(n_genes)
    for start in range(0, n_cells, HVG_CHUNK_CELLS):
        part = x[start : start + HVG_CHUNK_CELLS]
        values = np.expm1(part.data if logged else np.log1p(part.data))
        sums += np.bincount(part.indices, weights=values, minlength=n_genes)
        squares += np.bincount(part.indices, weights=values * values, minlength=n_genes)
    mean = sums / n_cells
    var = (squares / n_cells - mean**2) * (n_cells / (n_cells - 1))
    mean[mean == 0] = 1e-12
    dispersion = var / mean
    dispersion[dispersion == 0] = np.nan
    dispersion = np.log(dispersion)
    mean = np.log1p(mean)
    bins = pd.cut(pd.Series(mean), bins=n_bins)
    stats = pd.Series(dispersion).groupby(bins, observed=True).agg(avg="mean", dev="std")
    single = stats["dev"].isnull()  # a bin of one gene: normalised dispersion 1
    stats.loc[single, "dev"] = stats.loc[single, "avg"]
    stats.loc[single, "avg"] = 0
    stats = stats.loc[bins]
    norm = (dispersion - stats["avg"].to_numpy()) / stats["dev"].to_numpy()
    if n_top_genes is None:
        norm = np.nan_to_num(norm)
        return (mean > min_mean) & (mean < max_mean) & (norm > min_disp) & (norm < np.inf)
    ranked = np.sort(norm[~np.isnan(norm)])[::-1]
    cutoff = ranked[min(n_top_genes, n_genes, ranked.size) - 1]
    return np.nan_to_num(norm, nan=-np.inf) >= cutoff


def scanpy_seurat_hvg(
    x: sparse.spmatrix,
    *,
    logged: bool,
    n_top_genes: int | None,
    min_mean: float,
    max_mean: float,
    min_disp: float,
    n_bins: int,
) -> np.ndarray:
    """The genes :func:`seurat_hvg` selects, from ``sc.pp.highly_variable_genes`` itself."""
    import scanpy as sc

    adata = ad.AnnData(X=sparse.csr_matrix(x, copy=True))
    if not logged:
        sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(
        adata,
        flavor="seurat",
        n_top_genes=n_top_genes,
        min_mean=min_mean,
        max_mean=max_mean,
        min_disp=min_disp,
        n_bins=n_bins,
    )
    return adata.var["highly_variable"].to_numpy()
