"""Normalisation, HVG, embedding (log1p or Pearson residuals), Leiden, markers; determinism."""

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from osteoimmune.cluster import embed, integrate, leiden, markers, normalize, pca, select_hvg


def make_adata(seed=0, n_per_group=80, n_genes=120):
    """Three groups of cells with distinct expressed gene blocks, two donors."""
    rng = np.random.default_rng(seed)
    blocks = []
    for g in range(3):
        rates = np.full(n_genes, 0.3)
        rates[g * 30 : (g + 1) * 30] = 6.0
        blocks.append(rng.poisson(rates, size=(n_per_group, n_genes)))
    X = sp.csr_matrix(np.vstack(blocks).astype(np.float32))
    adata = ad.AnnData(X=X, layers={"counts": X.copy()})
    adata.var_names = [f"G{i}" for i in range(n_genes)]
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    adata.obs["group"] = np.repeat(["a", "b", "c"], n_per_group)
    adata.obs["donor"] = pd.Categorical(np.tile(["d1", "d2"], adata.n_obs // 2))
    adata.uns["osteoimmune"] = {}
    return adata


def prepare(adata, *, seed=0, value_type="counts", normalization="log1p"):
    normalize(adata, value_type=value_type)
    select_hvg(adata, n_top_genes=60, value_type=value_type, batch_key="donor")
    return embed(
        adata,
        n_pcs=10,
        n_neighbors=10,
        batch_key="donor",
        seed=seed,
        value_type=value_type,
        normalization=normalization,
    )


def run(adata, *, seed=0, value_type="counts", normalization="log1p"):
    note = prepare(adata, seed=seed, value_type=value_type, normalization=normalization)
    leiden(adata, resolution=0.5, seed=seed)
    return note


def test_clusters_recover_the_groups_with_harmony_across_donors():
    from sklearn.metrics import adjusted_rand_score

    adata = make_adata()
    note = run(adata)
    assert "harmony" in note and "X_pca_harmony" in adata.obsm
    assert adjusted_rand_score(adata.obs["group"], adata.obs["leiden"]) > 0.9
    assert adata.var["highly_variable"].sum() == 60
    assert sp.issparse(adata.X) and sp.issparse(adata.layers["counts"])


def donor_gap(adata, rep):
    """Mean distance between the two donors' centroids within each group, in ``obsm[rep]``."""
    emb, obs = adata.obsm[rep], adata.obs
    gaps = []
    for group in "abc":
        cells = obs["group"].to_numpy() == group
        d1 = emb[cells & (obs["donor"].to_numpy() == "d1")].mean(0)
        d2 = emb[cells & (obs["donor"].to_numpy() == "d2")].mean(0)
        gaps.append(np.linalg.norm(d1 - d2))
    return float(np.mean(gaps))


def test_leiden_grid_from_one_graph_gives_scanpys_clusters_at_every_resolution_and_seed():
    """One igraph graph for a whole grid: the labels and uns of sc.tl.leiden at each
    resolution and seed, on the full graph and on a subsample's subgraph (stability)."""
    import scanpy as sc

    from osteoimmune.cluster import leiden_grid
    from osteoimmune.stability import _subsample_leiden

    adata = make_adata(n_per_group=150)
    prepare(adata)
    resolutions = [0.2, 0.5, 1.0, 2.0, 4.0]
    for seed in (0, 7):
        keys = [f"ours_{res}" for res in resolutions]
        leiden_grid(adata, resolutions=resolutions, seed=seed, keys=keys)
        found = set()
        for res, key in zip(resolutions, keys, strict=True):
            sc.tl.leiden(
                adata,
                resolution=res,
                random_state=seed,
                flavor="igraph",
                n_iterations=2,
                directed=False,
                key_added="scanpy",
            )
            pd.testing.assert_series_equal(adata.obs[key], adata.obs["scanpy"], check_names=False)
            assert adata.uns[key] == adata.uns["scanpy"]
            found.add(adata.obs[key].nunique())
        assert len(found) > 2  # the grid's resolutions do give different clusterings
        cells = np.sort(np.random.default_rng(seed).choice(adata.n_obs, 360, replace=False))
        graph = adata.obsp["connectivities"][cells][:, cells]
        sub = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(len(cells))]))
        sub.obsp["connectivities"] = graph
        sub.uns["neighbors"] = {"connectivities_key": "connectivities", "params": {}}
        labels = _subsample_leiden(graph, tuple(resolutions), seed + 1)
        for res in resolutions:
            sc.tl.leiden(
                sub,
                resolution=res,
                random_state=seed + 1,
                flavor="igraph",
                n_iterations=2,
                directed=False,
            )
            np.testing.assert_array_equal(labels[res], sub.obs["leiden"].to_numpy())


def test_harmony_options_reach_harmony_and_loose_tolerances_correct_like_tight_ones():
    adata = make_adata()
    shifted = (adata.obs["donor"] == "d2").to_numpy()
    counts = adata.layers["counts"].toarray()
    counts[shifted, 90:110] += 4  # a donor effect on genes no group marks
    adata.X = sp.csr_matrix(counts)
    adata.layers["counts"] = adata.X.copy()
    normalize(adata, value_type="counts")
    select_hvg(adata, n_top_genes=110, value_type="counts", batch_key="donor")
    pca(adata, n_pcs=10, normalization="log1p", value_type="counts", seed=0)
    loose = adata.copy()
    rep, note = integrate(loose, batch_key="donor", seed=0)
    assert rep == "X_pca_harmony" and "harmony across 2" in note
    tight = adata.copy()
    integrate(
        tight,
        batch_key="donor",
        seed=0,
        harmony={"epsilon_cluster": 1e-5, "epsilon_harmony": 1e-4, "nclust": None},
    )
    one_round = adata.copy()
    integrate(one_round, batch_key="donor", seed=0, harmony={"max_iter_harmony": 1})
    before = donor_gap(adata, "X_pca")
    assert donor_gap(loose, rep) < 0.5 * before
    assert abs(donor_gap(loose, rep) - donor_gap(tight, rep)) < 0.1 * before
    # the options are applied: one round of harmony corrects less than several
    assert not np.allclose(one_round.obsm[rep], loose.obsm[rep])


def test_normalize_counts_vs_non_counts():
    adata = make_adata()
    normalize(adata, value_type="counts")
    totals = np.expm1(adata.X.toarray()).sum(1)
    np.testing.assert_allclose(totals, 1e4, rtol=1e-3)
    tpm = make_adata()
    raw = tpm.X.toarray()
    normalize(tpm, value_type="tpm")
    np.testing.assert_allclose(tpm.X.toarray(), np.log1p(raw), rtol=1e-6)


def test_same_input_and_seed_give_identical_clusters_and_embedding():
    first, second = make_adata(), make_adata()
    run(first, seed=3)
    run(second, seed=3)
    assert first.obs["leiden"].tolist() == second.obs["leiden"].tolist()
    np.testing.assert_array_equal(first.obsm["X_umap"], second.obsm["X_umap"])


def test_one_donor_skips_integration_and_small_panel_keeps_all_genes():
    adata = make_adata(n_genes=50)
    adata.obs["donor"] = "d1"
    note = run(adata)
    assert "no batch integration" in note and "X_pca_harmony" not in adata.obsm
    assert adata.var["highly_variable"].all()


def test_pearson_residuals_on_counts_feed_pca_and_keep_x_log_normalised():
    from sklearn.metrics import adjusted_rand_score

    residuals, logged = make_adata(), make_adata()
    run(residuals, normalization="pearson_residuals")
    run(logged)
    assert residuals.uns["osteoimmune"]["pca_input"].startswith("analytic Pearson residuals")
    assert not np.allclose(residuals.obsm["X_pca"], logged.obsm["X_pca"])
    assert residuals.varm["PCs"].shape == (residuals.n_vars, residuals.obsm["X_pca"].shape[1])
    # X stays sparse and log-normalised for every gene: markers and scoring read it.
    assert sp.issparse(residuals.X)
    np.testing.assert_allclose(residuals.X.toarray(), logged.X.toarray())
    assert adjusted_rand_score(residuals.obs["group"], residuals.obs["leiden"]) > 0.9


def test_pearson_residuals_fall_back_to_log1p_on_non_counts():
    fallback, plain = make_adata(), make_adata()
    prepare(fallback, value_type="tpm", normalization="pearson_residuals")
    prepare(plain, value_type="tpm")
    note = fallback.uns["osteoimmune"]["pca_input"]
    assert note.startswith("log-normalised X") and "fell back" in note and "tpm" in note
    np.testing.assert_array_equal(fallback.obsm["X_pca"], plain.obsm["X_pca"])


def test_markers_rank_the_planted_genes_first_for_their_group():
    adata = make_adata()
    run(adata)
    table = markers(adata, n_genes=25)
    assert list(table.columns) == ["cluster", "rank", "gene", "score", "logfoldchange", "pval_adj"]
    assert len(table) == 25 * adata.obs["leiden"].nunique()
    for cluster, rows in table.groupby("cluster"):
        assert rows["rank"].tolist() == list(range(1, 26))
        cells = adata.obs["leiden"] == cluster
        group = "abc".index(adata.obs.loc[cells, "group"].mode()[0])
        planted = {f"G{i}" for i in range(group * 30, (group + 1) * 30)}
        top = rows.sort_values("rank")["gene"].head(20)
        assert set(top) <= planted, (cluster, sorted(set(top) - planted))
        assert (rows["logfoldchange"].head(20) > 1).all()
        assert (rows["pval_adj"].head(20) < 1e-6).all()


def test_markers_leave_out_a_single_cell_cluster_without_failing():
    adata = make_adata()
    normalize(adata, value_type="counts")
    labels = adata.obs["group"].astype(str).to_numpy().copy()
    labels[0] = "lonely"
    adata.obs["leiden"] = pd.Categorical(labels)
    table = markers(adata, n_genes=5)
    assert set(table["cluster"]) == {"a", "b", "c"}
    assert len(table) == 15
    one_cluster = make_adata()
    normalize(one_cluster, value_type="counts")
    one_cluster.obs["leiden"] = pd.Categorical(["0"] * one_cluster.n_obs)
    assert markers(one_cluster, n_genes=5).empty


UMAP_RUN = """
import sys
import numpy as np
import anndata as ad
from osteoimmune.cluster import neighbors, umap
from osteoimmune.jit import cache_umap_functions
rng = np.random.default_rng(0)
adata = ad.AnnData(X=np.zeros((300, 2), dtype=np.float32))
adata.obsm["X_pca"] = rng.normal(size=(300, 10)) + np.repeat(np.eye(10)[:3] * 6, 100, axis=0)
print(",".join(cache_umap_functions()), file=sys.stderr)
neighbors(adata, rep="X_pca", n_neighbors=15, seed=0, knn="exact")
umap(adata, rep="X_pca", seed=0)
np.save(sys.argv[1], adata.obsm["X_umap"])
import numba
import pynndescent.distances as distances
stats = distances.squared_euclidean.stats  # compiled for its signatures on import
print(f"pynndescent hits={sum(stats.cache_hits.values())} misses={sum(stats.cache_misses.values())}"
      f" njit_restored={numba.njit is numba.core.decorators.njit}", file=sys.stderr)
"""


def test_umap_functions_are_compiled_once_and_give_the_same_embedding(tmp_path):
    """umap-learn's numba functions are cached on disk; loaded, they embed identically."""
    import os
    import subprocess
    import sys

    env = os.environ | {"NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    runs, pynndescent = [], []
    for i in range(2):  # the first compiles and stores, the second loads
        out = tmp_path / f"umap{i}.npy"
        done = subprocess.run(
            [sys.executable, "-c", UMAP_RUN, str(out)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        runs.append(np.load(out))
        pynndescent.append(done.stderr.splitlines()[-1])
    cached = {name for line in done.stderr.splitlines() for name in line.split(",")}
    assert {"umap.umap_.smooth_knn_dist", "umap.layouts.clip"} <= cached
    stored = " ".join(p.name for p in (tmp_path / "numba").rglob("*.nbi"))
    assert "smooth_knn_dist" in stored and "optimize_layout_euclidean_single_epoch" in stored
    # pynndescent's import-time compilations: stored by the first run, loaded by the second
    assert "squared_euclidean" in stored
    assert pynndescent == [
        "pynndescent hits=0 misses=2 njit_restored=True",
        "pynndescent hits=2 misses=0 njit_restored=True",
    ]
    np.testing.assert_array_equal(runs[0], runs[1])


def test_numba_cache_falls_back_to_compiling_where_it_cannot_be_written():
    """caching(): cache=True added, the caller's choice kept, uncached when numba refuses."""
    from osteoimmune.jit import caching

    calls = []

    def njit(*args, **kwargs):  # numba.njit's two forms, refusing any cache like numba
        calls.append(kwargs.get("cache"))
        if kwargs.get("cache"):
            if args and callable(args[0]):
                raise RuntimeError("cannot cache function: no locator available")
            return lambda function: (_ for _ in ()).throw(RuntimeError("no locator"))
        return args[0] if args and callable(args[0]) else (lambda function: function)

    def kernel():
        return 1

    assert caching(njit)(kernel) is kernel and calls == [True, None]
    calls.clear()
    assert caching(njit)("f4(f4)", fastmath=True)(kernel) is kernel and calls == [True, None]
    calls.clear()
    assert caching(njit)(cache=False)(kernel) is kernel and calls == [False]


def test_normalising_leaves_counts_read_back_as_the_same_object_raw(tmp_path):
    """Intermediate files hold the counts once; read back, normalising X must not touch them."""
    from osteoimmune.samples import read_counts_once, write_counts_once

    adata = make_adata()
    raw = adata.X.copy()
    write_counts_once(adata, tmp_path / "qc.h5ad")
    back = read_counts_once(tmp_path / "qc.h5ad")
    assert back.layers["counts"] is back.X
    normalize(back, value_type="counts")
    assert (back.layers["counts"] != raw).nnz == 0
    assert abs(back.X.max() - raw.max()) > 1  # X was transformed


def test_markers_cap_large_clusters_and_still_rank_their_genes_first():
    """max_cells_per_group tests a large cluster on a seeded subsample of its cells."""
    from scipy import stats

    adata = make_adata(n_per_group=300)
    normalize(adata, value_type="counts")
    adata.obs["leiden"] = pd.Categorical(adata.obs["group"])
    full = markers(adata, n_genes=adata.n_vars)
    capped = markers(adata, n_genes=adata.n_vars, max_cells_per_group=100, seed=1)
    params = adata.uns["rank_genes_groups"]["params"]
    assert params["max_cells_per_group"] == 100 and params["seed"] == 1
    for cluster in "abc":
        mine_full = full[full["cluster"] == cluster].set_index("gene")["score"]
        mine = capped[capped["cluster"] == cluster].set_index("gene")["score"]
        group = "abc".index(cluster)
        planted = {f"G{i}" for i in range(group * 30, (group + 1) * 30)}
        assert set(mine.index[:30]) == planted
        # the statistic of 100 + 200 cells instead of 300 + 600: about sqrt(3) smaller
        ratio = mine_full[mine.index[:30]] / mine[:30]
        assert 1.4 < ratio.median() < 2.1
        rho = stats.spearmanr(mine_full, mine.loc[mine_full.index]).statistic
        assert rho > 0.9
    # seeded: the same table again; another seed draws other cells
    again = markers(adata, n_genes=adata.n_vars, max_cells_per_group=100, seed=1)
    pd.testing.assert_frame_equal(capped, again)
    other = markers(adata, n_genes=adata.n_vars, max_cells_per_group=100, seed=2)
    assert not np.allclose(other["score"], capped["score"])


def test_markers_cap_changes_nothing_when_every_cluster_is_smaller():
    adata = make_adata()
    normalize(adata, value_type="counts")
    adata.obs["leiden"] = pd.Categorical(adata.obs["group"])
    full = markers(adata, n_genes=20)
    record = dict(adata.uns["rank_genes_groups"]["params"])
    capped = markers(adata, n_genes=20, max_cells_per_group=80, seed=5)
    pd.testing.assert_frame_equal(full, capped)
    assert adata.uns["rank_genes_groups"]["params"] == record  # no cap recorded


def test_markers_cap_keeps_small_clusters_whole_and_leaves_x_alone():
    adata = make_adata()
    normalize(adata, value_type="counts")
    labels = np.repeat(["a", "b", "c"], 80).astype(object)
    labels[:10] = "tiny"
    adata.obs["leiden"] = pd.Categorical(labels)
    before = adata.X.copy()
    table = markers(adata, n_genes=5, max_cells_per_group=20, seed=0, implementation="scanpy")
    assert set(table["cluster"]) == {"a", "b", "c", "tiny"}
    assert (adata.X != before).nnz == 0 and adata.n_obs == 240
    # "tiny" (10 cells) is tested whole against 3 x 20 capped cells: its planted block
    # (genes of "a") still leads
    tiny = table[table["cluster"] == "tiny"]["gene"]
    assert set(tiny) <= {f"G{i}" for i in range(30)}


def test_capped_cells_draws_at_most_the_cap_per_group_and_keeps_small_groups_whole():
    from osteoimmune.samples import capped_cells

    labels = np.array(["big"] * 50 + ["small"] * 5 + ["out"] * 30)
    within = np.ones(len(labels), dtype=bool)
    within[:10] = False  # ten "big" cells are not eligible
    rows = capped_cells(labels, ["big", "small"], max_cells=20, seed=0, within=within)
    assert np.all(np.diff(rows) > 0)
    picked = pd.Series(labels[rows]).value_counts()
    assert picked.to_dict() == {"big": 20, "small": 5}
    assert rows.min() >= 10  # only eligible cells
    np.testing.assert_array_equal(
        rows, capped_cells(labels, ["big", "small"], max_cells=20, seed=0, within=within)
    )
    every = capped_cells(labels, ["big", "small"], max_cells=None, seed=0)
    np.testing.assert_array_equal(every, np.arange(55))
