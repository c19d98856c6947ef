"""Scanpy's scrublet doublet scores with its defaults, computed on sparse matrices.

Mirrors ``sc.pp.scrublet(mean_center=True, normalize_variance=True,
use_approx_neighbors=False)`` of scanpy 1.11.x (``scanpy.preprocessing._scrublet``, itself
after Wolock et al. 2019): the same filters, highly variable genes, simulated doublets (same
pairs for the seed), normalisation, z-score, PCA (same ARPACK start vector) and kNN doublet
likelihood. Where it differs is how, not what (see :func:`scrublet_sparse`): nothing is
densified, simulated doublets are made in chunks, and unless the simulated doublets' scores are
needed only the observed cells' neighbours are searched. Scores equal scanpy's but where float
rounding changes a neighbour (at most one cell per real sample of the mirror).

Private scanpy imports, a debt named here: ``scanpy.preprocessing._utils._get_mean_var`` (the
gene variances scanpy uses) and ``scanpy.preprocessing._scrublet.core.Scrublet`` (its classifier,
whose fitted attributes ``set_manifold`` and ``doublet_parents_`` are set from outside). Both are
of scanpy 1.11; tests/test_kernels.py fails if they change.

:func:`doublet_threshold` mirrors scrublet's automatic threshold,
``skimage.filters.threshold_minimum`` of the simulated scores (scikit-image is not a dependency,
so it has no switch back; its test checks the rule on a bimodal sample).

Switch back: ``osteoimmune.qc.detect_doublets(implementation="scanpy")`` runs ``sc.pp.scrublet``.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc
from scipy import ndimage, sparse

from osteoimmune.kernels.hvg import seurat_hvg

# Simulated doublets made, normalised and projected at a time by _simulated_manifold.
SIM_CHUNK_CELLS = 20_000


def doublet_threshold(sim_scores: np.ndarray, *, nbins: int = 256) -> float | None:
    """Score threshold at the minimum between the two modes of the simulated doublet scores.

    The rule scrublet applies by default (``skimage.filters.threshold_minimum``, not a
    dependency here): smooth the histogram until it has two maxima, take the lowest bin between
    them. Returns None when the scores are not bimodal, as scrublet then calls no doublets.
    """
    hist, edges = np.histogram(np.asarray(sim_scores, dtype=float), bins=nbins)
    centers = (edges[:-1] + edges[1:]) / 2
    smooth = hist.astype(float)
    for _ in range(10_000):
        smooth = ndimage.uniform_filter1d(smooth, 3)
        # a maximum where the histogram turns from rising (or its start) to falling; ties
        # continue a plateau, as in skimage
        steps = np.diff(smooth)
        moves = np.flatnonzero(steps != 0)
        signs = np.sign(steps[moves])
        maxima = moves[(np.r_[1.0, signs[:-1]] > 0) & (signs < 0)]
        if len(maxima) < 3:
            break
    if len(maxima) != 2:
        return None
    lo, hi = maxima
    return float(centers[lo + np.argmin(smooth[lo : hi + 1])])


def scrublet_sparse(
    counts: sparse.spmatrix,
    *,
    seed: int,
    n_prin_comps: int = 30,
    sim_doublet_ratio: float = 2.0,
    expected_doublet_rate: float = 0.05,
    score_simulated: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Scanpy's scrublet with its defaults (z-scored genes, PCA), without dense matrices.

    The same steps and parameters as ``sc.pp.scrublet(mean_center=True,
    normalize_variance=True, use_approx_neighbors=False)`` of scanpy 1.11: genes in >= 3 cells,
    cells with >= 3 genes, highly variable genes of the log-normalised counts
    (:func:`seurat_hvg`), doublets simulated as ``scrublet_simulate_doublets`` does (the same
    pairs of cells for the seed; :func:`_simulated_manifold`), both normalised to 1e6, PCA,
    and scrublet's kNN classifier. What differs is how, not what, is computed. scanpy copies
    the whole matrix for its filters and gene selection and holds all simulated doublets at
    once; here they are read off the sparsity pattern, summed by chunks and simulated by
    chunks. scanpy z-scores the observed and the simulated cells into dense matrices (stored
    again as "sparse" matrices with every entry set, then densified for PCA: ~14 GB for
    20,000 cells of a full transcriptome, bench/README.md); here the genes are scaled to unit
    variance on the sparse matrices and sklearn's PCA (same ARPACK solver, start vector and
    signs) centres them implicitly, which is the same z-score. And scanpy builds the kNN graph
    of all observed and
    simulated cells at once; unless the simulated doublets' scores are asked for
    (``score_simulated``; scrublet's automatic threshold needs them, and then scanpy's
    classifier runs), the neighbours of the observed cells only are found here, a chunk of
    cells at a time. Scores equal scanpy's but where rounding changes a neighbour
    (tests/test_kernels.py): on the count samples of the mirror and of the 20k benchmark, at most
    one cell per sample scored differently (by up to 0.015) and no doublet call changed.

    Returns
    -------
    The doublet scores of the observed cells (NaN for cells with < 3 genes, which scrublet
    drops) and the scores of the simulated doublets (None unless ``score_simulated``).
    """
    from scanpy.preprocessing._utils import _get_mean_var
    from sklearn.decomposition import PCA
    from sklearn.utils import check_random_state

    counts = sparse.csr_matrix(counts)
    # scanpy's filter_genes(min_cells=3), then filter_cells(min_genes=3), read off the
    # sparsity pattern; one copy of the kept counts is made, for normalize_total
    positive = counts.data > 0
    genes = np.flatnonzero(np.bincount(counts.indices[positive], minlength=counts.shape[1]) >= 3)
    in_genes = np.zeros(counts.shape[1], dtype=bool)
    in_genes[genes] = True
    detected = np.r_[positive & in_genes[counts.indices], False]
    per_cell = np.add.reduceat(detected, counts.indptr[:-1], dtype=np.int32)
    per_cell[np.diff(counts.indptr) == 0] = 0  # reduceat gives an empty row its next entry
    del positive, detected
    kept = np.flatnonzero(per_cell >= 3)
    obs = ad.AnnData(X=counts[kept][:, genes] if len(kept) < counts.shape[0] else counts[:, genes])
    sc.pp.normalize_total(obs)
    hvg = seurat_hvg(obs.X, logged=False)  # highly_variable_genes of log1p(X)
    obs = obs[:, hvg].copy()
    # the raw counts of the kept cells and variable genes, taken from the input (scanpy keeps
    # a copy of all genes for this)
    raw = counts[:, genes[hvg]][kept]
    sc.pp.normalize_total(obs, target_sum=1e6)
    x_obs = _float64(obs.X)
    del obs
    _, var = _get_mean_var(x_obs, axis=0)
    inverse_sd = 1 / np.sqrt(var)
    x_obs.data *= inverse_sd[x_obs.indices]  # unit variance, in place: X @ diag(1 / sd)
    # scanpy's classifier holds a RandomState of the seed and passes it to PCA, whose ARPACK
    # start vector draws from it: the same here
    pca = PCA(n_components=n_prin_comps, random_state=check_random_state(seed), svd_solver="arpack")
    pca.fit(x_obs)
    manifold_obs = pca.transform(x_obs)
    del x_obs
    manifold_sim = _simulated_manifold(
        raw, pca, inverse_sd, seed=seed, sim_doublet_ratio=sim_doublet_ratio
    )
    del raw
    n_neighbors = round(0.5 * np.sqrt(len(manifold_obs)))
    sim_scores = None
    if score_simulated:  # scanpy's own classifier, which holds the graph of all cells
        from scanpy.preprocessing._scrublet.core import Scrublet

        scrub = Scrublet(
            sparse.csc_matrix((len(manifold_obs), 1), dtype=np.float32),  # counts: unused
            n_neighbors=n_neighbors,
            expected_doublet_rate=expected_doublet_rate,
            random_state=seed,
        )
        scrub.set_manifold(manifold_obs, manifold_sim)
        scrub.doublet_parents_ = np.zeros((len(manifold_sim), 2), dtype=int)  # unused
        scrub.calculate_doublet_scores(use_approx_neighbors=False, distance_metric="euclidean")
        scored, sim_scores = scrub.doublet_scores_obs_, np.asarray(scrub.doublet_scores_sim_)
    else:
        scored = _neighbour_doublet_scores(
            manifold_obs,
            manifold_sim,
            n_neighbors=n_neighbors,
            expected_rate=expected_doublet_rate,
        )
    scores = np.full(counts.shape[0], np.nan)
    scores[kept] = scored
    return scores, sim_scores


def _simulated_manifold(
    raw: sparse.csr_matrix,
    pca,
    inverse_sd: np.ndarray,
    *,
    seed: int,
    sim_doublet_ratio: float,
) -> np.ndarray:
    """PCA coordinates of scrublet's simulated doublets, made ``SIM_CHUNK_CELLS`` at a time.

    The doublets of ``sc.pp.scrublet_simulate_doublets(random_seed=seed)``: the same pairs of
    observed cells (scanpy's ``sample_comb``: sklearn's ``sample_without_replacement`` with a
    RandomState of the seed), their raw counts added. Each chunk is normalised to 1e6 (per
    cell, as ``normalize_total``), scaled by the observed cells' gene standard deviations and
    projected; scanpy holds all of them (twice the observed cells) at once, and a float64
    copy.
    """
    from sklearn.utils import check_random_state
    from sklearn.utils.random import sample_without_replacement

    n_obs = raw.shape[0]
    n_sim = int(n_obs * sim_doublet_ratio)
    pairs = np.vstack(
        np.unravel_index(
            sample_without_replacement(n_obs * n_obs, n_sim, random_state=check_random_state(seed)),
            (n_obs, n_obs),
        )
    ).T
    manifold = np.empty((n_sim, pca.n_components_))
    for start in range(0, n_sim, SIM_CHUNK_CELLS):
        pair = pairs[start : start + SIM_CHUNK_CELLS]
        sim = ad.AnnData(X=raw[pair[:, 0]] + raw[pair[:, 1]])
        sc.pp.normalize_total(sim, target_sum=1e6)
        x = _float64(sim.X)
        x.data *= inverse_sd[x.indices]
        manifold[start : start + len(pair)] = pca.transform(x)
    return manifold


def _neighbour_doublet_scores(
    manifold_obs: np.ndarray,
    manifold_sim: np.ndarray,
    *,
    n_neighbors: int,
    expected_rate: float,
    chunk: int = 5000,
) -> np.ndarray:
    """Scrublet's kNN doublet likelihood of the observed cells (Wolock et al. 2019).

    Each observed cell's ``k_adj`` nearest neighbours among the observed and simulated cells
    (exact, euclidean, the cell itself included; ``k_adj`` = ``n_neighbors`` x (1 + simulated
    / observed)) and, from how many are simulated doublets, scrublet's Bayesian doublet
    likelihood with prior ``expected_rate``. Found ``chunk`` cells at a time, for the observed
    cells only, so the graph of all cells is never held. On every count sample of the mirror
    and the 20k benchmark it gave scanpy 1.11's classifier scores (one cell in one sample
    differed by one neighbour).
    """
    from sklearn.neighbors import NearestNeighbors

    n_obs, n_sim = len(manifold_obs), len(manifold_sim)
    k_adj = round(n_neighbors * (1 + n_sim / n_obs))
    points = np.vstack([manifold_obs, manifold_sim])
    is_sim = np.arange(len(points)) >= n_obs
    index = NearestNeighbors(n_neighbors=k_adj, algorithm="brute").fit(points)
    n_sim_neighbours = np.concatenate(
        [
            is_sim[index.kneighbors(points[i : min(i + chunk, n_obs)], return_distance=False)].sum(
                axis=1
            )
            for i in range(0, n_obs, chunk)
        ]
    )
    ratio, rho = n_sim / n_obs, expected_rate
    q = (n_sim_neighbours + 1) / (k_adj + 2)
    return q * rho / ratio / (1 - rho - q * (1 - rho - rho / ratio))


def _float64(matrix: sparse.spmatrix) -> sparse.csr_matrix:
    """A float64 CSR matrix with sorted indices, sharing the index arrays of ``matrix``."""
    matrix = sparse.csr_matrix(matrix)
    matrix.sort_indices()
    return sparse.csr_matrix(
        (matrix.data.astype(np.float64), matrix.indices, matrix.indptr), shape=matrix.shape
    )
