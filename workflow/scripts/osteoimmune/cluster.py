"""Normalisation, highly variable genes, PCA, batch integration, neighbours, UMAP, Leiden, markers.

Resampling stability over a grid of Leiden resolutions is in :mod:`osteoimmune.stability`. The
markers' Wilcoxon statistics are scanpy's, computed by :mod:`osteoimmune.kernels.wilcoxon`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import anndata as ad
import harmonypy
import igraph
import numpy as np
import pandas as pd
import scanpy as sc
from natsort import natsorted
from scanpy._utils.random import set_igraph_random_state  # the RNG sc.tl.leiden gives igraph

from osteoimmune.jit import cache_umap_functions
from osteoimmune.kernels import check_implementation
from osteoimmune.kernels.wilcoxon import wilcoxon_vs_rest
from osteoimmune.samples import capped_cells
from osteoimmune.values import VALUE_TYPES, normalization_note

log = logging.getLogger(__name__)


def normalize(adata: ad.AnnData, *, value_type: str, target_sum: float = 1e4) -> None:
    """Make ``X`` log-normalised in place, transforming the input once; ``layers['counts']`` stays.

    Parameters
    ----------
    adata
        ``X`` as read: of ``value_type``, not yet transformed by this pipeline.
    value_type
        The registry's ``values:``. ``counts`` are size-normalised to ``target_sum`` then
        log1p-transformed; ``normalized`` and ``tpm`` input is only log1p-transformed (never
        renormalised as if it were counts); ``log_normalized`` input is used as is.
    target_sum
        Total per cell of size-normalised counts.

    Records what was done in ``uns['osteoimmune']['normalization']`` (a sentence for the
    report) and marks ``X`` as natural-log values in ``uns['log1p']``, as scanpy does.

    Raises
    ------
    ValueError
        When ``value_type`` is unknown or ``X`` was log-transformed already
        (``uns['log1p']`` is set): normalising again would transform it twice.
    """
    if value_type not in VALUE_TYPES:
        msg = f"value type {value_type!r} is not known; use one of {', '.join(VALUE_TYPES)}."
        raise ValueError(msg)
    if "log1p" in adata.uns:
        msg = (
            "X is log-transformed already (uns['log1p'] is set): normalising it again would "
            "transform it twice; start from the matrix as read."
        )
        raise ValueError(msg)
    if any(layer is adata.X for layer in adata.layers.values()):
        # a layer sharing X's object (raw counts read back once, osteoimmune.samples) must
        # not be transformed with it
        adata.X = adata.X.copy()
    if value_type == "counts":
        sc.pp.normalize_total(adata, target_sum=target_sum)
    if value_type == "log_normalized":
        adata.uns["log1p"] = {"base": None}  # natural log already, as sc.pp.log1p records
    else:
        sc.pp.log1p(adata)
    adata.uns.setdefault("osteoimmune", {})["normalization"] = normalization_note(
        value_type, target_sum=target_sum
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


def pca(adata: ad.AnnData, *, n_pcs: int, normalization: str, value_type: str, seed: int) -> str:
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
        ``"counts"``, ``"normalized"``, ``"log_normalized"`` or ``"tpm"``, as read.
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
# coordinates): deterministic, and no slower than pynndescent plus its numba compilation at
# this size (100k resampled cells, 30 PCs: 19.7 s / 709 MiB exact, 22.3 s / 1,059 MiB
# approximate, bench/README.md). Exact search grows with the square of the cells; above
# this pynndescent scales better.
EXACT_KNN_MAX_CELLS = 100_000


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


# Harmony's convergence tolerances as in R harmony >= 1.2 (``harmony_options()``; Seurat v5's
# HarmonyIntegration uses the same epsilon.harmony). harmonypy 0.0.10 defaulted to 100x tighter
# ones (1e-5, 1e-4), which on 17k cells ran 9 rounds of up to 20 k-means iterations: 22 s
# instead of 8 s for a 98% identical 15-NN graph (bench/README.md). harmonypy >= 2 (a C++
# port of R harmony >= 1.2, lambda estimated per cluster) keeps them as its defaults.
HARMONY_DEFAULTS = {"epsilon_cluster": 1e-3, "epsilon_harmony": 1e-2}


def integrate(
    adata: ad.AnnData, *, batch_key: str, seed: int, harmony: dict | None = None
) -> tuple[str, str]:
    """Harmony on ``obsm['X_pca']`` across the values of ``obs[batch_key]``, if several.

    ``harmony`` holds options of ``harmonypy.run_harmony`` (``nclust``, ``max_iter_harmony``,
    ``max_iter_kmeans``, ``epsilon_cluster``, ``epsilon_harmony``, ``block_size``) on top of
    :data:`HARMONY_DEFAULTS`. Returns the representation to build the graph on
    (``X_pca_harmony`` or ``X_pca``) and a note for the report.
    """
    batches = adata.obs[batch_key].nunique()
    if batches < 2:
        return "X_pca", f"one {batch_key}: no batch integration"
    options = HARMONY_DEFAULTS | {k: v for k, v in (harmony or {}).items() if v is not None}
    if "nclust" not in options and adata.n_obs < 45:
        # harmonypy's default, round(cells / 30) soft clusters, is under 2 below 45 cells:
        # too few cells to integrate
        return "X_pca", f"{adata.n_obs} cells: too few for harmony, no batch integration"
    # harmonypy itself, not scanpy 1.11's harmony_integrate, which transposes harmonypy 2's
    # cells x PCs result. One thread whatever the machine (its default is one per physical
    # core); 1 and 2 threads gave identical bytes on 20k cells.
    result = harmonypy.run_harmony(
        np.asarray(adata.obsm["X_pca"]),
        adata.obs[[batch_key]],
        batch_key,
        random_state=seed,
        verbose=False,
        ncores=1,
        **options,
    )
    corrected = np.asarray(result.Z_corr)
    if corrected.shape != adata.obsm["X_pca"].shape:
        msg = f"harmonypy returned {corrected.shape}, not cells x PCs {adata.obsm['X_pca'].shape}."
        raise RuntimeError(msg)
    adata.obsm["X_pca_harmony"] = corrected
    return "X_pca_harmony", f"harmony across {batches} values of obs['{batch_key}']"


def neighbors(adata: ad.AnnData, *, rep: str, n_neighbors: int, seed: int, knn: str) -> None:
    """The kNN graph on ``obsm[rep]`` (exact or approximate, see :func:`knn_transformer`)."""
    transformer = knn_transformer(adata.n_obs, knn)
    cache_umap_functions()
    sc.pp.neighbors(
        adata,
        n_neighbors=min(n_neighbors, adata.n_obs - 1),
        use_rep=rep,
        random_state=seed,
        transformer=transformer,
    )
    adata.uns["osteoimmune"] = adata.uns.get("osteoimmune", {}) | {"knn": transformer}


def _umap_layout(
    connectivities, representation: np.ndarray, neighbors: dict, init, seed: int
) -> tuple[np.ndarray, dict]:
    """``sc.tl.umap`` of a kNN graph (run here or in a worker process): the layout, its uns."""
    rep = neighbors["params"].get("use_rep") or "X_pca"
    work = ad.AnnData(
        obs=pd.DataFrame(index=pd.RangeIndex(connectivities.shape[0]).astype(str)),
        obsm={rep: representation},
        obsp={"connectivities": connectivities},
    )
    work.uns["neighbors"] = neighbors | {"connectivities_key": "connectivities"}
    if init is not None:
        work.obsm["X_umap_init"] = init
    cache_umap_functions()
    sc.tl.umap(work, random_state=seed, init_pos="X_umap_init" if init is not None else "spectral")
    return work.obsm["X_umap"], work.uns["umap"]


def umap(
    adata: ad.AnnData,
    *,
    rep: str,
    seed: int,
    umap_init: str = "pca",
    pool: Executor | None = None,
) -> Callable[[], None]:
    """UMAP of the kNN graph into ``obsm['X_umap']``, started from ``obsm[rep]`` or spectral.

    Without a ``pool`` the layout is made here and stored before returning. With a pool of
    worker processes it is made there while this process goes on; the returned function
    waits for it and stores it (the same layout either way). Call it before using or
    writing ``adata``.
    """
    neighbors = adata.uns["neighbors"]
    args = (
        adata.obsp[neighbors["connectivities_key"]],
        adata.obsm[rep],
        {"params": dict(neighbors["params"])},
        np.ascontiguousarray(adata.obsm[rep][:, :2]) if umap_init == "pca" else None,
        seed,
    )

    def store(result) -> None:
        adata.obsm["X_umap"], adata.uns["umap"] = result

    if pool is None:
        store(_umap_layout(*args))
        return lambda: None
    future = pool.submit(_umap_layout, *args)
    return lambda: store(future.result())


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
    harmony: dict | None = None,
    layout: bool = True,
) -> str:
    """PCA on the highly variable genes, harmony across batches if several, neighbours, UMAP.

    :func:`pca`, :func:`integrate`, :func:`neighbors` and :func:`umap` in turn.
    ``normalization`` and ``value_type`` choose the PCA input (see :func:`pca`); ``harmony``
    the integration options (see :func:`integrate`); ``knn`` the neighbour search (see
    :func:`knn_transformer`). ``umap_init`` ``pca`` starts UMAP from the first two components
    of the (integrated) PCA, which keeps global structure (Kobak & Linderman 2021, Nat
    Biotechnol 39:156) and avoids the spectral initialisation's eigensolver, slow on graphs of
    many small components; ``spectral`` is scanpy's default. ``layout`` False leaves UMAP to
    the caller (:func:`umap`, e.g. in a worker process). Returns a note saying whether
    batches were integrated, for the report.
    """
    pca(adata, n_pcs=n_pcs, normalization=normalization, value_type=value_type, seed=seed)
    rep, note = integrate(adata, batch_key=batch_key, seed=seed, harmony=harmony)
    neighbors(adata, rep=rep, n_neighbors=n_neighbors, seed=seed, knn=knn)
    adata.uns["osteoimmune"]["integration"] = note
    if layout:
        umap(adata, rep=rep, seed=seed, umap_init=umap_init)
    return note


def leiden_memberships(
    adjacency, *, resolutions: Sequence[float], seed: int
) -> dict[float, np.ndarray]:
    """Leiden clusters (igraph, 2 iterations) at each resolution of one graph, built once.

    The clusters of ``sc.tl.leiden(flavor="igraph", n_iterations=2, directed=False,
    random_state=seed)`` at each resolution (tests/test_cluster.py), with igraph's graph made
    from the sparse ``adjacency`` once instead of once per resolution (a third of the grid's
    and the stability subsamples' Leiden time at 100k cells). Edges, weights and the random
    number generator (scanpy's, seeded per resolution) are the ones scanpy gives igraph.
    """
    sources, targets = adjacency.nonzero()
    graph = igraph.Graph(
        n=adjacency.shape[0],
        edges=np.column_stack([sources, targets]),
        directed=False,
        edge_attrs={"weight": np.asarray(adjacency[sources, targets]).ravel()},
    )
    memberships = {}
    for resolution in resolutions:
        with set_igraph_random_state(seed):
            partition = graph.community_leiden(
                objective_function="modularity",
                weights="weight",
                resolution=resolution,
                n_iterations=2,
            )
        memberships[float(resolution)] = np.asarray(partition.membership)
    return memberships


def leiden_labels(membership: np.ndarray) -> pd.Categorical:
    """Cluster labels as ``sc.tl.leiden`` stores them: strings, categories in natural order."""
    return pd.Categorical(
        values=membership.astype("U"), categories=natsorted(map(str, np.unique(membership)))
    )


def leiden_grid(
    adata: ad.AnnData, *, resolutions: Sequence[float], seed: int, keys: Sequence[str]
) -> None:
    """Leiden (igraph, seeded) at each resolution into ``obs[key]`` and ``uns[key]``.

    What ``sc.tl.leiden`` stores at each resolution, from one igraph graph
    (:func:`leiden_memberships`) of the neighbours' connectivities.
    """
    graph = adata.obsp[adata.uns["neighbors"]["connectivities_key"]]
    memberships = leiden_memberships(graph, resolutions=resolutions, seed=seed)
    for resolution, key in zip(resolutions, keys, strict=True):
        adata.obs[key] = leiden_labels(memberships[float(resolution)])
        adata.uns[key] = {
            "params": {"resolution": resolution, "random_state": seed, "n_iterations": 2}
        }


def leiden(adata: ad.AnnData, *, resolution: float, seed: int, key_added: str = "leiden") -> None:
    """Leiden clustering (igraph flavour, deterministic for a seed) into ``obs[key_added]``."""
    leiden_grid(adata, resolutions=[resolution], seed=seed, keys=[key_added])


def markers(
    adata: ad.AnnData,
    *,
    n_genes: int = 25,
    groupby: str = "leiden",
    implementation: str = "osteoimmune",
    max_cells_per_group: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Top marker genes per cluster: Wilcoxon test of each cluster against the rest.

    Tested on log-normalised ``X`` by :func:`osteoimmune.kernels.wilcoxon.wilcoxon_vs_rest`
    (scanpy's statistics, ranks computed once), or with ``implementation="scanpy"`` by
    ``sc.tl.rank_genes_groups(method="wilcoxon")`` itself; the full result stays in
    ``uns['rank_genes_groups']``.
    Clusters of a single cell (or whose rest has a single cell) cannot be tested and are
    left out of the table, with a log message.

    With ``max_cells_per_group``, a cluster of more cells is represented in the test by that
    many of them, drawn at random with ``seed`` (the same cells every run), both as the group
    and in the rest of the other clusters; smaller clusters keep every cell. The cost of the
    test grows with the cells tested, and a few thousand cells per cluster rank its genes as
    all of them do (statistics are then those of the cells tested: the z-scores of large
    clusters are smaller). ``uns['rank_genes_groups']['params']`` records the cap when it
    was applied.

    Returns
    -------
    Columns cluster, rank (1 = best), gene, score, logfoldchange, pval_adj; ``n_genes`` rows
    per tested cluster.
    """
    check_implementation(implementation)
    columns = ["cluster", "rank", "gene", "score", "logfoldchange", "pval_adj"]
    sizes = adata.obs[groupby].value_counts()
    groups = [
        g
        for g in adata.obs[groupby].cat.categories
        if sizes[g] >= 2 and adata.n_obs - sizes[g] >= 2
    ]
    if len(groups) < sizes.size:
        log.info(
            "No markers for clusters of one cell or without other cells to compare with: %s",
            ", ".join(sorted(set(sizes.index) - set(groups))),
        )
    adata.uns.pop("rank_genes_groups", None)
    if not groups:
        return pd.DataFrame(columns=columns)
    n_genes = min(n_genes, adata.n_vars)
    tested = adata
    if max_cells_per_group is not None and sizes.max() > max_cells_per_group:
        tested = _marker_subsample(adata, groupby=groupby, max_cells=max_cells_per_group, seed=seed)
        log.info(
            "Markers: clusters of more than %d cells are tested on %d of them (%d of %d cells)",
            max_cells_per_group,
            max_cells_per_group,
            tested.n_obs,
            adata.n_obs,
        )
    if implementation == "scanpy":
        sc.tl.rank_genes_groups(
            tested,
            groupby,
            groups=groups,
            reference="rest",
            method="wilcoxon",
            n_genes=n_genes,
            use_raw=False,
        )
    else:
        wilcoxon_vs_rest(tested, groupby=groupby, groups=groups, n_genes=n_genes)
    if tested is not adata:
        record = tested.uns["rank_genes_groups"]
        record["params"]["max_cells_per_group"] = int(max_cells_per_group)
        record["params"]["seed"] = int(seed)
        adata.uns["rank_genes_groups"] = record
    table = sc.get.rank_genes_groups_df(adata, group=groups)
    if "group" not in table:  # a single group comes back without its column
        table["group"] = groups[0]
    table = table.rename(columns={"group": "cluster"})
    table["cluster"] = table["cluster"].astype(str)
    table["rank"] = table.groupby("cluster").cumcount() + 1
    table = table.rename(
        columns={
            "names": "gene",
            "scores": "score",
            "logfoldchanges": "logfoldchange",
            "pvals_adj": "pval_adj",
        }
    )
    return table[columns]


def _marker_subsample(adata: ad.AnnData, *, groupby: str, max_cells: int, seed: int) -> ad.AnnData:
    """The cells the marker test sees: at most ``max_cells`` of each group, drawn with ``seed``.

    Only X's rows (log-normalised), the grouping and ``uns['log1p']`` are kept: no layers.
    """
    labels = adata.obs[groupby].astype(str).to_numpy()
    rows = capped_cells(labels, sorted(set(labels)), max_cells=max_cells, seed=seed)
    uns = {"log1p": dict(adata.uns["log1p"])} if "log1p" in adata.uns else {}
    return ad.AnnData(
        X=adata.X[rows],
        obs=adata.obs[[groupby]].iloc[rows],
        var=pd.DataFrame(index=adata.var_names),
        uns=uns,
    )
