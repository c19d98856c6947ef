"""Checked CSR input and row chunking, shared by the kernels and the scoring that calls them.

Not a mirror of an upstream function: the plumbing the score kernels (:mod:`.score_genes`,
:mod:`.ranks` through :func:`osteoimmune.ranks.rank_scores`) and the calibration run on, so a
cells x genes matrix is scored in row blocks and never densified. Importable from
:mod:`osteoimmune.ranks` as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from osteoimmune.errors import SignatureError

DEFAULT_CHUNK_SIZE = 1000


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
