"""Wilcoxon rank-sum test of each group against the rest, on sparse X without copies.

Mirrors ``sc.tl.rank_genes_groups(method="wilcoxon", reference="rest", use_raw=False)`` of
scanpy 1.11.x (``scanpy.tools._rank_genes_groups``): the z-score of the rank sum without tie
correction, two-sided normal p-values, Benjamini-Hochberg, log2 fold changes of ``expm1`` means,
the top genes chosen as scanpy's ``_select_top_n`` does, and the same ``uns`` record. What
differs is how: scanpy ranks the group and its rest again for every group (dense chunks of the
matrix); here the ranks of every column are computed once, sorting only stored values
(:func:`osteoimmune.kernels.sparse_ranks.sparse_ranks`) in chunks of columns, and summed over
all groups by one sparse product. Sums are taken in another order than scanpy's, so statistics
agree to float rounding (rtol 1e-5 in tests/test_kernels.py). Switch back:
``osteoimmune.cluster.markers(implementation="scanpy")``.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse, stats

from osteoimmune.kernels.sparse_ranks import sparse_ranks

# Nonzeros ranked at a time by wilcoxon_vs_rest: bounds its temporaries (a few int64/float64
# arrays of this length) whatever the matrix size.
RANK_CHUNK_NNZ = 250_000


def _column_chunks(x: sparse.csc_matrix):
    """Column ranges of ``x`` holding about ``RANK_CHUNK_NNZ`` stored values each."""
    nnz_per_gene = np.diff(x.indptr)
    left = 0
    while left < x.shape[1]:
        right = left + max(
            int(np.searchsorted(np.cumsum(nnz_per_gene[left:]), RANK_CHUNK_NNZ, side="right")), 1
        )
        yield left, right
        left = right


def _group_sums(x: sparse.csc_matrix, members: sparse.csr_matrix) -> tuple:
    """Column sums over each group's cells and over all cells, in float64, chunk by chunk."""
    sums = np.empty((members.shape[0], x.shape[1]))
    totals = np.empty(x.shape[1])
    for left, right in _column_chunks(x):
        chunk = x[:, left:right].astype(np.float64)
        sums[:, left:right] = (members @ chunk).toarray()
        totals[left:right] = np.asarray(chunk.sum(axis=0)).ravel()
    return sums, totals


def _rank_sums(x: sparse.csc_matrix, members: sparse.csr_matrix) -> np.ndarray:
    """Sum of each column's ranks over the cells of each group (``members``: groups x cells)."""
    sums = np.empty((members.shape[0], x.shape[1]))
    sizes = np.asarray(members.sum(axis=1))
    for left, right in _column_chunks(x):
        chunk = x[:, left:right]
        ranks, zero_rank = sparse_ranks(chunk.data, chunk.indptr, x.shape[0])
        # each stored value adds its rank minus the zero rank every cell is first given
        ranks -= np.repeat(zero_rank, np.diff(chunk.indptr))
        shifted = sparse.csc_matrix((ranks, chunk.indices, chunk.indptr), shape=chunk.shape)
        sums[:, left:right] = (members @ shifted).toarray() + sizes * zero_rank
    return sums


def _top_n(scores: np.ndarray, n_top: int) -> np.ndarray:
    # scanpy's _select_top_n: the same genes in the same order for tied scores
    partition = np.argpartition(scores, -n_top)[-n_top:]
    return partition[np.argsort(scores[partition])[::-1]]


def wilcoxon_vs_rest(adata: ad.AnnData, *, groupby: str, groups: list[str], n_genes: int) -> None:
    """Wilcoxon rank-sum test of each group against all other cells, on sparse ``X``.

    The statistics of ``sc.tl.rank_genes_groups(method="wilcoxon", reference="rest",
    use_raw=False)`` (z-score without tie correction, two-sided normal p-value,
    Benjamini-Hochberg, log2 fold change of ``expm1`` means), stored the same way in
    ``uns['rank_genes_groups']``. scanpy copies the rest of the matrix for every group;
    here ranks are computed once, sorting only stored values in chunks of columns, and
    summed over groups with a sparse product, so the cost does not grow with the number of
    groups times the matrix size.
    """
    # one CSC copy in X's own dtype (ranks only compare values; sums are taken in float64)
    x = adata.X.tocsc(copy=True) if sparse.issparse(adata.X) else sparse.csc_matrix(adata.X)
    x.eliminate_zeros()
    labels = adata.obs[groupby].astype(str).to_numpy()
    rows = [np.flatnonzero(labels == str(group)) for group in groups]
    members = sparse.csr_matrix(
        (
            np.ones(sum(map(len, rows))),
            np.concatenate(rows),
            np.cumsum([0] + [len(r) for r in rows]),
        ),
        shape=(len(groups), adata.n_obs),
    )
    n_cells, sizes = adata.n_obs, np.array([len(r) for r in rows], dtype=float)[:, None]
    std = np.sqrt(sizes * (n_cells - sizes) * (n_cells + 1) / 12.0)
    scores = (_rank_sums(x, members) - sizes * (n_cells + 1) / 2.0) / std
    scores[np.isnan(scores)] = 0
    pvals = 2 * stats.norm.sf(np.abs(scores))
    pvals_adj = stats.false_discovery_control(pvals, axis=1, method="bh")
    group_sums, totals = _group_sums(x, members)
    mean_group = group_sums / sizes
    mean_rest = (totals[None, :] - group_sums) / (n_cells - sizes)
    base = adata.uns.get("log1p", {}).get("base")
    scale = np.log(base) if base is not None else 1.0
    log_fold = np.log2((np.expm1(mean_group * scale) + 1e-9) / (np.expm1(mean_rest * scale) + 1e-9))
    fields = {"names": {}, "scores": {}, "pvals": {}, "pvals_adj": {}, "logfoldchanges": {}}
    for i, group in enumerate(map(str, groups)):
        top = _top_n(scores[i], n_genes)
        fields["names"][group] = adata.var_names[top].to_numpy()
        for name, values in [
            ("scores", scores),
            ("pvals", pvals),
            ("pvals_adj", pvals_adj),
            ("logfoldchanges", log_fold),
        ]:
            fields[name][group] = values[i, top]
    dtypes = {
        "names": "O",
        "scores": "float32",
        "logfoldchanges": "float32",
        "pvals": "float64",
        "pvals_adj": "float64",
    }
    adata.uns["rank_genes_groups"] = {
        "params": {
            "groupby": groupby,
            "reference": "rest",
            "method": "wilcoxon",
            "use_raw": False,
            "layer": None,
            "corr_method": "benjamini-hochberg",
        }
    } | {
        name: pd.DataFrame(columns).to_records(index=False, column_dtypes=dtypes[name])
        for name, columns in fields.items()
    }
