"""Rank-based per-cell signature scores (UCell and AUCell style), computed on sparse rows.

Each cell's genes are ranked by expression, highest first, with tied values sharing their
average rank. Only a cell's nonzero entries are ranked: zeros, and genes missing from the
dataset, count as "not in the top ``max_rank``" and get rank ``max_rank + 1``. Every rank
enters a score only through its deficit (``max_rank + 1 - rank`` for UCell, ``max_rank - rank``
for AUCell, 0 beyond the cutoff), which is zero for most genes of a cell, so the deficits are
a sparse matrix and one sparse product with a genes x sets indicator scores all sets at once.
The matrix is processed in chunks of rows and is never densified.

Differences from the R packages, by design: UCell ranks zeros at their average tie rank,
which is above ``max_rank`` for a full transcriptome (so the scores agree) but not for a small
gene panel; AUCell breaks ties at random, here they are averaged so that scores are
deterministic. Values are compared at float32 precision.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse, stats

from osteoimmune.errors import SignatureError

DEFAULT_MAX_RANK = 1500
DEFAULT_CHUNK_SIZE = 1000
METHODS = ("ucell", "aucell")
_VALUE_BITS = 31  # a non-negative float32 without its sign bit


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


def _sorted_keys(chunk: sparse.csr_matrix, gene_bits: int) -> np.ndarray:
    # One uint64 per entry: row | value bits | gene. The IEEE bits of a non-negative float
    # order like the float, so sorting the keys sorts each row by value ascending; a single
    # flat sort is much faster than a per-row or lexicographic argsort.
    lengths = np.diff(chunk.indptr)
    row_part = np.arange(chunk.shape[0], dtype=np.uint64) << np.uint64(_VALUE_BITS + gene_bits)
    keys = np.repeat(row_part, lengths)
    values = chunk.data.astype(np.float32, copy=False).view(np.uint32).astype(np.uint64)
    values <<= np.uint64(gene_bits)
    keys |= values
    keys |= chunk.indices.astype(np.uint64)
    keys.sort()
    return keys


def rank_deficits(
    chunk: sparse.csr_matrix, *, max_rank: int, method: str = "ucell"
) -> sparse.csr_matrix:
    """Per-cell rank deficits of the nonzero entries: what each adds to a rank score.

    Ranks are per row (cell), highest value first, ties averaged; zeros have no deficit.

    Parameters
    ----------
    chunk
        Non-negative CSR rows (cells x genes), at most ``2 ** (33 - gene_bits)`` rows.
    max_rank
        The rank cutoff.
    method
        ``ucell``: ``max_rank + 1 - rank`` for ranks up to ``max_rank`` (UCell counts any
        rank above it as ``max_rank + 1``); ``aucell``: ``max(0, max_rank - rank)``, the
        area a gene adds to the recovery curve.

    Returns
    -------
    scipy.sparse.csr_matrix
        Same shape, float64, holding only the positive deficits (column order unsorted).
    """
    if method not in METHODS:
        msg = f"Unknown rank method '{method}'; use one of {', '.join(METHODS)}."
        raise SignatureError(msg)
    n_rows, n_genes = chunk.shape
    gene_bits = max(1, int(n_genes - 1).bit_length())
    if n_rows > 2 ** (64 - _VALUE_BITS - gene_bits):
        msg = f"A chunk of {n_rows} rows is too large for {n_genes} genes; use smaller chunks."
        raise SignatureError(msg)
    if chunk.nnz == 0:
        return sparse.csr_matrix(chunk.shape, dtype=np.float64)
    keys = _sorted_keys(chunk, gene_bits)
    starts, group_key = _tie_groups(keys, gene_bits)
    sizes = np.diff(starts, append=len(keys))
    row = (group_key >> np.uint64(_VALUE_BITS)).astype(np.intp)
    # Sorting keeps each row's entries within the row's own indptr range. Ascending positions
    # a..b (0-based, within the row) hold descending ranks L - b .. L - a, average
    # L - (a + b) / 2.
    within = starts - chunk.indptr[row]
    rank = np.diff(chunk.indptr)[row] - (2 * within + sizes - 1) / 2
    if method == "ucell":
        deficit = np.where(rank <= max_rank, max_rank + 1 - rank, 0.0)
    else:
        deficit = max_rank - rank
    kept = (deficit > 0) & ((group_key & np.uint64(2**_VALUE_BITS - 1)) != 0)
    per_row = np.bincount(row[kept], weights=sizes[kept], minlength=n_rows).astype(np.int64)
    indptr = np.concatenate(([0], np.cumsum(per_row)))
    genes = (keys[np.repeat(kept, sizes)] & np.uint64(2**gene_bits - 1)).astype(np.int32)
    data = np.repeat(deficit[kept], sizes[kept])
    return sparse.csr_matrix((data, genes, indptr), shape=chunk.shape)


def _tie_groups(keys: np.ndarray, gene_bits: int) -> tuple[np.ndarray, np.ndarray]:
    # Entries of one row with the same value (the key without its gene bits) form a tie group.
    tie_keys = keys >> np.uint64(gene_bits)
    first = np.empty(len(keys), dtype=bool)
    first[0] = True
    np.not_equal(tie_keys[1:], tie_keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return starts, tie_keys[starts]


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


def resolve_max_rank(
    n_genes: int,
    *,
    method: str,
    max_rank: int | None,
    set_sizes: Mapping[str, int] | None = None,
) -> int:
    """Return the rank cutoff to use and check that every gene set fits under it.

    Parameters
    ----------
    n_genes
        Genes in the dataset; the cutoff is never more than this (as in UCell).
    method
        ``ucell`` (default cutoff 1500) or ``aucell`` (default 5% of the genes, rounded up).
    max_rank
        The requested cutoff, or None for the method's default.
    set_sizes
        Set name -> number of genes; for UCell a set larger than the cutoff is an error.
    """
    if method not in METHODS:
        msg = f"Unknown rank method '{method}'; use one of {', '.join(METHODS)}."
        raise SignatureError(msg)
    if max_rank is None:
        max_rank = DEFAULT_MAX_RANK if method == "ucell" else int(np.ceil(0.05 * n_genes))
    if max_rank < 1:
        msg = f"max_rank must be at least 1, got {max_rank}."
        raise SignatureError(msg)
    max_rank = int(min(max_rank, n_genes))
    # UCell's score needs every set gene to fit under the cutoff; AUCell's area does not.
    sizes = (set_sizes or {}) if method == "ucell" else {}
    too_big = [name for name, size in sizes.items() if size > max_rank]
    if too_big:
        msg = f"Gene sets {too_big} have more genes than max_rank={max_rank}; raise max_rank."
        raise SignatureError(msg)
    return max_rank


def _deficit_scores(dsum, *, n_genes, n_present, method, max_rank):
    if method == "aucell":  # area under the recovery curve up to max_rank
        denom = max_rank * n_present.astype(np.float64)
        return np.divide(dsum, denom, out=np.zeros_like(dsum), where=denom > 0)
    # UCell: 1 - U / (n * max_rank), with U = rank sum - n(n+1)/2 and ranks above max_rank
    # (deficit 0) counted as max_rank + 1; 0 when no gene is in the top max_rank, as in UCell.
    # In place, as an affine map of dsum: the arrays are cells x (sets and random sets).
    n = n_genes.astype(np.float64)
    offset = 1 - (n * (max_rank + 1) - n * (n + 1) / 2) / (n * max_rank)
    none_in_top = dsum == 0
    dsum /= n * max_rank
    dsum += offset
    dsum[none_in_top] = 0.0
    return dsum


def chunk_rank_scores(
    chunk: sparse.csr_matrix,
    indicator: sparse.csr_matrix,
    *,
    n_genes: np.ndarray,
    n_present: np.ndarray,
    method: str,
    max_rank: int,
) -> np.ndarray:
    """Rank scores of a chunk of cells for the sets (columns) of an indicator matrix.

    Parameters
    ----------
    chunk
        Non-negative CSR rows (cells x genes).
    indicator
        Genes x sets weights, 1 for a set's genes (see :func:`gene_set_indicator`).
    n_genes, n_present
        Per set: its size counting absent genes (UCell), and its present genes (AUCell).
    method
        ``ucell`` or ``aucell``.
    max_rank
        The rank cutoff (from :func:`resolve_max_rank`).

    Returns
    -------
    numpy.ndarray
        Cells x sets scores.
    """
    dsum = (rank_deficits(chunk, max_rank=max_rank, method=method) @ indicator).toarray()
    return _deficit_scores(
        dsum, n_genes=n_genes, n_present=n_present, method=method, max_rank=max_rank
    )


def rank_scores(
    data: AnnData | sparse.spmatrix | np.ndarray,
    gene_sets: Mapping[str, Sequence[str]],
    *,
    var_names: Sequence[str] | None = None,
    method: str = "ucell",
    max_rank: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
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

    Returns
    -------
    pandas.DataFrame
        Cells x sets, scores in [0, 1]; the same input always gives the same output.
    """
    matrix, names = as_csr(data, var_names=var_names)
    indicator, n_genes = gene_set_indicator(gene_sets, var_names=names)
    sizes = dict(zip(gene_sets, n_genes, strict=True))
    max_rank = resolve_max_rank(matrix.shape[1], method=method, max_rank=max_rank, set_sizes=sizes)
    n_present = np.diff(indicator.tocsc().indptr)

    def score_chunk(chunk):
        scores = chunk_rank_scores(
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
