"""Normalisation, highly variable genes, PCA, batch integration, neighbours, UMAP and Leiden."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
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


def embed(
    adata: ad.AnnData, *, n_pcs: int, n_neighbors: int, batch_key: str, seed: int
) -> str:
    """PCA on the highly variable genes, harmony across batches if several, neighbours, UMAP.

    Returns a note saying whether batches were integrated, for the report.
    """
    n_hvg = int(adata.var["highly_variable"].sum())
    n_comps = int(min(n_pcs, n_hvg - 1, adata.n_obs - 1))
    sc.pp.pca(adata, n_comps=n_comps, mask_var="highly_variable", random_state=seed)
    rep, note = "X_pca", f"one {batch_key}: no batch integration"
    batches = adata.obs[batch_key].nunique()
    if batches > 1:
        sc.external.pp.harmony_integrate(
            adata, key=batch_key, basis="X_pca", adjusted_basis="X_pca_harmony",
            random_state=seed, verbose=False,
        )
        rep, note = "X_pca_harmony", f"harmony across {batches} values of obs['{batch_key}']"
    sc.pp.neighbors(
        adata, n_neighbors=min(n_neighbors, adata.n_obs - 1), use_rep=rep, random_state=seed
    )
    sc.tl.umap(adata, random_state=seed)
    adata.uns.setdefault("osteoimmune", {})["integration"] = note
    return note


def leiden(adata: ad.AnnData, *, resolution: float, seed: int) -> None:
    """Leiden clustering (igraph flavour, deterministic for a seed) into ``obs['leiden']``."""
    sc.tl.leiden(
        adata, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2,
        directed=False,
    )
    sizes = adata.obs["leiden"].value_counts()
    log.info("Leiden at resolution %s: %d clusters", resolution, sizes.size)


def cluster_sizes(adata: ad.AnnData) -> np.ndarray:
    """Number of cells per Leiden cluster, in category order."""
    return adata.obs["leiden"].value_counts(sort=False).to_numpy()
