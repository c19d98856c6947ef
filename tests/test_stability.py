"""Leiden over a resolution grid, resampling stability, choice of resolution; determinism."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score
from test_cluster import make_adata, prepare

from osteoimmune.cluster import embed, markers, normalize, select_hvg, umap
from osteoimmune.stability import (
    STABILITY_COLUMNS,
    choose_resolution,
    cluster_over_resolutions,
    leiden_grid,
    resolution_key,
    small_dataset_caveat,
    stability_table,
    subsample_runs,
)
from osteoimmune.workers import worker_pool

RESOLUTIONS = [0.2, 0.4, 0.6, 0.8, 1.0, 1.5]


def cluster_step(adata, *, seed=0, repeats=5):
    """The cluster rule's sequence, as in workflow/scripts/cluster_cells.py."""
    prepare(adata, seed=seed)
    table = cluster_over_resolutions(adata, resolutions=RESOLUTIONS, repeats=repeats, seed=seed)
    return table, markers(adata, n_genes=25)


def test_stability_table_and_chosen_resolution_recover_three_groups():
    adata = make_adata()
    table, _ = cluster_step(adata)
    assert list(table.columns) == STABILITY_COLUMNS and len(table) == len(RESOLUTIONS)
    assert table["resolution"].tolist() == RESOLUTIONS
    assert table["mean_ari"].between(-1, 1).all() and (table["sd_ari"] >= 0).all()
    assert table["chosen"].sum() == 1
    chosen = table[table["chosen"]].iloc[0]
    assert chosen["n_clusters"] == 3 and chosen["mean_ari"] > 0.9
    for res in RESOLUTIONS:
        assert (
            adata.obs[resolution_key(res)].nunique()
            == table.set_index("resolution").loc[res, "n_clusters"]
        )
    assert adata.obs["leiden"].tolist() == adata.obs[resolution_key(chosen["resolution"])].tolist()
    assert adjusted_rand_score(adata.obs["group"], adata.obs["leiden"]) > 0.9
    record = adata.uns["osteoimmune"]["clustering"]
    assert record["resolution"] == chosen["resolution"] and record["n_clusters"] == 3
    assert "mean ARI" in record["reason"]


def test_whole_cluster_step_is_deterministic():
    first, second = make_adata(), make_adata()
    table1, markers1 = cluster_step(first, seed=4)
    table2, markers2 = cluster_step(second, seed=4)
    assert first.obs["leiden"].tolist() == second.obs["leiden"].tolist()
    pd.testing.assert_frame_equal(table1, table2)
    pd.testing.assert_frame_equal(markers1, markers2)


def test_clustering_record_survives_h5ad(tmp_path):
    adata = make_adata()
    table, _ = cluster_step(adata, repeats=2)
    adata.write_h5ad(tmp_path / "clustered.h5ad")
    back = ad.read_h5ad(tmp_path / "clustered.h5ad")
    assert back.uns["osteoimmune"]["clustering"] == adata.uns["osteoimmune"]["clustering"]
    stored = pd.DataFrame(back.uns["osteoimmune"]["cluster_stability"])[STABILITY_COLUMNS]
    pd.testing.assert_frame_equal(stored, table, check_dtype=False)
    assert "rank_genes_groups" in back.uns


def table(rows):
    return pd.DataFrame(rows, columns=["resolution", "n_clusters", "mean_ari", "sd_ari"])


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # Near-tie within 0.02: the finer resolution.
        ([(0.2, 3, 0.95, 0.01), (0.4, 4, 0.94, 0.02), (0.6, 6, 0.80, 0.1)], 0.4),
        # Beyond the tolerance: the most stable.
        ([(0.2, 3, 0.95, 0.01), (0.4, 4, 0.90, 0.02), (0.6, 6, 0.94, 0.1)], 0.6),
        # A single cluster is trivially stable and not chosen.
        ([(0.2, 1, 1.0, 0.0), (0.4, 2, 0.70, 0.05), (0.6, 5, 0.60, 0.1)], 0.4),
        # Every resolution gives one cluster: the finest.
        ([(0.2, 1, 1.0, 0.0), (0.4, 1, 1.0, 0.0)], 0.4),
    ],
)
def test_choose_resolution_rule(rows, expected):
    resolution, reason = choose_resolution(table(rows), tolerance=0.02)
    assert resolution == expected
    assert reason


def test_resolution_columns_are_named_by_the_resolution():
    assert resolution_key(1) == "leiden_1.0" and resolution_key(0.4) == "leiden_0.4"
    assert np.isclose(float(resolution_key(1.5).removeprefix("leiden_")), 1.5)


def test_ten_cells_are_one_cluster_without_a_grid():
    # 10 cells (3 groups of 4 would give several Leiden clusters): fewer than two clusters of
    # min_cells_per_cluster cells, so no grid and a reason; the whole step still runs.
    adata = make_adata(n_per_group=4)[:10].copy()
    adata.uns["osteoimmune"] = {}
    prepare(adata)
    table = cluster_over_resolutions(
        adata, resolutions=RESOLUTIONS, repeats=3, seed=0, min_cells_per_cluster=10
    )
    assert table.empty and list(table.columns) == STABILITY_COLUMNS
    assert adata.obs["leiden"].unique().tolist() == ["0"]
    record = adata.uns["osteoimmune"]["clustering"]
    assert record["n_clusters"] == 1 and "10 cells" in record["reason"]
    assert not any(key.startswith("leiden_") for key in adata.obs)
    assert markers(adata, n_genes=5).empty


def test_grid_goes_only_as_far_as_the_cells_support():
    # 240 cells at 40 cells per cluster support 6 clusters: resolutions giving more are left
    # out of the grid and of the choice, and the record says which.
    adata = make_adata()
    prepare(adata)
    full = cluster_over_resolutions(
        adata.copy(), resolutions=[0.5, 8.0], repeats=2, seed=0, min_cells_per_cluster=1
    )
    assert full.set_index("resolution").loc[8.0, "n_clusters"] > 6  # the fine one over-splits
    table = cluster_over_resolutions(
        adata, resolutions=[0.5, 8.0], repeats=2, seed=0, min_cells_per_cluster=40
    )
    assert table["resolution"].tolist() == [0.5] and table["n_clusters"].max() <= 6
    record = adata.uns["osteoimmune"]["clustering"]
    assert "8 left out" in record["limited"] and "at most 6 clusters" in record["limited"]
    assert resolution_key(8.0) not in adata.obs


def test_small_dataset_caveat():
    assert small_dataset_caveat(5000, small_dataset_cells=200) == ""
    caveat = small_dataset_caveat(10, small_dataset_cells=200, limited="no grid")
    assert "Only 10 cells" in caveat and "exploratory" in caveat and "no grid" in caveat
    assert "Clustering: x." in small_dataset_caveat(500, small_dataset_cells=200, limited="x")


def test_worker_processes_give_the_same_clusters_stability_and_umap():
    """The cluster job's pool (UMAP and stability subsamples in workers) changes no result."""
    serial, pooled = make_adata(), make_adata()
    table, _ = cluster_step(serial)
    with worker_pool(2) as pool:
        assert pool is not None
        normalize(pooled, value_type="counts")
        select_hvg(pooled, n_top_genes=60, value_type="counts", batch_key="donor")
        embed(
            pooled,
            n_pcs=10,
            n_neighbors=10,
            batch_key="donor",
            seed=0,
            value_type="counts",
            layout=False,
        )
        finish = umap(pooled, rep=pooled.uns["neighbors"]["params"]["use_rep"], seed=0, pool=pool)
        assert "X_umap" not in pooled.obsm  # made in a worker, stored on request
        pooled_table = cluster_over_resolutions(
            pooled, resolutions=RESOLUTIONS, repeats=5, seed=0, pool=pool
        )
        finish()
    pd.testing.assert_frame_equal(table, pooled_table)
    np.testing.assert_array_equal(serial.obsm["X_umap"], pooled.obsm["X_umap"])
    assert serial.uns["umap"] == pooled.uns["umap"]
    for res in RESOLUTIONS:
        key = resolution_key(res)
        assert serial.obs[key].tolist() == pooled.obs[key].tolist()
    assert serial.obs["leiden"].tolist() == pooled.obs["leiden"].tolist()
    with worker_pool(1) as none:
        assert none is None


def test_subsamples_no_worker_has_started_are_clustered_here_with_the_same_result():
    """The cluster job does not wait on a busy worker: stability_table runs the subsamples
    still queued itself (from the last), and the table is the one made without a pool."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    serial, pooled = make_adata(), make_adata()
    table, _ = cluster_step(serial)
    prepare(pooled, seed=0)
    release = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(release.wait, 60)  # the only worker is busy: nothing else starts
        runs = subsample_runs(pooled, resolutions=RESOLUTIONS, repeats=5, seed=0, pool=pool)
        leiden_grid(pooled, resolutions=RESOLUTIONS, seed=0)
        pooled_table = stability_table(
            pooled, resolutions=RESOLUTIONS, repeats=5, seed=0, runs=runs
        )
        assert all(result.future.cancelled() for _, result in runs)  # all taken back
        release.set()
        busy.result()
    expected = table.drop(columns="chosen").reset_index(drop=True)
    pd.testing.assert_frame_equal(pooled_table, expected)
