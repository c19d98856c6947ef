"""UCell and AUCell rank scores of sparse rows: per-cell ranks, rank deficits, scores.

Mirrors two R/Bioconductor methods, not a Python function:

* UCell (Andreatta & Carmona 2021, Comput Struct Biotechnol J 19:3796), ``ScoreSignatures_UCell``
  of UCell 2.x: ``1 - U / (n * maxRank)``, U the Mann-Whitney U of the set's ranks, ranks
  beyond ``maxRank`` (default 1500) counted as ``maxRank + 1``, 0 when no gene is in the top;
* AUCell (Aibar et al. 2017, Nat Methods 14:1083), ``AUCell_calcAUC``: area under the recovery
  curve of the set's genes up to ``aucMaxRank`` (default 5% of the genes), over the set's
  present genes.

Where it differs, by design: only a cell's nonzero entries are ranked (by the shared routine of
:mod:`osteoimmune.kernels.sparse_ranks`, on packed ``uint64`` keys), zeros and absent genes get
rank ``max_rank + 1`` (UCell ranks zeros at their average tie rank: the same for a full
transcriptome, not for a small panel); ties are averaged where AUCell breaks them at random,
so scores are deterministic; values are compared at float32 precision.

No Python package gives these scores (decoupler 2.2's ``aucell`` uses ordinal ranks and another
normalisation), so the switch back, ``implementation="rankdata"`` of
:func:`osteoimmune.ranks.rank_scores`, is :func:`rankdata_scores`: the definition above, cell
by cell with ``scipy.stats.rankdata`` on the dense row.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import sparse, stats

from osteoimmune.errors import SignatureError
from osteoimmune.kernels.sparse_ranks import mean_positions, tie_groups

DEFAULT_MAX_RANK = 1500
METHODS = ("ucell", "aucell")
_VALUE_BITS = 31  # a non-negative float32 without its sign bit


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
    starts, sizes, group_key = _tie_groups(keys, gene_bits)
    row = (group_key >> np.uint64(_VALUE_BITS)).astype(np.intp)
    # Sorting keeps each row's entries within the row's own indptr range; the group's
    # ascending average position p among the row's L stored values is descending rank L + 1 - p.
    rank = np.diff(chunk.indptr)[row] + 1 - mean_positions(starts, sizes, chunk.indptr[row])
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


def _tie_groups(keys: np.ndarray, gene_bits: int) -> tuple[np.ndarray, ...]:
    # Entries of one row with the same value (the key without its gene bits) form a tie group.
    tie_keys = keys >> np.uint64(gene_bits)
    new = np.empty(len(keys), dtype=bool)
    new[0] = True
    np.not_equal(tie_keys[1:], tie_keys[:-1], out=new[1:])
    starts, sizes = tie_groups(new)
    return starts, sizes, tie_keys[starts]


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


def rankdata_scores(
    matrix: sparse.csr_matrix,
    indicator: sparse.csr_matrix,
    *,
    n_genes: np.ndarray,
    n_present: np.ndarray,
    method: str,
    max_rank: int,
) -> np.ndarray:
    """UCell or AUCell scores by their definition, cell by cell on dense rows (slow).

    Each cell's genes are ranked highest first by ``scipy.stats.rankdata(method="average")``
    of its float32 values; zeros and ranks beyond ``max_rank`` count as ``max_rank + 1``.
    Arguments as in :func:`chunk_rank_scores`; for testing the sparse kernel and as its
    switch back, not for large data.
    """
    columns = indicator.tocsc()
    members = np.split(columns.indices, columns.indptr[1:-1])
    n = n_genes.astype(np.float64)
    scores = np.zeros((matrix.shape[0], len(members)))
    for i in range(matrix.shape[0]):
        row = matrix[i].toarray().ravel().astype(np.float32)
        ranks = stats.rankdata(-row, method="average")
        ranks[(row == 0) | (ranks > max_rank)] = max_rank + 1
        for j, genes in enumerate(members):
            if method == "aucell":
                area = np.maximum(max_rank - ranks[genes], 0).sum()
                scores[i, j] = area / (max_rank * n_present[j]) if n_present[j] else 0.0
            elif (ranks[genes] <= max_rank).any():
                # absent genes count as ranked max_rank + 1
                total = ranks[genes].sum() + (n[j] - len(genes)) * (max_rank + 1)
                scores[i, j] = 1 - (total - n[j] * (n[j] + 1) / 2) / (n[j] * max_rank)
    return scores
