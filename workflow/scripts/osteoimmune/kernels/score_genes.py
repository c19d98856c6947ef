"""Scanpy's ``score_genes`` for many gene sets in one pass over the matrix.

Mirrors :func:`scanpy.tl.score_genes` of scanpy 1.11.x with ``ctrl_as_ref=False`` (the
scanpy 2.0 default: a set's own genes are never its controls), ``use_raw=False``: gene means,
expression bins (``round(n_genes / (n_bins - 1))`` genes per bin by the rank of the mean), the
control genes drawn per bin with ``RandomState(seed)`` reseeded per set, and the score, the
mean of the set's present genes minus the mean of its controls. scanpy scores one set per call
and one pass over the matrix; here every set is a column of one genes x sets weights matrix and
each chunk of cells is multiplied by it once. The gene means are scanpy's bit for bit (float32
sums in scanpy's order), so bins and control genes are the same; the scores differ by the
rounding of scanpy's float32 row means (up to ~1e-6). Switch back:
``mean_scores(implementation="scanpy")`` calls ``sc.tl.score_genes`` set by set
(:func:`score_genes_loop`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from osteoimmune.errors import SignatureError
from osteoimmune.kernels import check_implementation
from osteoimmune.kernels.chunks import DEFAULT_CHUNK_SIZE, as_csr, map_row_chunks, row_chunks


def gene_means(matrix: sparse.csr_matrix, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Mean of every gene over all cells, computed as :func:`scanpy.tl.score_genes` does.

    scanpy's ``X.sum(axis=0)`` accumulates float32 data in float32, cell after cell; the same
    order here gives bit-identical means (hence identical bins), chunk by chunk without the
    float64 copy of the whole matrix that scipy makes.
    """
    dtype = np.float32 if matrix.dtype == np.float32 else np.float64
    sums = np.zeros(matrix.shape[1], dtype=dtype)
    for _, chunk in row_chunks(matrix, chunk_size=chunk_size):
        np.add.at(sums, chunk.indices, chunk.data.astype(dtype, copy=False))
    return sums.astype(np.float64) / matrix.shape[0]


def expression_bins(means: np.ndarray, *, n_bins: int = 25) -> np.ndarray:
    """Assign genes to expression bins the way :func:`scanpy.tl.score_genes` does.

    Parameters
    ----------
    means
        Mean expression per gene.
    n_bins
        Number of bins; each holds ``round(n_genes / (n_bins - 1))`` genes by rank of the
        mean (ties share the lowest rank).

    Returns
    -------
    numpy.ndarray
        Bin number per gene (int).
    """
    per_bin = int(np.round(len(means) / (n_bins - 1))) if n_bins > 1 else 0
    if per_bin < 1:
        msg = (
            f"{len(means)} genes cannot fill {n_bins} expression bins; use fewer bins "
            "(about one per 10 genes)."
        )
        raise SignatureError(msg)
    ranks = pd.Series(means).rank(method="min").to_numpy()
    return (ranks // per_bin).astype(np.int64)


def present_indices(
    gene_sets: Mapping[str, Sequence[str]], *, var_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Column indices of each set's genes present in ``var_names`` (duplicates once).

    A set with none of its genes present is an error (coverage filtering should drop it).
    """
    names = pd.Index(var_names)
    present = {}
    for name, genes in gene_sets.items():
        index = names.get_indexer(list(dict.fromkeys(genes)))
        if not (index >= 0).any():
            msg = f"No gene of set '{name}' is in the dataset; drop it before scoring."
            raise SignatureError(msg)
        present[name] = index[index >= 0]
    return present


def control_genes(
    set_index: np.ndarray, bins: np.ndarray, *, ctrl_size: int, seed: int
) -> np.ndarray:
    """Control genes of one set as :func:`scanpy.tl.score_genes` picks them.

    From every bin holding a set gene, ``ctrl_size`` genes outside the set are drawn (all if
    fewer), with scanpy's generator: numpy's legacy ``RandomState(seed)``, reseeded per set.

    Returns
    -------
    numpy.ndarray
        Sorted column indices of the control genes.
    """
    state = np.random.RandomState(seed)
    outside = np.ones(len(bins), dtype=bool)
    outside[set_index] = False
    chosen = []
    for cut in np.unique(bins[set_index]):
        pool = np.flatnonzero((bins == cut) & outside)
        if ctrl_size < len(pool):
            pool = pool[state.choice(len(pool), ctrl_size, replace=False)]
        chosen.append(pool)
    controls = np.unique(np.concatenate(chosen))
    if len(controls) == 0:
        msg = "No control genes in any expression bin of the set; the gene panel is too small."
        raise SignatureError(msg)
    return controls


def weights_matrix(
    columns: Sequence[tuple[np.ndarray, np.ndarray]], n_genes: int
) -> sparse.csr_matrix:
    """Genes x columns matrix; column j holds ``columns[j][1]`` on genes ``columns[j][0]``.

    Repeated genes of a column add up.
    """
    rows = np.concatenate([genes for genes, _ in columns])
    values = np.concatenate([vals for _, vals in columns])
    cols = np.repeat(np.arange(len(columns)), [len(genes) for genes, _ in columns])
    return sparse.csr_matrix((values, (rows, cols)), shape=(n_genes, len(columns)))


def obs_names_of(data) -> pd.Index | None:
    """The cell names of an AnnData, None for a matrix."""
    return data.obs_names if isinstance(data, AnnData) else None


def mean_scores(
    data: AnnData | sparse.spmatrix | np.ndarray,
    gene_sets: Mapping[str, Sequence[str]],
    *,
    var_names: Sequence[str] | None = None,
    n_bins: int = 25,
    ctrl_size: int = 50,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    implementation: str = "osteoimmune",
) -> pd.DataFrame:
    """Score all sets like :func:`scanpy.tl.score_genes` in one pass over the matrix.

    The score is the mean of the set's present genes minus the mean of its control genes,
    which are those ``sc.tl.score_genes(adata, genes, ctrl_as_ref=False, random_state=seed,
    n_bins=n_bins, ctrl_size=ctrl_size)`` would pick; scores agree with it up to scanpy's
    float32 sums.

    Parameters
    ----------
    data
        Log-normalised expression, cells x genes: an AnnData (``X``), sparse or dense matrix.
    gene_sets
        Set name -> gene symbols; absent genes are ignored, as scanpy does.
    var_names
        Gene names of the columns; default ``data.var_names`` for an AnnData.
    n_bins, ctrl_size, seed
        As in :func:`scanpy.tl.score_genes`.
    chunk_size
        Cells per chunk (bounds the extra memory).
    implementation
        ``osteoimmune`` (one pass for all sets) or ``scanpy`` (``sc.tl.score_genes`` set by
        set, :func:`score_genes_loop`).

    Returns
    -------
    pandas.DataFrame
        Cells x sets.
    """
    check_implementation(implementation)
    if implementation == "scanpy":
        return score_genes_loop(
            data, gene_sets, var_names=var_names, n_bins=n_bins, ctrl_size=ctrl_size, seed=seed
        )
    matrix, names = as_csr(data, var_names=var_names)
    present = present_indices(gene_sets, var_names=names)
    bins = expression_bins(gene_means(matrix, chunk_size=chunk_size), n_bins=n_bins)
    columns = []
    for name, index in present.items():
        try:
            controls = control_genes(index, bins, ctrl_size=ctrl_size, seed=seed)
        except SignatureError as err:
            msg = f"Scoring signature set '{name}' failed: {err}"
            raise SignatureError(msg) from err
        values = np.r_[
            np.full(len(index), 1 / len(index)), np.full(len(controls), -1 / len(controls))
        ]
        columns.append((np.r_[index, controls], values))
    weights = weights_matrix(columns, len(names))
    (scores,) = map_row_chunks(
        matrix, lambda chunk: ((chunk @ weights).toarray(),), chunk_size=chunk_size
    )
    return pd.DataFrame(scores, index=obs_names_of(data), columns=list(gene_sets))


def score_genes_loop(
    data: AnnData | sparse.spmatrix | np.ndarray,
    gene_sets: Mapping[str, Sequence[str]],
    *,
    var_names: Sequence[str] | None = None,
    n_bins: int = 25,
    ctrl_size: int = 50,
    seed: int = 0,
) -> pd.DataFrame:
    """The scores of :func:`mean_scores` from :func:`scanpy.tl.score_genes`, one set per call."""
    import scanpy as sc

    matrix, names = as_csr(data, var_names=var_names)
    present_indices(gene_sets, var_names=names)  # the same error for a set with no gene
    work = AnnData(X=matrix, var=pd.DataFrame(index=names))
    scores = {}
    for name, genes in gene_sets.items():
        sc.tl.score_genes(
            work,
            list(genes),
            ctrl_as_ref=False,
            ctrl_size=ctrl_size,
            n_bins=n_bins,
            random_state=seed,
            score_name="score",
            use_raw=False,
        )
        scores[name] = work.obs["score"].to_numpy(dtype=np.float64)
    return pd.DataFrame(scores, index=obs_names_of(data), columns=list(gene_sets))
