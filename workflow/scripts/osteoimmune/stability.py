"""Leiden over a grid of resolutions, resampling stability of each, and the choice among them.

Stability of a resolution: cluster a seeded subsample of the cells again (Leiden on the
subgraph of the full kNN graph induced by the subsample's cells) and compare with
the full-data clusters of the same cells by the adjusted Rand index (ARI).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from osteoimmune.cluster import leiden

log = logging.getLogger(__name__)

STABILITY_COLUMNS = ["resolution", "n_clusters", "mean_ari", "sd_ari", "chosen"]


def resolution_key(resolution: float) -> str:
    """The obs column holding the Leiden clusters at ``resolution``, e.g. ``leiden_0.4``."""
    return f"leiden_{float(resolution)}"


def leiden_grid(adata: ad.AnnData, *, resolutions: Sequence[float], seed: int) -> None:
    """Leiden at every resolution into ``obs['leiden_<resolution>']``."""
    for resolution in resolutions:
        key = resolution_key(resolution)
        leiden(adata, resolution=resolution, seed=seed, key_added=key)
        log.info("Leiden at resolution %s: %d clusters", resolution, adata.obs[key].nunique())


def stability_table(
    adata: ad.AnnData,
    *,
    resolutions: Sequence[float],
    repeats: int,
    seed: int,
    fraction: float = 0.8,
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

    Returns
    -------
    One row per resolution: resolution, n_clusters (full data), mean_ari, sd_ari (over repeats).
    """
    graph = adata.obsp[adata.uns["neighbors"]["connectivities_key"]].tocsr()
    n_sub = max(int(round(fraction * adata.n_obs)), 3)
    rng = np.random.default_rng(seed)
    ari = np.empty((len(resolutions), repeats))
    for r in range(repeats):
        cells = np.sort(rng.choice(adata.n_obs, size=n_sub, replace=False))
        # the subsample keeps its cells' edges of the full graph: no new kNN search
        sub = ad.AnnData(
            obs=pd.DataFrame(index=adata.obs_names[cells]),
            obsp={"connectivities": graph[cells][:, cells]},
        )
        sub.uns["neighbors"] = {"connectivities_key": "connectivities", "params": {}}
        for i, resolution in enumerate(resolutions):
            leiden(sub, resolution=resolution, seed=seed + r)
            full = adata.obs[resolution_key(resolution)].to_numpy()[cells]
            ari[i, r] = adjusted_rand_score(full, sub.obs["leiden"].to_numpy())
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


def cluster_over_resolutions(
    adata: ad.AnnData,
    *,
    resolutions: Sequence[float],
    repeats: int,
    seed: int,
    fraction: float = 0.8,
    tolerance: float = 0.02,
) -> pd.DataFrame:
    """Leiden grid, stability, choice; ``obs['leiden']`` at the chosen resolution.

    Records the choice in ``uns['osteoimmune']['clustering']`` (resolution, n_clusters,
    mean_ari, sd_ari, reason, ...) and the table in ``uns['osteoimmune']['cluster_stability']``
    (a dict of columns). Returns the stability table with a boolean ``chosen`` column.
    """
    resolutions = sorted({float(res) for res in resolutions})
    leiden_grid(adata, resolutions=resolutions, seed=seed)
    table = stability_table(
        adata, resolutions=resolutions, repeats=repeats, seed=seed, fraction=fraction
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
        "column": key,
        "resolutions": ", ".join(f"{res:g}" for res in resolutions),
        "stability_repeats": int(repeats),
        "stability_fraction": float(fraction),
        "tolerance": float(tolerance),
    }
    adata.uns["osteoimmune"]["cluster_stability"] = {
        col: table[col].to_numpy() for col in STABILITY_COLUMNS
    }
    log.info("Chose resolution %s: %s", chosen, reason)
    return table[STABILITY_COLUMNS]
