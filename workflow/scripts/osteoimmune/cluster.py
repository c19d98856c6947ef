"""Normalisation, highly variable genes, PCA, batch integration, neighbours, UMAP, Leiden, markers.

Resampling stability over a grid of Leiden resolutions is in :mod:`osteoimmune.stability`.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

log = logging.getLogger(__name__)


def normalize(adata: ad.AnnData, *, value_type: str, target_sum: float = 1e4) -> None:
    """Make ``X`` log-normalised in place; ``layers['counts']`` keeps raw counts.

    Counts are size-normalised to ``target_sum`` then log1p-transformed. Input that is already
    normalised or TPM is only log1p-transformed: it is never renormalised as if it were counts.
    """
    if value_type == "counts":
        sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    adata.uns.setdefault("osteoimmune", {})["normalization"] = (
        f"normalize_total({target_sum:g}) + log1p" if value_type == "counts" else "log1p"
    )


def select_hvg(adata: ad.AnnData, *, n_top_genes: int, value_type: str, batch_key: str) -> None:
    """Flag highly variable genes in ``adata.var['highly_variable']``.

    seurat_v3 on raw counts (batch-aware when ``batch_key`` has several values), seurat on
    log-normalised non-count input. A panel with no more genes than ``n_top_genes`` keeps all.
    """
    if adata.n_vars <= n_top_genes:
        adata.var["highly_variable"] = True
        return
    batches = adata.obs[batch_key].nunique()
    batch = batch_key if batches > 1 else None
    if value_type == "counts":
        sc.pp.highly_variable_genes(
            adata, n_top_genes=n_top_genes, flavor="seurat_v3", layer="counts", batch_key=batch
        )
    else:
        sc.pp.highly_variable_genes(
            adata, n_top_genes=n_top_genes, flavor="seurat", batch_key=batch
        )


def pca(
    adata: ad.AnnData, *, n_pcs: int, normalization: str, value_type: str, seed: int
) -> str:
    """PCA on the highly variable genes into ``obsm['X_pca']``.

    Parameters
    ----------
    adata
        Log-normalised ``X``, ``layers['counts']`` and ``var['highly_variable']``.
    n_pcs
        Components wanted; capped by the number of genes and cells.
    normalization
        ``"log1p"`` (PCA of log-normalised ``X``) or ``"pearson_residuals"`` (PCA of analytic
        Pearson residuals of the counts). Residuals need raw counts: other input falls back to
        ``"log1p"``.
    value_type
        ``"counts"``, ``"normalized"`` or ``"tpm"``, as read.
    seed
        Random state of the PCA solver.

    Returns
    -------
    A note on what the PCA was computed from, also in ``uns['osteoimmune']['pca_input']``.
    """
    n_hvg = int(adata.var["highly_variable"].sum())
    n_comps = int(min(n_pcs, n_hvg - 1, adata.n_obs - 1))
    if normalization == "pearson_residuals" and value_type == "counts":
        _pearson_residuals_pca(adata, n_comps=n_comps, seed=seed)
        note = f"analytic Pearson residuals (theta=100) of counts on {n_hvg} HVGs"
    else:
        sc.pp.pca(adata, n_comps=n_comps, mask_var="highly_variable", random_state=seed)
        note = f"log-normalised X on {n_hvg} HVGs"
        if normalization == "pearson_residuals":
            note += f" (pearson_residuals needs raw counts, input is {value_type}: fell back)"
            log.warning("PCA input: %s", note)
    adata.uns.setdefault("osteoimmune", {})["pca_input"] = note
    return note


def _pearson_residuals_pca(adata: ad.AnnData, *, n_comps: int, seed: int) -> None:
    # Residuals are dense, so they are computed on a copy of the HVG counts only; X stays
    # log-normalised for every gene (markers, scoring). Cell depth is the HVG total, as in
    # scanpy's recipe_pearson_residuals.
    hvg = adata.var["highly_variable"].to_numpy()
    sub = ad.AnnData(X=adata.layers["counts"][:, hvg].astype(np.float32))
    sc.experimental.pp.normalize_pearson_residuals(sub, theta=100)
    sc.pp.pca(sub, n_comps=n_comps, random_state=seed)
    adata.obsm["X_pca"] = sub.obsm["X_pca"]
    loadings = np.zeros((adata.n_vars, n_comps), dtype=sub.varm["PCs"].dtype)
    loadings[hvg] = sub.varm["PCs"]
    adata.varm["PCs"] = loadings
    adata.uns["pca"] = sub.uns["pca"]


# Up to this many cells the kNN graph is exact (sklearn, brute force on the PCA/harmony
# coordinates): deterministic, and faster than pynndescent plus its numba compilation at this
# size. Above it the approximate pynndescent search scales better.
EXACT_KNN_MAX_CELLS = 50_000


def knn_transformer(n_obs: int, knn: str = "auto") -> str:
    """The ``transformer`` for ``sc.pp.neighbors``: ``sklearn`` (exact) or ``pynndescent``.

    ``knn`` is ``exact``, ``approximate`` or ``auto`` (exact up to
    :data:`EXACT_KNN_MAX_CELLS` cells).
    """
    if knn == "auto":
        knn = "exact" if n_obs <= EXACT_KNN_MAX_CELLS else "approximate"
    if knn not in ("exact", "approximate"):
        msg = f"cluster.knn must be auto, exact or approximate, not {knn!r}."
        raise ValueError(msg)
    return "sklearn" if knn == "exact" else "pynndescent"


def embed(
    adata: ad.AnnData,
    *,
    n_pcs: int,
    n_neighbors: int,
    batch_key: str,
    seed: int,
    value_type: str,
    normalization: str = "log1p",
    knn: str = "auto",
    umap_init: str = "pca",
) -> str:
    """PCA on the highly variable genes, harmony across batches if several, neighbours, UMAP.

    ``normalization`` and ``value_type`` choose the PCA input (see :func:`pca`); ``knn`` the
    neighbour search (see :func:`knn_transformer`). ``umap_init`` ``pca`` starts UMAP from the
    first two components of the (integrated) PCA, which keeps global structure (Kobak &
    Linderman 2021, Nat Biotechnol 39:156) and avoids the spectral initialisation's eigensolver,
    slow on graphs of many small components; ``spectral`` is scanpy's default. Returns a note
    saying whether batches were integrated, for the report.
    """
    pca(adata, n_pcs=n_pcs, normalization=normalization, value_type=value_type, seed=seed)
    rep, note = "X_pca", f"one {batch_key}: no batch integration"
    batches = adata.obs[batch_key].nunique()
    if batches > 1:
        sc.external.pp.harmony_integrate(
            adata, key=batch_key, basis="X_pca", adjusted_basis="X_pca_harmony",
            random_state=seed, verbose=False,
        )
        rep, note = "X_pca_harmony", f"harmony across {batches} values of obs['{batch_key}']"
    transformer = knn_transformer(adata.n_obs, knn)
    sc.pp.neighbors(
        adata, n_neighbors=min(n_neighbors, adata.n_obs - 1), use_rep=rep, random_state=seed,
        transformer=transformer,
    )
    adata.uns["osteoimmune"] = adata.uns.get("osteoimmune", {}) | {"knn": transformer}
    if umap_init == "pca":
        adata.obsm["X_umap_init"] = np.ascontiguousarray(adata.obsm[rep][:, :2])
    sc.tl.umap(adata, random_state=seed,
               init_pos="X_umap_init" if umap_init == "pca" else "spectral")
    adata.obsm.pop("X_umap_init", None)
    adata.uns["osteoimmune"]["integration"] = note
    return note


def leiden(
    adata: ad.AnnData, *, resolution: float, seed: int, key_added: str = "leiden"
) -> None:
    """Leiden clustering (igraph flavour, deterministic for a seed) into ``obs[key_added]``."""
    sc.tl.leiden(
        adata, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2,
        directed=False, key_added=key_added,
    )


def markers(adata: ad.AnnData, *, n_genes: int = 25, groupby: str = "leiden") -> pd.DataFrame:
    """Top marker genes per cluster: Wilcoxon test of each cluster against the rest.

    Tested on log-normalised ``X``; the full result stays in ``uns['rank_genes_groups']``.
    Clusters of a single cell (or whose rest has a single cell) cannot be tested and are
    left out of the table, with a log message.

    Returns
    -------
    Columns cluster, rank (1 = best), gene, score, logfoldchange, pval_adj; ``n_genes`` rows
    per tested cluster.
    """
    columns = ["cluster", "rank", "gene", "score", "logfoldchange", "pval_adj"]
    sizes = adata.obs[groupby].value_counts()
    groups = [g for g in adata.obs[groupby].cat.categories
              if sizes[g] >= 2 and adata.n_obs - sizes[g] >= 2]
    if len(groups) < sizes.size:
        log.info("No markers for clusters of one cell: %s",
                 ", ".join(sorted(set(sizes.index) - set(groups))))
    adata.uns.pop("rank_genes_groups", None)
    if not groups:
        return pd.DataFrame(columns=columns)
    sc.tl.rank_genes_groups(
        adata, groupby, groups=groups, reference="rest", method="wilcoxon",
        n_genes=min(n_genes, adata.n_vars), use_raw=False,
    )
    table = sc.get.rank_genes_groups_df(adata, group=groups)
    if "group" not in table:  # a single group comes back without its column
        table["group"] = groups[0]
    table = table.rename(columns={"group": "cluster"})
    table["cluster"] = table["cluster"].astype(str)
    table["rank"] = table.groupby("cluster").cumcount() + 1
    table = table.rename(columns={
        "names": "gene", "scores": "score", "logfoldchanges": "logfoldchange",
        "pvals_adj": "pval_adj",
    })
    return table[columns]
