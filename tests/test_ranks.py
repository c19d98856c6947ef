import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.stats import rankdata

from osteoimmune.errors import SignatureError
from osteoimmune.ranks import method_agreement, rank_deficits, rank_scores

N_CELLS, N_GENES = 120, 300
GENES = [f"g{i}" for i in range(N_GENES)]
SETS = {
    "first": GENES[:10],
    "with_missing": GENES[40:70] + ["absent1", "absent2"],
    "strided": GENES[::9],
    "one_gene": [GENES[5]],
}


def _log_counts(seed: int = 0) -> np.ndarray:
    """Log-normalised Poisson counts with many ties, an empty cell and a one-gene cell."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.uniform(0.05, 2.0, N_GENES), size=(N_CELLS, N_GENES))
    counts[3] = 0
    counts[4] = 0
    counts[4, 7] = 5
    counts = counts.astype(np.float32)
    size = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return np.log1p(counts / size * 1e4).astype(np.float32)


def _reference_ranks(row: np.ndarray, max_rank: int) -> np.ndarray:
    """Ranks highest first, ties averaged; zeros and ranks beyond max_rank -> max_rank + 1."""
    ranks = rankdata(-row, method="average")
    ranks[(row == 0) | (ranks > max_rank)] = max_rank + 1
    return ranks


def _reference_ucell(x: np.ndarray, sets: dict, max_rank: int) -> np.ndarray:
    """UCell's u_stat, cell by cell; absent genes count as zeros (rank max_rank + 1)."""
    out = np.zeros((len(x), len(sets)))
    for i, row in enumerate(x):
        ranks = _reference_ranks(row, max_rank)
        for j, genes in enumerate(sets.values()):
            values = [ranks[GENES.index(g)] if g in GENES else max_rank + 1 for g in genes]
            values = np.asarray(values, dtype=float)
            if np.all(values > max_rank):
                continue
            n = len(values)
            out[i, j] = 1 - (values.sum() - n * (n + 1) / 2) / (n * max_rank)
    return out


def _reference_aucell(x: np.ndarray, sets: dict, max_rank: int) -> np.ndarray:
    """AUCell's recovery-curve area up to max_rank over the present genes (ties averaged)."""
    out = np.zeros((len(x), len(sets)))
    for i, row in enumerate(x):
        ranks = _reference_ranks(row, max_rank)
        for j, genes in enumerate(sets.values()):
            present = [GENES.index(g) for g in genes if g in GENES]
            area = np.maximum(max_rank - ranks[present], 0).sum()
            out[i, j] = area / (max_rank * len(present))
    return out


def test_aucell_default_cutoff_is_five_percent_of_genes():
    x = _log_counts(seed=4)
    got = rank_scores(x, {"first": GENES[:10]}, var_names=GENES, method="aucell")
    expected = _reference_aucell(x, {"first": GENES[:10]}, int(np.ceil(0.05 * N_GENES)))
    np.testing.assert_allclose(got.to_numpy(), expected, atol=1e-12)


def test_ucell_caps_max_rank_at_number_of_genes():
    x = _log_counts(seed=5)
    got = rank_scores(x, SETS, var_names=GENES)  # default 1500 > 300 genes
    np.testing.assert_allclose(got.to_numpy(), _reference_ucell(x, SETS, N_GENES), atol=1e-12)


def test_empty_cell_scores_zero_and_scores_in_unit_interval():
    got = rank_scores(_log_counts(), SETS, var_names=GENES, max_rank=60)
    assert (got.iloc[3] == 0).all()
    assert ((got.to_numpy() >= 0) & (got.to_numpy() <= 1)).all()


def test_rank_deficits_hand_example():
    # Row 0 ranks: 3 -> 1.5, 1.5; 2 -> 3; 1 -> 4; deficits max(0, 4 - rank) with max_rank 3.
    x = sparse.csr_matrix(np.array([[0, 3, 1, 3, 2], [0, 0, 0, 0, 0], [7, 0, 0, 0, 0]], float))
    deficits = rank_deficits(x, max_rank=3).toarray()
    expected = np.array([[0, 2.5, 0, 2.5, 1], [0, 0, 0, 0, 0], [3, 0, 0, 0, 0]])
    np.testing.assert_array_equal(deficits, expected)


def test_explicit_zeros_are_not_ranked():
    x = _log_counts(seed=6)
    stored = sparse.csr_matrix(x)
    stored.data[::5] = 0.0  # explicit zeros stay stored
    dense = stored.toarray()
    got = rank_scores(stored, SETS, var_names=GENES, max_rank=150)
    np.testing.assert_allclose(got.to_numpy(), _reference_ucell(dense, SETS, 150), atol=1e-12)


def test_same_result_for_any_chunking_and_input_type():
    x = _log_counts(seed=7)
    adata = ad.AnnData(
        X=sparse.csr_matrix(x),
        obs=pd.DataFrame(index=[f"cell{i}" for i in range(N_CELLS)]),
        var=pd.DataFrame(index=GENES),
    )
    base = rank_scores(adata, SETS, max_rank=100)
    assert list(base.index) == list(adata.obs_names)
    for kwargs in ({"chunk_size": 7}, {"chunk_size": 50}, {"chunk_size": 1}):
        other = rank_scores(adata, SETS, max_rank=100, **kwargs)
        pd.testing.assert_frame_equal(base, other, check_exact=True)
    from_dense = rank_scores(x, SETS, var_names=GENES, max_rank=100)
    np.testing.assert_array_equal(base.to_numpy(), from_dense.to_numpy())


def test_input_matrix_is_not_modified():
    matrix = sparse.csr_matrix(_log_counts(seed=8))
    before = matrix.copy()
    rank_scores(matrix, SETS, var_names=GENES, max_rank=100)
    assert (matrix != before).nnz == 0
    np.testing.assert_array_equal(matrix.indices, before.indices)


def test_float64_and_unsorted_csr_input():
    x = _log_counts(seed=9).astype(np.float64)
    matrix = sparse.csr_matrix(x)
    # Reverse the column order inside every row: still a valid CSR, just not canonical.
    for i in range(matrix.shape[0]):
        lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
        matrix.indices[lo:hi] = matrix.indices[lo:hi][::-1].copy()
        matrix.data[lo:hi] = matrix.data[lo:hi][::-1].copy()
    matrix.has_sorted_indices = False
    got = rank_scores(matrix, SETS, var_names=GENES, max_rank=90)
    np.testing.assert_allclose(got.to_numpy(), _reference_ucell(x, SETS, 90), atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_rank": 20}, "more genes than max_rank"),
        ({"method": "singscore"}, "Unknown rank method"),
        ({"max_rank": 0}, "at least 1"),
        ({"chunk_size": 0}, "positive number of cells"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(SignatureError, match=message):
        rank_scores(_log_counts(), SETS, var_names=GENES, **kwargs)


def test_bad_input():
    x = _log_counts()
    with pytest.raises(SignatureError, match="negative"):
        rank_scores(x - 1, SETS, var_names=GENES)
    with pytest.raises(SignatureError, match="var_names is required"):
        rank_scores(x, SETS)
    with pytest.raises(SignatureError, match="columns but"):
        rank_scores(x, SETS, var_names=GENES[:-1])
    with pytest.raises(SignatureError, match="not unique"):
        rank_scores(x, SETS, var_names=["g0"] * N_GENES)
    with pytest.raises(SignatureError, match="is empty"):
        rank_scores(x, {"nothing": []}, var_names=GENES)


def test_method_agreement():
    rng = np.random.default_rng(0)
    a = pd.DataFrame(rng.normal(size=(50, 3)), columns=["s1", "s2", "flat"])
    b = pd.DataFrame(
        {"s1": np.exp(a["s1"]), "s2": -a["s2"], "flat": 1.0, "only_b": 0.0}, index=a.index
    )
    table = method_agreement(a, b.iloc[5:])
    assert list(table.index) == ["s1", "s2", "flat"]
    assert table.index.name == "set"
    assert table.loc["s1", "spearman"] == pytest.approx(1.0)
    assert table.loc["s2", "spearman"] == pytest.approx(-1.0)
    assert np.isnan(table.loc["flat", "spearman"])
    assert (table["n_cells"] == 45).all()
