import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

from osteoimmune.calibration import (
    Calibration,
    calibrate,
    expression_bins,
    gene_means,
    mean_scores,
    null_gene_sets,
    set_rng,
    z_and_p,
)
from osteoimmune.errors import SignatureError
from osteoimmune.ranks import rank_scores

N_CELLS, N_GENES, N_UP, N_SET = 1000, 800, 30, 20
GENES = [f"g{i}" for i in range(N_GENES)]
UP = GENES[:N_SET]


def _make_adata(*, seed: int = 0) -> ad.AnnData:
    """Poisson counts; the first N_SET genes are raised in the first N_UP cells only."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(0.6, 1.5, N_GENES)
    counts = rng.poisson(lam, size=(N_CELLS, N_GENES)).astype(np.float32)
    counts[:N_UP, :N_SET] += rng.poisson(4.0, size=(N_UP, N_SET))
    adata = ad.AnnData(
        X=sparse.csr_matrix(counts),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(N_CELLS)]),
        var=pd.DataFrame(index=GENES),
    )
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    return _make_adata()


def _random_sets(n_sets: int, *, size: int = 15, seed: int = 5) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    return {
        f"random{j}": [GENES[i] for i in rng.choice(np.arange(N_SET, N_GENES), size, replace=False)]
        for j in range(n_sets)
    }


def test_null_sets_are_matched_in_bins_and_deterministic(adata):
    bins = expression_bins(gene_means(adata.X), n_bins=25)
    set_index = np.arange(N_SET)
    null = null_gene_sets(set_index, bins, n_null=150, rng=set_rng(3, "up"))
    assert null.shape == (150, N_SET)
    assert not np.isin(null, set_index).any()
    assert all(len(set(row)) == N_SET for row in null)  # no repeats within a random set
    # Same multiset of bins as the set, in every random set.
    expected = np.sort(bins[set_index])
    assert all(np.array_equal(np.sort(bins[row]), expected) for row in null)
    again = null_gene_sets(set_index, bins, n_null=150, rng=set_rng(3, "up"))
    np.testing.assert_array_equal(null, again)
    other = null_gene_sets(set_index, bins, n_null=150, rng=set_rng(4, "up"))
    assert not np.array_equal(null, other)


def test_small_bins_are_widened():
    bins = np.array([0, 0, 0, 1, 1, 1, 2])  # bin 2 holds only the set's own gene
    null = null_gene_sets(np.array([6]), bins, n_null=20, rng=set_rng(0, "x"))
    assert set(null.ravel()) <= {3, 4, 5}  # drawn from the neighbouring bin


@pytest.mark.parametrize("method", ["ucell", "mean"])
def test_set_up_in_a_group_is_called_there_only(adata, method):
    result = calibrate(adata, {"up": UP}, method=method, n_null=100)
    assert isinstance(result, Calibration)
    z, p = result.z["up"].to_numpy(), result.p["up"].to_numpy()
    assert z[:N_UP].min() > 3
    assert (p[:N_UP] <= 0.02).all()
    rest = z[N_UP:]
    assert abs(rest.mean()) < 0.5
    assert 0.7 < rest.std() < 1.4
    assert np.quantile(result.p["up"][N_UP:], 0.1) > 0.02


def test_aucell_calibration_separates_the_group(adata):
    result = calibrate(adata, {"up": UP}, method="aucell", n_null=100)
    assert (result.z["up"][:N_UP] > 3).all()
    assert (result.p["up"][:N_UP] <= 0.02).all()
    assert np.median(result.p["up"][N_UP:]) > 0.3


@pytest.mark.parametrize("method", ["ucell", "mean"])
def test_random_sets_give_roughly_uniform_p(adata, method):
    sets = _random_sets(20)
    result = calibrate(adata.copy(), sets, method=method, n_null=100)
    p = result.p.to_numpy().ravel()
    z = result.z.to_numpy().ravel()
    assert 0.45 < p.mean() < 0.55
    assert 0.03 < (p <= 0.05).mean() < 0.08
    assert 0.07 < (p <= 0.1).mean() < 0.14
    assert 0.45 < (p <= 0.5).mean() < 0.55
    assert abs(z.mean()) < 0.1
    assert 0.85 < z.std() < 1.25


def test_scores_are_the_methods_scores(adata):
    sets = {"up": UP, **_random_sets(2)}
    for method in ("ucell", "aucell"):
        result = calibrate(adata, sets, method=method, n_null=10)
        expected = rank_scores(adata, sets, method=method)
        np.testing.assert_allclose(result.score, expected, atol=1e-12)
    result = calibrate(adata, sets, method="mean", n_null=10, seed=2)
    np.testing.assert_allclose(result.score, mean_scores(adata, sets, seed=2), atol=1e-12)


def test_calibration_is_deterministic_and_per_set(adata):
    sets = {"up": UP, **_random_sets(2)}
    first = calibrate(adata, sets, n_null=50, seed=1)
    again = calibrate(adata, sets, n_null=50, seed=1, chunk_size=101)
    for a, b in zip(first, again, strict=True):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    other_seed = calibrate(adata, sets, n_null=50, seed=2)
    assert not np.allclose(first.z, other_seed.z)
    # A set's null depends on the seed and its own name and genes, not on the other sets.
    alone = calibrate(adata, {"up": UP}, n_null=50, seed=1)
    pd.testing.assert_series_equal(alone.z["up"], first.z["up"], check_exact=True)


def test_z_and_p_hand_example():
    observed = np.array([[2.0, 0.0, 1.0]])
    null = np.array([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    z, p = z_and_p(observed, null)
    # Third set: a null without spread; the score as one more draw gives sd = 1 / sqrt(4).
    np.testing.assert_array_equal(z, [[0.0, 0.0, 2.0]])
    np.testing.assert_array_equal(p, [[3 / 4, 1.0, 1 / 4]])


def test_z_finite_against_degenerate_null():
    n_null = 99
    observed = np.array([[0.5, -0.5, 0.0, 0.3]])
    null = np.zeros((1, 4, n_null))
    null[0, 3] = 0.3 + 1e-17 * np.arange(n_null)  # spread of float rounding only
    z, _ = z_and_p(observed, null)
    assert np.isfinite(z).all()
    np.testing.assert_allclose(z, [[10.0, -10.0, 0.0, 0.0]])


def test_calibrate_one_expressed_gene_gives_finite_z():
    """A set with one expressed gene; the first 10 cells express none of its random genes."""
    rng = np.random.default_rng(3)
    counts = rng.poisson(rng.uniform(0.01, 0.2, 200), size=(300, 200)).astype(np.float32)
    counts[:10] = 0
    counts[:10, 0] = 2.0  # the set's gene, expressed as rarely as the others overall
    counts[10:, 0] = 0
    data = ad.AnnData(X=sparse.csr_matrix(counts), var=pd.DataFrame(index=GENES[:200]))
    sc.pp.normalize_total(data, target_sum=1e4)
    sc.pp.log1p(data)
    for method in ("mean", "ucell"):
        result = calibrate(data, {"one": [GENES[0]]}, method=method, n_null=100, n_bins=5)
        null_flat = (result.z["one"].abs() == np.sqrt(101)).sum()
        assert np.isfinite(result.z.to_numpy()).all(), method
        assert null_flat > 0, method  # the degenerate case was really exercised


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "rank"}, "Unknown calibration method"),
        ({"n_null": 1}, "at least 2"),
        ({"seed": -1}, "non-negative"),
    ],
)
def test_bad_arguments(adata, kwargs, message):
    with pytest.raises(SignatureError, match=message):
        calibrate(adata, {"up": UP}, **kwargs)


def test_set_without_present_genes_is_an_error(adata):
    with pytest.raises(SignatureError, match="No gene of set 'ghost'"):
        calibrate(adata, {"up": UP, "ghost": ["absent1", "absent2"]})
    with pytest.raises(SignatureError, match="No gene of set 'ghost'"):
        mean_scores(adata, {"ghost": ["absent1"]})
