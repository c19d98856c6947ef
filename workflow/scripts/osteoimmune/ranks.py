"""Rank-based per-cell signature scores (UCell and AUCell), for many gene sets at once.

Each cell's genes are ranked by expression, highest first, with tied values sharing their
average rank; a set's score is UCell's ``1 - U / (n * max_rank)`` or AUCell's area under the
recovery curve up to ``max_rank``. This module checks the input, builds the genes x sets
indicator and runs the cells in chunks; the ranking and scoring kernel, and how it differs from
the R packages, is :mod:`osteoimmune.kernels.ranks`. The matrix is never densified.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse, stats

from osteoimmune.errors import SignatureError
from osteoimmune.kernels.ranks import (
    DEFAULT_MAX_RANK,
    METHODS,
    chunk_rank_scores,
    rank_deficits,
    rankdata_scores,
    resolve_max_rank,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_RANK",
    "METHODS",
    "as_csr",
    "chunk_rank_scores",
    "gene_set_indicator",
    "map_row_chunks",
    "method_agreement",
    "rank_deficits",
    "rank_scores",
    "resolve_max_rank",
    "row_chunks",
]

DEFAULT_CHUNK_SIZE = 1000
IMPLEMENTATIONS = ("osteoimmune", "rankdata")


def as_csr(
    data: AnnData | sparse.spmatrix | np.ndarray, *, var_names: Sequence[str] | None = None
) -> tuple[sparse.csr_matrix, pd.Index]:
    """Return expression as a CSR matrix (cells x genes) and its gene names, checked.

    Parameters
    ----------
    data
        An AnnData (its ``X``), a scipy sparse matrix or a dense array; non-negative values,
        e.g. log-normalised expression. Sparse input is not copied when already CSR.
    var_names
        Gene names of the columns; default ``data.var_names`` for an AnnData.

    Returns
    -------
    tuple
        The CSR matrix and the gene names as a :class:`pandas.Index`.
    """
    if isinstance(data, AnnData):
        var_names = data.var_names if var_names is None else var_names
        data = data.X
    if var_names is None:
        msg = "var_names is required when scoring a matrix rather than an AnnData."
        raise SignatureError(msg)
    # csr_matrix() shares the arrays of CSR input (matrix or array) and converts the rest.
    matrix = sparse.csr_matrix(data if sparse.issparse(data) else np.asarray(data))
    names = pd.Index(var_names)
    if matrix.shape[1] != len(names):
        msg = f"The matrix has {matrix.shape[1]} columns but {len(names)} var_names were given."
        raise SignatureError(msg)
    if not names.is_unique:
        msg = "var_names are not unique; make them unique (adata.var_names_make_unique())."
        raise SignatureError(msg)
    if matrix.nnz and not (matrix.data.min() >= 0 and np.isfinite(matrix.data.max())):
        msg = (
            "Expression has negative, NaN or infinite values; score log-normalised "
            "expression, not scaled or centred data."
        )
        raise SignatureError(msg)
    return matrix, names


def gene_set_indicator(
    gene_sets: Mapping[str, Sequence[str]], *, var_names: Sequence[str]
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Build the genes x sets indicator matrix of the genes present in ``var_names``.

    Parameters
    ----------
    gene_sets
        Set name -> gene symbols; duplicated symbols count once.
    var_names
        Gene names of the dataset's columns.

    Returns
    -------
    tuple
        The indicator (CSR, float64, ``len(var_names)`` x number of sets) and the size of
        each set counting its absent genes (int array).
    """
    names = pd.Index(var_names)
    rows, cols, sizes = [], [], []
    for col, genes in enumerate(gene_sets.values()):
        unique = list(dict.fromkeys(genes))
        if not unique:
            msg = f"Gene set '{list(gene_sets)[col]}' is empty."
            raise SignatureError(msg)
        index = names.get_indexer(unique)
        present = index[index >= 0]
        rows.append(present)
        cols.append(np.full(len(present), col))
        sizes.append(len(unique))
    shape = (len(names), len(sizes))
    rows_all = np.concatenate(rows) if rows else np.zeros(0, int)
    cols_all = np.concatenate(cols) if cols else np.zeros(0, int)
    values = np.ones(len(rows_all))
    indicator = sparse.csr_matrix((values, (rows_all, cols_all)), shape=shape)
    return indicator, np.asarray(sizes, dtype=np.int64)


def row_chunks(
    matrix: sparse.csr_matrix, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[tuple[slice, sparse.csr_matrix]]:
    """Yield ``(rows, chunk)`` views of consecutive row blocks of a CSR matrix (no copy)."""
    for start in range(0, matrix.shape[0], chunk_size):
        stop = min(start + chunk_size, matrix.shape[0])
        lo, hi = matrix.indptr[start], matrix.indptr[stop]
        chunk = sparse.csr_matrix(
            (matrix.data[lo:hi], matrix.indices[lo:hi], matrix.indptr[start : stop + 1] - lo),
            shape=(stop - start, matrix.shape[1]),
            copy=False,
        )
        yield slice(start, stop), chunk


def map_row_chunks(
    matrix: sparse.csr_matrix, func, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> list[np.ndarray]:
    """Apply ``func`` to consecutive row chunks and stack its outputs in row order.

    Parameters
    ----------
    matrix
        CSR cells x genes.
    func
        Takes a CSR chunk and returns a tuple of arrays with one row per cell of the chunk.
    chunk_size
        Rows per chunk; bounds the memory ``func`` needs beyond the matrix.

    Returns
    -------
    list of numpy.ndarray
        One array per output of ``func``, rows in the order of ``matrix``.
    """
    if chunk_size < 1:
        msg = f"chunk_size must be a positive number of cells, got {chunk_size}."
        raise SignatureError(msg)
    outputs = [func(chunk) for _, chunk in row_chunks(matrix, chunk_size=chunk_size)]
    if not outputs:
        return [np.asarray(part) for part in func(matrix[:0])]
    return [np.concatenate(parts) for parts in zip(*outputs, strict=True)]


def rank_scores(
    data: AnnData | sparse.spmatrix | np.ndarray,
    gene_sets: Mapping[str, Sequence[str]],
    *,
    var_names: Sequence[str] | None = None,
    method: str = "ucell",
    max_rank: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    implementation: str = "osteoimmune",
) -> pd.DataFrame:
    """Score every gene set in every cell from per-cell expression ranks.

    Parameters
    ----------
    data
        Log-normalised expression, cells x genes: an AnnData (``X``), sparse or dense matrix.
    gene_sets
        Set name -> gene symbols. UCell counts absent genes in the set size (as zeros);
        AUCell uses the present genes only.
    var_names
        Gene names of the columns; default ``data.var_names`` for an AnnData.
    method
        ``ucell`` (default; 1 - U / (n * max_rank), U the Mann-Whitney U of the set's ranks)
        or ``aucell`` (area under the recovery curve of the set's genes up to ``max_rank``).
    max_rank
        Rank cutoff; default 1500 for UCell, 5% of the genes for AUCell; never more than
        the number of genes.
    chunk_size
        Cells ranked at a time (bounds the extra memory).
    implementation
        ``osteoimmune`` (sparse ranks, :func:`osteoimmune.kernels.ranks.chunk_rank_scores`)
        or ``rankdata`` (the definition, cell by cell on dense rows:
        :func:`osteoimmune.kernels.ranks.rankdata_scores`; slow, for checking).

    Returns
    -------
    pandas.DataFrame
        Cells x sets, scores in [0, 1]; the same input always gives the same output.
    """
    if implementation not in IMPLEMENTATIONS:
        msg = f"implementation must be one of {', '.join(IMPLEMENTATIONS)}, not {implementation!r}."
        raise SignatureError(msg)
    matrix, names = as_csr(data, var_names=var_names)
    indicator, n_genes = gene_set_indicator(gene_sets, var_names=names)
    sizes = dict(zip(gene_sets, n_genes, strict=True))
    max_rank = resolve_max_rank(matrix.shape[1], method=method, max_rank=max_rank, set_sizes=sizes)
    n_present = np.diff(indicator.tocsc().indptr)

    kernel = chunk_rank_scores if implementation == "osteoimmune" else rankdata_scores

    def score_chunk(chunk):
        scores = kernel(
            chunk,
            indicator,
            n_genes=n_genes,
            n_present=n_present,
            method=method,
            max_rank=max_rank,
        )
        return (scores,)

    (scores,) = map_row_chunks(matrix, score_chunk, chunk_size=chunk_size)
    obs_names = data.obs_names if isinstance(data, AnnData) else None
    return pd.DataFrame(scores, index=obs_names, columns=list(gene_sets))


def method_agreement(scores_a: pd.DataFrame, scores_b: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlation per gene set between two methods' per-cell scores.

    Parameters
    ----------
    scores_a, scores_b
        Cells x sets; only the cells (index) and sets (columns) in both are compared.

    Returns
    -------
    pandas.DataFrame
        One row per shared set (index ``set``): ``spearman`` (NaN when a score is constant)
        and ``n_cells``.
    """
    cells = scores_a.index.intersection(scores_b.index, sort=False)
    sets = scores_a.columns.intersection(scores_b.columns, sort=False)
    rows = []
    for name in sets:
        a = scores_a.loc[cells, name].to_numpy(dtype=float)
        b = scores_b.loc[cells, name].to_numpy(dtype=float)
        constant = len(cells) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0
        rho = np.nan if constant else stats.spearmanr(a, b).statistic
        rows.append((float(rho), len(cells)))
    index = pd.Index(list(sets), name="set")
    return pd.DataFrame(rows, index=index, columns=["spearman", "n_cells"])
