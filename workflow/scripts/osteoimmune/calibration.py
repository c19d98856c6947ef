"""Null calibration of per-cell signature scores against expression-matched random gene sets.

For every gene set, random gene sets of the same size are drawn, each random gene from the same
expression bin as the set gene it replaces (bins as in :func:`scanpy.tl.score_genes`: genes
ranked by mean expression, about ``n_genes / (n_bins - 1)`` genes per bin). Scoring them with the
same method gives every cell a null distribution for every set, hence a z-score and an
empirical p-value. All observed and random sets are scored in one pass over the matrix: one
sparse product of each chunk of cells (or of its rank deficits) with a genes x sets matrix.

The expression bins, control genes and mean scores are those of scanpy's ``score_genes``
(:mod:`osteoimmune.kernels.score_genes`; :func:`mean_scores` scores many sets at once), the
rank scores those of :mod:`osteoimmune.kernels.ranks`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from osteoimmune.errors import SignatureError
from osteoimmune.kernels.ranks import chunk_rank_scores, resolve_max_rank
from osteoimmune.kernels.score_genes import (
    control_genes,
    expression_bins,
    gene_means,
    mean_scores,
    obs_names_of,
    present_indices,
    weights_matrix,
)
from osteoimmune.ranks import DEFAULT_CHUNK_SIZE, as_csr, map_row_chunks

__all__ = [
    "METHODS",
    "Calibration",
    "calibrate",
    "control_genes",
    "expression_bins",
    "gene_means",
    "mean_scores",
    "null_gene_sets",
    "present_indices",
    "set_rng",
    "z_and_p",
]

METHODS = ("ucell", "aucell", "mean")
# Relative size below which a null's spread, or a score's distance from it, is float rounding.
FLAT_TOLERANCE = 1e-9


def null_gene_sets(
    set_index: np.ndarray, bins: np.ndarray, *, n_null: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw random gene sets matched to one set in size and expression bins.

    Each random set replaces every gene of the set by a gene of the same bin that is not in
    the set, without repeats within a random set. A bin with fewer genes outside the set than
    the set has in it is widened to its neighbouring bins (repeats only if all genes together
    are too few).

    Parameters
    ----------
    set_index
        Column indices of the set's genes.
    bins
        Expression bin of every gene (:func:`expression_bins`).
    n_null
        Number of random sets.
    rng
        The random generator.

    Returns
    -------
    numpy.ndarray
        ``n_null`` x ``len(set_index)`` column indices.
    """
    outside = np.ones(len(bins), dtype=bool)
    outside[set_index] = False
    parts = []
    for cut in np.unique(bins[set_index]):
        need = int(np.count_nonzero(bins[set_index] == cut))
        pool = _bin_pool(bins, outside, cut=cut, need=need)
        if len(pool) >= need:
            keys = rng.random((n_null, len(pool)))
            picks = np.argpartition(keys, need - 1, axis=1)[:, :need]
        else:
            picks = rng.integers(0, len(pool), size=(n_null, need))
        parts.append(pool[picks])
    return np.hstack(parts)


def _bin_pool(bins: np.ndarray, outside: np.ndarray, *, cut: int, need: int) -> np.ndarray:
    # Genes outside the set in bin `cut`, widened to neighbouring bins while there are fewer
    # than `need` (scanpy's top bin can hold a single gene).
    low = high = cut
    pool = np.flatnonzero((bins == cut) & outside)
    while len(pool) < need and (low > bins.min() or high < bins.max()):
        low, high = low - 1, high + 1
        pool = np.flatnonzero((bins >= low) & (bins <= high) & outside)
    if len(pool) == 0:
        msg = "No gene outside the set to draw random sets from; the gene panel is too small."
        raise SignatureError(msg)
    return pool


def set_rng(seed: int, name: str) -> np.random.Generator:
    """The random generator of one set, from the seed and the set's name.

    A set's random sets so depend only on the seed, its name, its genes and the expression
    bins: adding, removing or reordering other sets does not change them.
    """
    if seed < 0:
        msg = f"seed must be a non-negative integer, got {seed}."
        raise SignatureError(msg)
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def z_and_p(observed: np.ndarray, null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell z-scores and empirical p-values of observed scores against null scores.

    Parameters
    ----------
    observed
        Cells x sets.
    null
        Cells x sets x random sets.

    Returns
    -------
    tuple of numpy.ndarray
        Cells x sets: ``z = (score - mean_null) / sd_null`` (sd with ddof=1) and
        ``p = (1 + #(null >= score)) / (n_null + 1)``. z is always finite: against a null
        without spread (e.g. a cell expressing none of the random genes) the sd is that of the
        null with the score added as one more draw (as p counts it), which gives
        ``z = +-sqrt(n_null + 1)``, and 0 when the score equals the null.
    """
    n_null = null.shape[2]
    mean = null.mean(axis=2)
    diff = observed - mean
    sd = null.std(axis=2, ddof=1)
    # Spread and differences within rounding of the scores' own scale count as none.
    tol = FLAT_TOLERANCE * np.maximum(1.0, np.abs(mean))
    flat = np.where(np.abs(diff) <= tol, 0.0, np.sign(diff) * np.sqrt(n_null + 1))
    z = np.divide(diff, sd, out=flat, where=sd > tol)
    p = (1 + (null >= observed[:, :, None]).sum(axis=2)) / (n_null + 1)
    return z, p


class Calibration(NamedTuple):
    """Per-cell scores of every set with their null calibration; each cells x sets."""

    score: pd.DataFrame
    z: pd.DataFrame
    p: pd.DataFrame


def _score_columns(present, nulls, controls, *, method):
    # Columns of the one product: observed sets, each set's random sets (set by set), then
    # for `mean` the control genes. `mean` averages genes; the rank methods sum deficits.
    columns = [(index, np.ones(len(index))) for index in present.values()]
    for name, index in present.items():
        columns += [(row, np.ones(len(index))) for row in nulls[name]]
    columns += [(ctrl, np.ones(len(ctrl))) for ctrl in controls]
    if method == "mean":
        columns = [(genes, vals / len(genes)) for genes, vals in columns]
    return columns


def _rank_scorer(gene_sets, present, weights, *, method, max_rank, n_genes, n_null):
    sizes = np.array([len(dict.fromkeys(genes)) for genes in gene_sets.values()])
    k = np.array([len(index) for index in present.values()])
    max_rank = resolve_max_rank(
        n_genes,
        method=method,
        max_rank=max_rank,
        set_sizes=dict(zip(gene_sets, sizes, strict=True)),
    )
    # A set and its random sets have the same size, so the same score formula applies.
    col_sizes, col_present = np.r_[sizes, np.repeat(sizes, n_null)], np.r_[k, np.repeat(k, n_null)]

    def score(chunk):
        return chunk_rank_scores(
            chunk,
            weights,
            n_genes=col_sizes,
            n_present=col_present,
            method=method,
            max_rank=max_rank,
        )

    return score


def _chunk_scorer(
    gene_sets, present, nulls, controls, *, method, max_rank, n_genes, n_null
) -> Callable:
    n_sets = len(present)
    end = n_sets * (1 + n_null)
    weights = weights_matrix(_score_columns(present, nulls, controls, method=method), n_genes)
    if method == "mean":

        def score(chunk):
            return (chunk @ weights).toarray()

    else:
        score = _rank_scorer(
            gene_sets,
            present,
            weights,
            method=method,
            max_rank=max_rank,
            n_genes=n_genes,
            n_null=n_null,
        )

    def scorer(chunk):
        scores = score(chunk)
        # A copy: a view would keep the whole cells x (sets and random sets) array alive.
        observed = scores[:, :n_sets].copy()
        z, p = z_and_p(observed, scores[:, n_sets:end].reshape(len(scores), n_sets, n_null))
        if method == "mean":
            # The control mean is the same for a set and its random sets, so z and p use the
            # set mean alone; the score reported is score_genes' set mean - control mean.
            observed = observed - scores[:, end:]
        return observed, z, p

    return scorer


def _check_calibration_args(method: str, n_null: int) -> None:
    if method not in METHODS:
        msg = f"Unknown calibration method '{method}'; use one of {', '.join(METHODS)}."
        raise SignatureError(msg)
    if n_null < 2:
        msg = f"n_null must be at least 2 (the project uses 100 or more), got {n_null}."
        raise SignatureError(msg)


def calibrate(
    data: AnnData | sparse.spmatrix | np.ndarray,
    gene_sets: Mapping[str, Sequence[str]],
    *,
    var_names: Sequence[str] | None = None,
    method: str = "ucell",
    n_null: int = 100,
    n_bins: int = 25,
    seed: int = 0,
    max_rank: int | None = None,
    ctrl_size: int = 50,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Calibration:
    """Score every set per cell and calibrate it against expression-matched random gene sets.

    Parameters
    ----------
    data
        Log-normalised expression, cells x genes: an AnnData (``X``), sparse or dense matrix.
    gene_sets
        Set name -> gene symbols; each needs at least one gene in the dataset.
    var_names
        Gene names of the columns; default ``data.var_names`` for an AnnData.
    method
        ``ucell`` or ``aucell`` (the scores of :func:`osteoimmune.ranks.rank_scores`), or
        ``mean`` (the scores of :func:`mean_scores`, i.e. of scanpy's score_genes).
    n_null
        Random sets per set (the project asks for at least 100).
    n_bins
        Expression bins (see :func:`expression_bins`).
    seed
        Seed of the random sets (each set's depend only on it and the set's name and genes)
        and of the ``mean`` method's control genes.
    max_rank
        Rank cutoff for the rank methods (see :func:`osteoimmune.ranks.resolve_max_rank`).
    ctrl_size
        Control genes per bin for ``mean`` (as in score_genes).
    chunk_size
        Cells per chunk (bounds the extra memory).

    Returns
    -------
    Calibration
        ``score``, ``z`` and ``p``, each cells x sets (see :func:`z_and_p`), from one pass
        over the matrix.
    """
    _check_calibration_args(method, n_null)
    matrix, names = as_csr(data, var_names=var_names)
    present = present_indices(gene_sets, var_names=names)
    bins = expression_bins(gene_means(matrix, chunk_size=chunk_size), n_bins=n_bins)
    nulls = {
        name: null_gene_sets(index, bins, n_null=n_null, rng=set_rng(seed, name))
        for name, index in present.items()
    }
    controls = []
    if method == "mean":
        controls = [
            control_genes(i, bins, ctrl_size=ctrl_size, seed=seed) for i in present.values()
        ]
    scorer = _chunk_scorer(
        gene_sets,
        present,
        nulls,
        controls,
        method=method,
        max_rank=max_rank,
        n_genes=len(names),
        n_null=n_null,
    )
    parts = map_row_chunks(matrix, scorer, chunk_size=chunk_size)
    index, columns = obs_names_of(data), list(gene_sets)
    return Calibration(*(pd.DataFrame(part, index=index, columns=columns) for part in parts))
