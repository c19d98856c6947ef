"""Average ranks of the stored values of sparse rows or columns, ties averaged, zeros tied.

The one ranking routine behind :mod:`osteoimmune.kernels.wilcoxon` (ranks within each
column of a CSC matrix, as ``scipy.stats.rankdata(method="average")`` of the column) and
:mod:`osteoimmune.kernels.ranks` (ranks within each row, highest first, for UCell/AUCell).
Only stored values are sorted; the zeros of a row or column form one tied block whose rank
follows from how many values are negative and how many are zero.

Values are put in order by one of two sorts, which give the same tie groups:
:func:`sort_segments` (``numpy.lexsort`` by segment then value; any dtype and sign) and the
packed ``uint64`` keys of :mod:`osteoimmune.kernels.ranks` (non-negative float32 only, several
times faster). Both then call :func:`tie_groups` and :func:`mean_positions`. All ranks are
half-integers, exact in float64, so the results do not depend on which formula combines them.
"""

from __future__ import annotations

import numpy as np


def segment_of(indptr: np.ndarray) -> np.ndarray:
    """The segment (row of CSR, column of CSC) of every stored value, in storage order."""
    counts = np.diff(indptr)
    return np.repeat(np.arange(len(counts)), counts)


def sort_segments(data: np.ndarray, indptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order sorting stored values by segment, then value ascending, and their segments.

    Returns the permutation (storage positions in sorted order) and the segment of each
    sorted value.
    """
    segment = segment_of(indptr)
    order = np.lexsort((data, segment))
    return order, segment[order]


def tie_groups(new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First sorted position and size of every tie group.

    ``new`` flags the sorted values that start a group: the first of its segment or a value
    other than the one before it.
    """
    starts = np.flatnonzero(new)
    return starts, np.diff(starts, append=len(new))


def mean_positions(starts: np.ndarray, sizes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """1-based average position of each tie group among its segment's sorted stored values.

    ``offsets`` is the sorted position where each group's segment begins (``indptr`` of it).
    """
    return starts - offsets + (sizes + 1) / 2


def sparse_ranks(data: np.ndarray, indptr: np.ndarray, n_total: int) -> tuple:
    """Average ranks (as ``scipy.stats.rankdata``) of segments of ``n_total`` values each.

    ``data`` and ``indptr`` are those of CSC columns (or CSR rows) whose unstored entries are
    zeros. Returns the rank of each stored value (in storage order) and the rank of a zero,
    per segment; only stored values are sorted (zeros form one tied block).
    """
    counts = np.diff(indptr)
    order, segments = sort_segments(data, indptr)
    values = data[order]
    new = np.r_[True, (segments[1:] != segments[:-1]) | (values[1:] != values[:-1])]
    starts, tied = tie_groups(new)
    n_zero = n_total - counts
    rank = mean_positions(starts, tied, indptr[segments[starts]])
    # positive values rank above the segment's zeros
    rank += np.where(values[starts] > 0, n_zero[segments[starts]], 0)
    ranks = np.empty(len(data))
    ranks[order] = rank[np.cumsum(new) - 1]
    n_negative = np.bincount(segments[values < 0], minlength=len(counts))
    return ranks, n_negative + (n_zero + 1) / 2
