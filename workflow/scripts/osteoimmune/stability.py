"""Leiden over a grid of resolutions, resampling stability of each, and the choice among them.

Stability of a resolution: cluster a seeded subsample of the cells again (Leiden on the
subgraph of the full kNN graph induced by the subsample's cells) and compare with
the full-data clusters of the same cells by the adjusted Rand index (ARI).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Executor, Future

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from osteoimmune import cluster

log = logging.getLogger(__name__)

STABILITY_COLUMNS = ["resolution", "n_clusters", "mean_ari", "sd_ari", "chosen"]


def resolution_key(resolution: float) -> str:
    """The obs column holding the Leiden clusters at ``resolution``, e.g. ``leiden_0.4``."""
    return f"leiden_{float(resolution)}"


def leiden_grid(adata: ad.AnnData, *, resolutions: Sequence[float], seed: int) -> None:
    """Leiden at every resolution into ``obs['leiden_<resolution>']``."""
    keys = [resolution_key(resolution) for resolution in resolutions]
    cluster.leiden_grid(adata, resolutions=resolutions, seed=seed, keys=keys)
    for resolution, key in zip(resolutions, keys, strict=True):
        log.info("Leiden at resolution %s: %d clusters", resolution, adata.obs[key].nunique())


def _subsample_leiden(graph, resolutions: tuple[float, ...], seed: int) -> dict[float, np.ndarray]:
    """Leiden at each resolution on one subsample's graph (run here or in a worker process)."""
    memberships = cluster.leiden_memberships(graph, resolutions=resolutions, seed=seed)
    return {res: np.asarray(cluster.leiden_labels(m)) for res, m in memberships.items()}


def subsample_runs(
    adata: ad.AnnData,
    *,
    resolutions: Sequence[float],
    repeats: int,
    seed: int,
    fraction: float = 0.8,
    pool: Executor | None = None,
) -> list[tuple[np.ndarray, dict | _Pending]]:
    """The subsamples of :func:`stability_table` and their Leiden clusters at each resolution.

    Subsample ``r`` (cells drawn without replacement, seeded by ``seed``) keeps its cells'
    edges of the full kNN graph (no new search) and is clustered with ``seed + r``. With a
    ``pool`` (process workers), the clusterings run there and a :class:`_Pending` stands for
    each (:func:`stability_table` runs those no worker has started yet itself); the results
    are the same either way.
    """
    graph = adata.obsp[adata.uns["neighbors"]["connectivities_key"]].tocsr()
    n_sub = max(int(round(fraction * adata.n_obs)), 3)
    rng = np.random.default_rng(seed)
    runs = []
    for r in range(repeats):
        cells = np.sort(rng.choice(adata.n_obs, size=n_sub, replace=False))
        args = (graph[cells][:, cells], tuple(float(res) for res in resolutions), seed + r)
        if pool is None:
            runs.append((cells, _subsample_leiden(*args)))
        else:
            runs.append((cells, _Pending(pool.submit(_subsample_leiden, *args), args)))
    return runs


class _Pending:
    """A subsample clustering handed to a worker, with what it needs to run it here instead."""

    def __init__(self, future: Future, args: tuple):
        self.future, self.args = future, args

    def take_back(self) -> dict | None:
        """Its clusters, made here if no worker has started it yet, else None."""
        return _subsample_leiden(*self.args) if self.future.cancel() else None


def _collect(runs: list) -> list[dict]:
    """The clusters of every subsample, in order.

    Those no worker has started are run here (from the last, as the workers take them from
    the first); then the workers' are waited for.
    """
    labels: list = [None if isinstance(result, _Pending) else result for _, result in runs]
    for r in reversed(range(len(runs))):
        if labels[r] is None:
            labels[r] = runs[r][1].take_back()
    for r, (_, result) in enumerate(runs):
        if labels[r] is None:
            labels[r] = result.future.result()
    return labels


def stability_table(
    adata: ad.AnnData,
    *,
    resolutions: Sequence[float],
    repeats: int,
    seed: int,
    fraction: float = 0.8,
    runs: list | None = None,
) -> pd.DataFrame:
    """Resampling stability of the Leiden clusters at each resolution.

    Parameters
    ----------
    adata
        After :func:`leiden_grid`, with the neighbour graph of :func:`osteoimmune.cluster.embed`.
    resolutions
        Resolutions clustered by :func:`leiden_grid`.
    repeats
        Subsamples per resolution; the same subsamples serve every resolution.
    seed
        Seeds the subsamples (and Leiden on repeat ``r`` with ``seed + r``).
    fraction
        Fraction of cells in each subsample, drawn without replacement.
    runs
        The subsamples' clusterings from :func:`subsample_runs` (at least these resolutions),
        made beforehand, e.g. by worker processes while the grid ran (those the workers have
        not started yet are run here); None makes them here.

    Returns
    -------
    One row per resolution: resolution, n_clusters (full data), mean_ari, sd_ari (over repeats).
    """
    if runs is None:
        runs = subsample_runs(
            adata, resolutions=resolutions, repeats=repeats, seed=seed, fraction=fraction
        )
    ari = np.empty((len(resolutions), repeats))
    for r, ((cells, _), labels) in enumerate(zip(runs, _collect(runs), strict=True)):
        for i, resolution in enumerate(resolutions):
            full = adata.obs[resolution_key(resolution)].to_numpy()[cells]
            ari[i, r] = adjusted_rand_score(full, labels[float(resolution)])
    return pd.DataFrame(
        {
            "resolution": np.asarray(resolutions, dtype=float),
            "n_clusters": [adata.obs[resolution_key(res)].nunique() for res in resolutions],
            "mean_ari": ari.mean(axis=1),
            "sd_ari": ari.std(axis=1, ddof=1) if repeats > 1 else np.zeros(len(resolutions)),
        }
    )


def choose_resolution(table: pd.DataFrame, *, tolerance: float = 0.02) -> tuple[float, str]:
    """Pick the resolution from a :func:`stability_table`.

    Rule: among resolutions giving at least two clusters, those whose mean ARI is within
    ``tolerance`` of the highest; of these the finest (highest resolution), since near-equal
    stability is no reason to merge clusters. A single cluster is trivially stable (ARI 1),
    so it is chosen only when every resolution gives one.

    Returns
    -------
    The chosen resolution and a sentence saying why.
    """
    candidates = table[table["n_clusters"] >= 2]
    if candidates.empty:
        resolution = float(table["resolution"].max())
        return resolution, "every resolution gave a single cluster; kept the finest"
    best = candidates["mean_ari"].max()
    near = candidates[candidates["mean_ari"] >= best - tolerance - 1e-12]
    row = near.loc[near["resolution"].idxmax()]
    reason = (
        f"finest resolution with mean ARI within {tolerance:g} of the most stable "
        f"({best:.3f}) among resolutions giving >= 2 clusters: {int(row['n_clusters'])} clusters, "
        f"mean ARI {row['mean_ari']:.3f} (sd {row['sd_ari']:.3f})"
    )
    return float(row["resolution"]), reason


def supported_clusters(n_cells: int, *, min_cells_per_cluster: int) -> int:
    """How many clusters ``n_cells`` cells support (at least 1).

    As many as give clusters of ``min_cells_per_cluster`` cells on average.
    """
    return max(n_cells // min_cells_per_cluster, 1)


def cluster_over_resolutions(
    adata: ad.AnnData,
    *,
    resolutions: Sequence[float],
    repeats: int,
    seed: int,
    min_cells_per_cluster: int = 10,
    fraction: float = 0.8,
    tolerance: float = 0.02,
    pool: Executor | None = None,
) -> pd.DataFrame:
    """Leiden grid, stability, choice; ``obs['leiden']`` at the chosen resolution.

    The grid goes only as far as the cells support: a resolution giving more clusters than
    :func:`supported_clusters` is left out of the stability test and the choice (the coarsest
    resolution is kept when every one gives too many). With fewer than two clusters' worth of
    cells there is no grid: every cell is in cluster "0", and the reason says why.

    With a ``pool`` of worker processes, the subsamples are clustered there (at every
    resolution) while this process runs the grid: the same results, in less wall time.

    Records the choice in ``uns['osteoimmune']['clustering']`` (resolution, n_clusters,
    mean_ari, sd_ari, reason, limited, ...) and the table in
    ``uns['osteoimmune']['cluster_stability']`` (a dict of columns). Returns the stability
    table with a boolean ``chosen`` column.
    """
    resolutions = sorted({float(res) for res in resolutions})
    max_clusters = supported_clusters(adata.n_obs, min_cells_per_cluster=min_cells_per_cluster)
    settings = {
        "stability_repeats": int(repeats),
        "stability_fraction": float(fraction),
        "tolerance": float(tolerance),
        "min_cells_per_cluster": int(min_cells_per_cluster),
        "max_clusters": int(max_clusters),
    }
    if max_clusters < 2:
        return _one_cluster(adata, settings=settings, min_cells_per_cluster=min_cells_per_cluster)
    runs = None
    if pool is not None:
        runs = subsample_runs(
            adata,
            resolutions=resolutions,
            repeats=repeats,
            seed=seed,
            fraction=fraction,
            pool=pool,
        )
    leiden_grid(adata, resolutions=resolutions, seed=seed)
    counts = {res: adata.obs[resolution_key(res)].nunique() for res in resolutions}
    kept = [res for res in resolutions if counts[res] <= max_clusters] or [resolutions[0]]
    limited = ""
    if len(kept) < len(resolutions):
        left_out = [res for res in resolutions if res not in kept]
        limited = (
            f"{adata.n_obs} cells support at most {max_clusters} clusters of "
            f"{min_cells_per_cluster} cells (cluster.min_cells_per_cluster): resolution"
            f"{'s' if len(left_out) > 1 else ''} {', '.join(f'{r:g}' for r in left_out)} "
            "left out of the grid"
        )
        if counts[kept[0]] > max_clusters:
            limited += f"; kept the coarsest, {kept[0]:g}, with {counts[kept[0]]} clusters"
        log.info("%s.", limited)
        for res in left_out:
            del adata.obs[resolution_key(res)]
            adata.uns.pop(resolution_key(res), None)
    table = stability_table(
        adata, resolutions=kept, repeats=repeats, seed=seed, fraction=fraction, runs=runs
    )
    chosen, reason = choose_resolution(table, tolerance=tolerance)
    table["chosen"] = table["resolution"] == chosen
    key = resolution_key(chosen)
    adata.obs["leiden"] = adata.obs[key].copy()
    adata.uns["leiden"] = adata.uns[key]
    row = table[table["chosen"]].iloc[0]
    adata.uns.setdefault("osteoimmune", {})["clustering"] = {
        "resolution": chosen,
        "n_clusters": int(row["n_clusters"]),
        "mean_ari": float(row["mean_ari"]),
        "sd_ari": float(row["sd_ari"]),
        "reason": reason,
        "limited": limited,
        "column": key,
        "resolutions": ", ".join(f"{res:g}" for res in kept),
        **settings,
    }
    adata.uns["osteoimmune"]["cluster_stability"] = {
        col: table[col].to_numpy() for col in STABILITY_COLUMNS
    }
    log.info("Chose resolution %s: %s", chosen, reason)
    return table[STABILITY_COLUMNS]


def _one_cluster(adata: ad.AnnData, *, settings: dict, min_cells_per_cluster: int) -> pd.DataFrame:
    """Every cell in cluster "0": too few cells for a clustering grid."""
    reason = (
        f"{adata.n_obs} cells are fewer than two clusters of {min_cells_per_cluster} cells "
        "(cluster.min_cells_per_cluster): no Leiden grid, every cell is in one cluster"
    )
    adata.obs["leiden"] = pd.Categorical(["0"] * adata.n_obs)
    adata.uns.setdefault("osteoimmune", {})["clustering"] = {
        "resolution": float("nan"),
        "n_clusters": 1,
        "mean_ari": float("nan"),
        "sd_ari": float("nan"),
        "reason": reason,
        "limited": reason,
        "column": "leiden",
        "resolutions": "",
        **settings,
    }
    table = pd.DataFrame({col: [] for col in STABILITY_COLUMNS})
    table = table.astype(
        {"resolution": float, "n_clusters": int, "mean_ari": float, "sd_ari": float, "chosen": bool}
    )
    adata.uns["osteoimmune"]["cluster_stability"] = {
        col: table[col].to_numpy() for col in STABILITY_COLUMNS
    }
    log.info("%s.", reason)
    return table


def small_dataset_caveat(n_cells: int, *, small_dataset_cells: int, limited: str = "") -> str:
    """The report's caveat for a dataset of few cells ("" when it has enough).

    ``limited`` is the clustering's own note (:func:`cluster_over_resolutions`), said too.
    """
    if n_cells >= small_dataset_cells and not limited:
        return ""
    caveat = ""
    if n_cells < small_dataset_cells:
        caveat = (
            f"Only {n_cells} cells after QC (fewer than cluster.small_dataset_cells, "
            f"{small_dataset_cells}): clusters, cell-type calls, proportions and score "
            "comparisons rest on few cells; read them as exploratory."
        )
    if limited:
        caveat = f"{caveat} Clustering: {limited}.".strip()
    return caveat
