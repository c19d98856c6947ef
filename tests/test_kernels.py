"""Kernels (osteoimmune.kernels) against the upstream functions they mirror, and the switches.

Each kernel has an equality test against its upstream function, and the domain function that
uses it a test that ``implementation=`` the upstream function gives the same result.
"""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import test_calibration as cal_data
import test_ranks as rank_data
from scipy import sparse, stats
from test_cluster import make_adata as make_clusters
from test_qc import make_populations, with_doublets

from osteoimmune.calibration import expression_bins, gene_means, mean_scores
from osteoimmune.cluster import leiden, markers, normalize, pca, select_hvg
from osteoimmune.errors import SignatureError
from osteoimmune.kernels import hvg, wilcoxon
from osteoimmune.kernels.hvg import seurat_hvg
from osteoimmune.kernels.ranks import rankdata_scores
from osteoimmune.kernels.scrublet import doublet_threshold, scrublet_sparse
from osteoimmune.kernels.sparse_ranks import sparse_ranks
from osteoimmune.qc import coarse_groups, detect_doublets
from osteoimmune.ranks import gene_set_indicator, rank_scores


@pytest.fixture(scope="module")
def scored() -> ad.AnnData:
    return cal_data._make_adata()


# --- sparse_ranks: the one ranking routine ----------------------------------------------------


def test_sparse_ranks_equal_scipy_rankdata_exactly():
    """Ranks of stored values and of the zeros, per column, are rankdata's average ranks."""
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.8, size=(60, 25)).astype(np.float32)  # many ties and zeros
    dense[rng.random(dense.shape) < 0.1] *= -1  # negatives rank below the zeros
    dense[:, 3] = 0  # an empty column
    dense[:, 4] = 2.0  # a full, tied column
    x = sparse.csc_matrix(dense)
    ranks, zero_rank = sparse_ranks(x.data, x.indptr, x.shape[0])
    expected = np.column_stack([stats.rankdata(column) for column in dense.T])
    got = np.tile(zero_rank, (x.shape[0], 1))
    got[x.indices, np.repeat(np.arange(x.shape[1]), np.diff(x.indptr))] = ranks
    np.testing.assert_array_equal(got, expected)


# --- scrublet ---------------------------------------------------------------------------------


def test_sparse_scrublet_equals_scanpys_scrublet():
    """The default doublet scores are scanpy's scrublet scores, computed without densifying."""
    adata, _ = with_doublets(make_populations([150, 150, 100]), n_doublets=30)
    counts = sp.csr_matrix(adata.X)
    counts[0] = 0  # a cell with < 3 genes: dropped by scrublet, NaN in both
    counts.eliminate_zeros()
    scores, sim_scores = scrublet_sparse(counts, seed=3, score_simulated=True)
    reference = ad.AnnData(X=counts.copy())
    sc.pp.scrublet(
        reference, threshold=0.25, random_state=3, use_approx_neighbors=False, verbose=False
    )
    expected = reference.obs["doublet_score"].to_numpy(dtype=float)
    assert np.isnan(scores[0]) and np.isnan(expected[0])
    # equal but where rounding in the PCA changes a neighbour (at most 1 cell per sample on
    # the mirror's real samples)
    differ = np.abs(scores[1:] - expected[1:]) > 1e-6
    assert differ.sum() <= 0.01 * len(differ) and np.abs(scores - expected)[1:].max() < 0.1
    assert np.array_equal(scores[1:] > 0.25, expected[1:] > 0.25)
    # the simulated doublets' scores likewise (BLAS rounding can differ with the memory
    # layout a test run leaves, and move one neighbour of one simulated doublet)
    sim_differ = np.abs(sim_scores - reference.uns["scrublet"]["doublet_scores_sim"]) > 1e-6
    assert sim_differ.sum() <= 0.01 * len(sim_differ)
    # the seed reaches the doublet simulation
    assert not np.allclose(scrublet_sparse(counts, seed=4)[1], sim_scores)
    # simulated doublets are scored only when asked (scrublet's automatic threshold)
    # (the observed cells' scores then come from chunked neighbour searches: the same but for
    # rounding, as above)
    unscored, none = scrublet_sparse(counts, seed=3, score_simulated=False)
    assert none is None and np.isnan(unscored[0])
    differ = np.abs(unscored[1:] - expected[1:]) > 1e-6
    assert differ.sum() <= 0.01 * len(differ)
    assert np.array_equal(unscored[1:] > 0.25, expected[1:] > 0.25)


def test_auto_doublet_threshold_lies_between_the_modes():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0.1, 0.03, 1000), rng.normal(0.6, 0.05, 400)]
    assert 0.2 < doublet_threshold(scores) < 0.5
    assert doublet_threshold(np.full(100, 0.1)) is None  # one mode: no threshold, no calls


def test_detect_doublets_switch_to_scanpy_gives_the_same_calls():
    adata, is_doublet = with_doublets(make_populations([150, 150, 100]), n_doublets=30)
    upstream = adata.copy()
    detect_doublets(adata, seed=0, threshold=0.25)
    detect_doublets(upstream, seed=0, threshold=0.25, implementation="scanpy")
    ours = adata.obs["doublet_score"].to_numpy()
    theirs = upstream.obs["doublet_score"].to_numpy()
    # equal but where rounding changes a neighbour, as in the kernel's own test
    assert (np.abs(ours - theirs) > 1e-6).sum() <= 0.01 * len(ours)
    assert np.array_equal(adata.obs["predicted_doublet"], upstream.obs["predicted_doublet"])
    called = upstream.obs["predicted_doublet"].to_numpy()
    assert called[is_doublet].mean() > called[~is_doublet].mean()
    with pytest.raises(ValueError, match="implementation"):
        detect_doublets(adata, seed=0, implementation="scrublet")


# --- highly variable genes --------------------------------------------------------------------


@pytest.mark.parametrize("n_top_genes", [None, 40])
def test_chunked_seurat_hvg_equals_scanpys(monkeypatch, n_top_genes):
    """Highly variable genes of log1p values without copying the matrix: scanpy's genes."""
    rng = np.random.default_rng(5)
    rates = rng.gamma(0.5, 2.0, size=(1, 300)) * rng.gamma(2.0, 1.0, size=(500, 1))
    counts = sp.csr_matrix(rng.poisson(rates).astype(np.float32))
    counts[:, :20] = rng.poisson(rates[:, :20] * 8 * (np.arange(500) % 2)[:, None])  # variable
    counts.eliminate_zeros()
    reference = ad.AnnData(X=counts.copy())
    sc.pp.normalize_total(reference)
    sc.pp.log1p(reference)
    sc.pp.highly_variable_genes(reference, n_top_genes=n_top_genes, flavor="seurat")
    expected = reference.var["highly_variable"].to_numpy()
    assert 10 < expected.sum() < 300
    normalised = ad.AnnData(X=counts.copy())
    sc.pp.normalize_total(normalised)
    monkeypatch.setattr(hvg, "HVG_CHUNK_CELLS", 64)  # several chunks
    logged = seurat_hvg(reference.X, logged=True, n_top_genes=n_top_genes)
    unlogged = seurat_hvg(normalised.X, logged=False, n_top_genes=n_top_genes)
    assert np.array_equal(logged, expected) and np.array_equal(unlogged, expected)
    assert expected[:20].mean() > 2 * expected[20:].mean()  # the planted variable genes


@pytest.mark.parametrize("logged", [True, False])
def test_seurat_hvg_switch_to_scanpy_gives_the_same_genes(logged):
    adata = make_populations([150, 150, 100], n_genes=300)
    sc.pp.normalize_total(adata)
    if logged:
        sc.pp.log1p(adata)
    for top in (None, 50):
        ours = seurat_hvg(adata.X, logged=logged, n_top_genes=top)
        theirs = seurat_hvg(adata.X, logged=logged, n_top_genes=top, implementation="scanpy")
        assert 10 < ours.sum() < 300 and np.array_equal(ours, theirs)


def test_coarse_groups_switch_to_scanpy_gives_the_same_groups():
    adata = make_populations([150, 150, 100], n_genes=300)
    ours = coarse_groups(adata, seed=0, n_top_genes=100)
    theirs = coarse_groups(adata, seed=0, n_top_genes=100, implementation="scanpy")
    assert len(set(ours)) >= 3 and np.array_equal(ours, theirs)


# --- Wilcoxon markers -------------------------------------------------------------------------


def test_wilcoxon_vs_rest_equals_scanpys_rank_genes_groups(monkeypatch):
    rng = np.random.default_rng(1)
    counts = rng.poisson(rng.gamma(0.3, 2, size=(1, 200)), size=(900, 200)).astype(np.float32)
    adata = ad.AnnData(X=sp.csr_matrix(counts))
    adata.var_names = [f"G{i}" for i in range(200)]
    normalize(adata, value_type="counts")
    adata.X[:4] = -adata.X[:4]  # negative values rank below the zeros
    adata.obs["leiden"] = pd.Categorical(rng.integers(0, 9, adata.n_obs).astype(str))
    groups = list(adata.obs["leiden"].cat.categories[:-1])  # the last one is only "rest"
    reference = adata.copy()
    sc.tl.rank_genes_groups(
        reference,
        "leiden",
        groups=groups,
        reference="rest",
        method="wilcoxon",
        n_genes=50,
        use_raw=False,
    )
    monkeypatch.setattr(wilcoxon, "RANK_CHUNK_NNZ", 5_000)  # several chunks of genes
    wilcoxon.wilcoxon_vs_rest(adata, groupby="leiden", groups=groups, n_genes=50)
    ours, theirs = adata.uns["rank_genes_groups"], reference.uns["rank_genes_groups"]
    assert ours["params"] == theirs["params"]
    for group in groups:
        assert list(ours["names"][group]) == list(theirs["names"][group])
        for field in ("scores", "pvals", "pvals_adj", "logfoldchanges"):
            np.testing.assert_allclose(ours[field][group], theirs[field][group], rtol=1e-5)


def test_markers_switch_to_scanpy_gives_the_same_table():
    adata = make_clusters()
    normalize(adata, value_type="counts")
    select_hvg(adata, n_top_genes=60, value_type="counts", batch_key="donor")
    pca(adata, n_pcs=10, normalization="log1p", value_type="counts", seed=0)
    sc.pp.neighbors(adata, n_neighbors=10, random_state=0)
    leiden(adata, resolution=0.5, seed=0)
    upstream = adata.copy()
    ours = markers(adata, n_genes=10)
    theirs = markers(upstream, n_genes=10, implementation="scanpy")
    assert len(ours) >= 30
    pd.testing.assert_frame_equal(
        ours[["cluster", "rank", "gene"]], theirs[["cluster", "rank", "gene"]]
    )
    numbers = ["score", "logfoldchange", "pval_adj"]
    np.testing.assert_allclose(ours[numbers], theirs[numbers], rtol=1e-5)


# --- score_genes ------------------------------------------------------------------------------


def test_mean_scores_equal_scanpy_score_genes(scored):
    sets = {
        "up": cal_data.UP,
        "partly_absent": [*cal_data.GENES[100:110], "absent"],
        **cal_data._random_sets(3),
    }
    # ctrl_size 10 < 33 genes per bin: the control genes are a random choice.
    for seed, ctrl_size in ((0, 10), (7, 10), (0, 50)):
        got = mean_scores(scored, sets, seed=seed, ctrl_size=ctrl_size, chunk_size=333)
        for name, genes in sets.items():
            work = scored.copy()
            sc.tl.score_genes(
                work,
                genes,
                ctrl_as_ref=False,
                ctrl_size=ctrl_size,
                random_state=seed,
                score_name="s",
            )
            # scanpy sums the float32 matrix in float32; the rest is the same computation.
            np.testing.assert_allclose(got[name], work.obs["s"], rtol=0, atol=1e-5)
    seed0 = mean_scores(scored, sets, seed=0, ctrl_size=10)
    assert not np.allclose(seed0, mean_scores(scored, sets, seed=7, ctrl_size=10), atol=1e-3)


def test_gene_means_and_bins_are_scanpys(scored):
    means = gene_means(scored.X, chunk_size=77)
    expected = np.asarray(scored.X.sum(axis=0, dtype=np.float64)).ravel() / scored.n_obs
    np.testing.assert_array_equal(means, expected)
    bins = expression_bins(means, n_bins=25)
    per_bin = round(cal_data.N_GENES / 24)
    np.testing.assert_array_equal(bins, pd.Series(means).rank(method="min") // per_bin)
    with pytest.raises(SignatureError, match="cannot fill"):
        expression_bins(means[:10], n_bins=25)


def test_mean_scores_switch_to_scanpy_gives_the_same_scores(scored):
    sets = {"up": cal_data.UP, **cal_data._random_sets(2)}
    ours = mean_scores(scored, sets, seed=3, ctrl_size=10)
    theirs = mean_scores(scored, sets, seed=3, ctrl_size=10, implementation="scanpy")
    assert list(theirs.columns) == list(sets) and theirs.index.equals(ours.index)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    with pytest.raises(SignatureError, match="No gene of set"):
        mean_scores(scored, {"ghost": ["absent1"]}, implementation="scanpy")


# --- UCell / AUCell ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_rank", [40, 75, 150, rank_data.N_GENES])
def test_ucell_matches_dense_reference(max_rank):
    x = rank_data._log_counts()
    got = rank_scores(
        sparse.csr_matrix(x), rank_data.SETS, var_names=rank_data.GENES, max_rank=max_rank
    )
    assert list(got.columns) == list(rank_data.SETS)
    np.testing.assert_allclose(
        got.to_numpy(), rank_data._reference_ucell(x, rank_data.SETS, max_rank), atol=1e-12
    )


@pytest.mark.parametrize("max_rank", [15, 40, 150])
def test_aucell_matches_dense_reference(max_rank):
    x = rank_data._log_counts(seed=3)
    got = rank_scores(
        x, rank_data.SETS, var_names=rank_data.GENES, method="aucell", max_rank=max_rank
    )
    np.testing.assert_allclose(
        got.to_numpy(), rank_data._reference_aucell(x, rank_data.SETS, max_rank), atol=1e-12
    )


@pytest.mark.parametrize("method", ["ucell", "aucell"])
def test_rank_scores_switch_to_rankdata_gives_the_same_scores(method):
    x = rank_data._log_counts(seed=7)
    kwargs = dict(var_names=rank_data.GENES, method=method, max_rank=60, chunk_size=50)
    ours = rank_scores(x, rank_data.SETS, **kwargs)
    theirs = rank_scores(x, rank_data.SETS, implementation="rankdata", **kwargs)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    with pytest.raises(SignatureError, match="implementation"):
        rank_scores(x, rank_data.SETS, implementation="R", **kwargs)


def test_rankdata_scores_are_the_definition():
    x = rank_data._log_counts(seed=8)
    indicator, n_genes = gene_set_indicator(rank_data.SETS, var_names=rank_data.GENES)
    n_present = np.diff(indicator.tocsc().indptr)
    got = rankdata_scores(
        sparse.csr_matrix(x),
        indicator,
        n_genes=n_genes,
        n_present=n_present,
        method="ucell",
        max_rank=75,
    )
    np.testing.assert_allclose(got, rank_data._reference_ucell(x, rank_data.SETS, 75), atol=1e-12)
