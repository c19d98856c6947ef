"""Rank-based per-cell signature scores (UCell and AUCell), for many gene sets at once.

Each cell's genes are ranked by expression, highest first, with tied values sharing their
average rank; a set's score is UCell's ``1 - U / (n * max_rank)`` or AUCell's area under the
recovery curve up to ``max_rank``. This module checks the input, builds the genes x sets
indicator and runs the cells in chunks; the ranking and scoring kernel, and how it differs from
the R packages, is :mod:`osteoimmune.kernels.ranks`. The matrix is never densified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse, stats

from osteoimmune.errors import SignatureError
from osteoimmune.kernels.chunks import DEFAULT_CHUNK_SIZE, as_csr, map_row_chunks, row_chunks
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

IMPLEMENTATIONS = ("osteoimmune", "rankdata")


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
