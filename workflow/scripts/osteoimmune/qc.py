"""Per-sample quality control: species-aware metrics, doublets, adaptive (MAD) thresholds.

Thresholds are computed per sample, or (lineage-aware mode) within coarse clusters of each
sample, so that lineages with few counts (neutrophils) or a few dominant genes (erythroid cells,
hemoglobin) are not mistaken for low-quality cells. A group's bounds are widened to at least
its sample's (``lineage_can_tighten=False``, the default): lineage-aware QC may spare cells
that the per-sample thresholds remove, but never removes a cell that they keep.

Doublet scores and the coarse groups' variable genes come from kernels that mirror scanpy
(:mod:`osteoimmune.kernels.scrublet`, :mod:`osteoimmune.kernels.hvg`); ``implementation="scanpy"``
runs scanpy's own functions instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

from osteoimmune.errors import QCError
from osteoimmune.jit import cache_umap_functions
from osteoimmune.kernels import check_implementation
from osteoimmune.kernels.hvg import seurat_hvg
from osteoimmune.kernels.scrublet import doublet_threshold, scrublet_sparse
from osteoimmune.samples import cells_of

log = logging.getLogger(__name__)

# Gene groups, matched on upper-cased symbols so that mouse data with upper-cased symbols
# (mt-Co1 stored as MT-CO1) is handled like human data.
GENE_GROUPS = {
    "mt": r"^MT-",
    "ribo": r"^RP[SL]\d",
    "hb": r"^HB[ABDEGMQZ]\d?(?:-|$)",  # HBB, HBA1, Hba-a1; not HBP1 or HBEGF
}


def annotate_gene_groups(adata: ad.AnnData, *, gene_lists: dict | None = None) -> None:
    """Flag mitochondrial, ribosomal and hemoglobin genes in ``adata.var`` (mt, ribo, hb).

    Groups are found by species-aware symbol patterns (MT-/mt-, RPS/RPL/Rps/Rpl, HB*/Hb*);
    ``gene_lists`` (group -> symbols, e.g. from ``qc.gene_groups`` in config) replaces the
    pattern of a group by an explicit list, matched case-insensitively.
    """
    upper = adata.var_names.str.upper()
    gene_lists = gene_lists or {}
    unknown = sorted(set(gene_lists) - set(GENE_GROUPS))
    if unknown:
        msg = f"Unknown QC gene group(s) {unknown} in qc.gene_groups; use {sorted(GENE_GROUPS)}."
        raise QCError(msg)
    for group, pattern in GENE_GROUPS.items():
        if gene_lists.get(group):
            adata.var[group] = upper.isin([g.upper() for g in gene_lists[group]])
        else:
            adata.var[group] = upper.str.contains(pattern, regex=True)


def compute_qc_metrics(adata: ad.AnnData, *, gene_lists: dict | None = None) -> None:
    """Add scanpy's standard QC metrics to ``adata.obs`` (in place, sparse-safe).

    Adds ``total_counts``, ``n_genes_by_counts``, ``pct_counts_in_top_20_genes`` and
    ``pct_counts_{mt,ribo,hb}``, computed on ``layers['counts']`` when present, else on ``X``.
    ``gene_lists`` overrides the gene groups (see :func:`annotate_gene_groups`).
    """
    annotate_gene_groups(adata, gene_lists=gene_lists)
    layer = "counts" if "counts" in adata.layers else None
    top = [20] if adata.n_vars > 20 else None
    sc.pp.calculate_qc_metrics(
        adata, qc_vars=list(GENE_GROUPS), percent_top=top, layer=layer, log1p=True, inplace=True
    )
    if top is None:
        adata.obs["pct_counts_in_top_20_genes"] = 100.0


def mad_bounds(
    values: np.ndarray, *, nmads: float, upper_only: bool = False
) -> tuple[float, float]:
    """Lower and upper bounds ``median -/+ nmads * MAD`` of ``values``.

    A MAD of zero (e.g. all values equal) gives infinite bounds: nothing is flagged rather
    than everything off the median. ``upper_only`` leaves the lower bound at minus infinity.
    """
    values = np.asarray(values, dtype=float)
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    if mad == 0:
        return -np.inf, np.inf
    return (-np.inf if upper_only else median - nmads * mad), median + nmads * mad


def reason_bounds(
    obs: pd.DataFrame,
    *,
    counts_based: bool,
    nmads: float,
    mt_nmads: float,
    max_pct_mt: float,
    min_genes: int,
    min_counts: float,
    sample_obs: pd.DataFrame | None = None,
) -> dict[str, tuple[str, float, float]]:
    """Per removal reason: the ``obs`` column it tests and its ``(lower, upper)`` bounds.

    Count-based reasons (MAD outliers, % mitochondrial) apply only to count input; the absolute
    lower bounds apply to every input. With ``sample_obs`` (the cells of the whole sample, when
    ``obs`` is one coarse group of it) each bound is widened to at least the sample's, so the
    group is never stricter than its sample.
    """
    bounds = {
        "low_genes": ("n_genes_by_counts", float(max(min_genes, 1)), np.inf),
        "low_counts": ("total_counts", float(min_counts), np.inf),
    }
    if counts_based:
        for reason, column in (
            ("outlier_counts", "log1p_total_counts"),
            ("outlier_genes", "log1p_n_genes_by_counts"),
            ("outlier_top20", "pct_counts_in_top_20_genes"),
        ):
            bounds[reason] = (column, *mad_bounds(obs[column], nmads=nmads))
        upper = mad_bounds(obs["pct_counts_mt"], nmads=mt_nmads, upper_only=True)[1]
        bounds["high_mt"] = ("pct_counts_mt", -np.inf, min(upper, max_pct_mt))
    if sample_obs is not None:
        thresholds = dict(nmads=nmads, mt_nmads=mt_nmads, max_pct_mt=max_pct_mt)
        floor = reason_bounds(
            sample_obs,
            counts_based=counts_based,
            min_genes=min_genes,
            min_counts=min_counts,
            **thresholds,
        )
        bounds = {
            reason: (column, min(lower, floor[reason][1]), max(upper, floor[reason][2]))
            for reason, (column, lower, upper) in bounds.items()
        }
    return bounds


def qc_flags(obs: pd.DataFrame, *, counts_based: bool, **thresholds) -> pd.DataFrame:
    """Return one boolean column per removal reason for the cells of one sample (or group).

    A cell is flagged for a reason when its value lies outside the reason's bounds; keyword
    arguments as in :func:`reason_bounds`.
    """
    flags = pd.DataFrame(index=obs.index)
    for reason, (column, lower, upper) in reason_bounds(
        obs, counts_based=counts_based, **thresholds
    ).items():
        values = obs[column].to_numpy(dtype=float)
        flags[reason] = (values < lower) | (values > upper)
    return flags


def qc_thresholds(
    obs: pd.DataFrame, *, counts_based: bool, **thresholds
) -> dict[str, tuple[float, float]]:
    """The bounds :func:`qc_flags` applies to these cells, per metric, in the metric's units.

    Cells outside ``[lower, upper]`` are flagged (infinite bounds flag nothing). Keyword
    arguments as in :func:`reason_bounds`.
    """
    reasons = reason_bounds(obs, counts_based=counts_based, **thresholds)
    bounds = {
        "total_counts": (reasons["low_counts"][1], np.inf),
        "n_genes_by_counts": (reasons["low_genes"][1], np.inf),
    }
    if not counts_based:
        return bounds
    for metric, reason in (
        ("total_counts", "outlier_counts"),
        ("n_genes_by_counts", "outlier_genes"),
    ):
        lower, upper = np.expm1(reasons[reason][1:])
        bounds[metric] = (max(bounds[metric][0], lower), upper)
    bounds["pct_counts_in_top_20_genes"] = reasons["outlier_top20"][1:]
    bounds["pct_counts_mt"] = reasons["high_mt"][1:]
    return bounds


def threshold_table(
    obs: pd.DataFrame,
    *,
    min_group_cells: int | None,
    counts_based: bool,
    lineage_can_tighten: bool = False,
    **thresholds,
) -> pd.DataFrame:
    """Bounds per sample (scope ``sample``) and per qc_group of it (lineage-aware mode).

    One row per sample x scope x metric with columns lower, upper (NaN = unbounded) and cells.
    Group bounds are widened to the sample's unless ``lineage_can_tighten``.
    """
    rows = []

    def add(sample, scope: str, part: pd.DataFrame, whole: pd.DataFrame | None = None) -> None:
        bounds = qc_thresholds(part, counts_based=counts_based, sample_obs=whole, **thresholds)
        for metric, (lower, upper) in bounds.items():
            rows.append((sample, scope, metric, lower, upper, len(part)))

    for sample, sample_obs in obs.groupby("sample", observed=True):
        add(sample, "sample", sample_obs)
        if min_group_cells is not None and "qc_group" in sample_obs:
            for group, part in sample_obs.groupby("qc_group", observed=True):
                if len(part) >= min_group_cells:
                    add(sample, str(group), part, None if lineage_can_tighten else sample_obs)
    table = pd.DataFrame(rows, columns=["sample", "scope", "metric", "lower", "upper", "cells"])
    table[["lower", "upper"]] = table[["lower", "upper"]].replace([np.inf, -np.inf], np.nan)
    return table


# Scrublet simulates doublets and scores cells by their doublet neighbours; with fewer cells the
# kNN graph and PCA are too small to be meaningful (or fail).
SCRUBLET_MIN_CELLS = 50


def counts_matrix(adata: ad.AnnData) -> sparse.csr_matrix:
    """Raw counts (``layers['counts']`` when present, else ``X``) as sparse CSR float32."""
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    return sparse.csr_matrix(counts, dtype=np.float32)


def _scrublet_sample(
    counts: sparse.csr_matrix,
    *,
    seed: int,
    threshold,
    mean_center: bool = True,
    implementation: str = "osteoimmune",
) -> tuple:
    """Scrublet on one sample's counts; returns (scores, calls, threshold used or None)."""
    if mean_center and implementation == "osteoimmune":  # scrublet's default, computed sparse
        scores, sim_scores = scrublet_sparse(counts, seed=seed, score_simulated=threshold == "auto")
        if threshold == "auto":
            threshold = doublet_threshold(sim_scores)
        calls = scores > threshold if threshold is not None else np.zeros(len(scores), bool)
        return scores, calls, threshold
    sub = ad.AnnData(X=counts)
    placeholder = 1.0 if threshold == "auto" else threshold
    # scrublet divides by the detectable doublet fraction, zero when no simulated doublet
    # scores above the threshold: a harmless NaN in its own statistics, not in the scores
    with np.errstate(invalid="ignore", divide="ignore"):
        # Exact kNN (sklearn): pynndescent's approximate search plus its numba compilation
        # took ~95% of scrublet's time here (155 s vs 6 s on 10k resampled cells, bench/).
        sc.pp.scrublet(
            sub,
            threshold=placeholder,
            random_state=seed,
            verbose=False,
            use_approx_neighbors=False,
            mean_center=mean_center,
        )
    # scrublet drops cells with < 3 genes before scoring: those get NaN and are not called
    scores = sub.obs["doublet_score"].to_numpy(dtype=float)
    if threshold == "auto":
        threshold = doublet_threshold(sub.uns["scrublet"]["doublet_scores_sim"])
    calls = scores > threshold if threshold is not None else np.zeros(len(scores), dtype=bool)
    return scores, calls, threshold


def doublet_parts(n_cells: int, *, max_cells: int | None, seed: int) -> list[np.ndarray]:
    """Positions of a sample's cells in the parts scored separately for doublets.

    One part (all cells, in order) up to ``max_cells``; above, a seeded random split into
    equal parts of at most ``max_cells``, each part's positions sorted.
    """
    if max_cells is None or n_cells <= max_cells:
        return [np.arange(n_cells)]
    order = np.random.default_rng(seed).permutation(n_cells)
    n_parts = -(-n_cells // max_cells)
    return [np.sort(part) for part in np.array_split(order, n_parts)]


def detect_doublets(adata: ad.AnnData, **options) -> list[str]:
    """Score doublets per sample with scanpy's scrublet on raw counts (in place).

    :func:`start_doublets` without a pool, waited for: the same options, returns its notes.
    """
    return start_doublets(adata, **options)()


def _rows(counts, cells: np.ndarray, n_obs: int) -> sparse.csr_matrix:
    """The rows ``cells`` of a counts matrix as sparse CSR float32 (:func:`counts_matrix`)."""
    whole = len(cells) == n_obs and np.array_equal(cells, np.arange(n_obs))
    return sparse.csr_matrix(counts if whole else counts[cells], dtype=np.float32)


def start_doublets(
    adata: ad.AnnData,
    *,
    seed: int,
    threshold: float | str = 0.25,
    min_cells: int = SCRUBLET_MIN_CELLS,
    mean_center: bool = True,
    max_cells: int | None = None,
    implementation: str = "osteoimmune",
    pool: Executor | None = None,
    in_flight: int = 2,
) -> Callable[[], list[str]]:
    """Score doublets per sample with scanpy's scrublet on raw counts, in ``pool`` if given.

    Returns a function that waits for the scrublet runs (one per sample or part), stores
    ``obs['doublet_score']`` (NaN when not scored) and ``obs['predicted_doublet']``, and
    returns notes naming each sample that was skipped or had no doublets called. Without a
    pool every run is done before returning. The same scores either way: each run depends
    only on its cells and the seed.

    Parameters
    ----------
    adata
        AnnData of raw counts (``layers['counts']`` or ``X``) with ``obs['sample']``.
    seed
        Random state of the doublet simulation and PCA.
    threshold
        Doublet score above which a cell is called a doublet, or ``"auto"`` (scrublet's rule).
    min_cells
        Samples with fewer cells are not scored.
    mean_center
        Z-score the genes and reduce them by PCA (scrublet's default; computed sparse by
        :func:`osteoimmune.kernels.scrublet.scrublet_sparse`: scanpy's ``sc.pp.scrublet``
        scores up to rounding); False scales the genes to unit variance and reduces them by
        truncated SVD (scanpy's scrublet with ``mean_center=False``). On the real datasets in
        the mirror the two call the same doublets but for 2-3 cells per sample
        (bench/README.md).
    max_cells
        A sample with more cells is scored in random parts of at most this many cells (seeded),
        each with its own simulated doublets, as if each part were one 10x channel: scrublet's
        neighbour count grows with the square root of the cells, so one part of n cells costs
        ~n^2 and a sample scored whole grows quadratically (100,000 cells: 474 neighbours among
        300,000 cells). None scores every sample whole.
    implementation
        ``osteoimmune`` (the sparse kernel when ``mean_center``) or ``scanpy``
        (``sc.pp.scrublet`` in every case).
    pool
        Worker processes for the runs, while this process goes on (qc_sample's coarse
        clustering). A thread here cuts each run's counts and hands them to the pool, at most
        ``in_flight`` runs at a time, the next when one is done: a sample of many parts holds
        the counts of a few of them, not of all (300,000 cells: 12 parts of ~400 MB).
    in_flight
        How many runs the pool holds at once (its workers, for them all to be busy).
    """
    check_implementation(implementation)
    notes, runs = [], []
    options = dict(
        seed=seed, threshold=threshold, mean_center=mean_center, implementation=implementation
    )
    for sample, idx in adata.obs.groupby("sample", observed=True).indices.items():
        if len(idx) < min_cells:
            notes.append(f"sample {sample}: {len(idx)} cells (< {min_cells}), doublets not scored")
            continue
        parts = doublet_parts(len(idx), max_cells=max_cells, seed=seed)
        if len(parts) > 1:
            log.info(
                "sample %s: %d cells, doublets scored in %d random parts of <= %d cells",
                sample,
                len(idx),
                len(parts),
                max_cells,
            )
        runs.extend((sample, idx, idx[part]) for part in parts)
    # the matrix itself, not adata: this process changes adata.obs while the thread cuts rows
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    results: list = [None] * len(runs)

    def run_here(k: int) -> None:
        try:
            results[k] = _scrublet_sample(_rows(counts, runs[k][2], adata.n_obs), **options)
        except (ValueError, IndexError, np.linalg.LinAlgError) as err:
            results[k] = err

    feeder, fed = None, []  # fed: the exception that stopped the thread, if any
    if pool is None:
        for k in range(len(runs)):
            run_here(k)
    else:
        slots = threading.BoundedSemaphore(max(1, in_flight))

        def feed() -> None:
            try:
                for k, (_, _, cells) in enumerate(runs):
                    slots.acquire()
                    part = _rows(counts, cells, adata.n_obs)
                    run = pool.submit(_scrublet_sample, part, **options)
                    run.add_done_callback(lambda _: slots.release())
                    results[k] = run
            except BaseException as err:  # raised again by finish(), in this process's thread
                fed.append(err)

        feeder = threading.Thread(target=feed, name="doublet-feeder", daemon=True)
        feeder.start()

    def finish() -> list[str]:
        if feeder is not None:
            feeder.join()
            if fed:
                raise fed[0]
        scores = np.full(adata.n_obs, np.nan)
        calls = np.zeros(adata.n_obs, dtype=bool)
        for k, ((sample, idx, cells), run) in enumerate(zip(runs, results, strict=True)):
            if isinstance(run, Future):
                try:
                    run = run.result()
                except (ValueError, IndexError, np.linalg.LinAlgError) as err:
                    run = err
            if isinstance(run, Exception):
                notes.append(f"sample {sample}: scrublet failed ({run}), doublets not scored")
            else:
                scores[cells], calls[cells], used = run
                if used is None:
                    notes.append(f"sample {sample}: doublet scores not bimodal, no doublets called")
            if k + 1 == len(runs) or runs[k + 1][0] != sample:
                log.info("sample %s: doublets scored, %d called", sample, calls[idx].sum())
        adata.obs["doublet_score"] = scores
        adata.obs["predicted_doublet"] = calls
        return notes

    return finish


def coarse_groups(
    adata: ad.AnnData,
    *,
    seed: int,
    resolution: float = 0.3,
    n_comps: int = 20,
    n_top_genes: int = 2000,
    n_neighbors: int = 15,
    max_cells: int | None = None,
    implementation: str = "osteoimmune",
) -> np.ndarray:
    """Coarse clusters (lineages) of the cells of one sample, from a copy of its counts.

    normalize_total + log1p, PCA on the top highly variable genes, kNN graph and Leiden at low
    resolution, all seeded; the counts stay sparse. Returns labels ``g0``, ``g1``, ... (largest
    first). ``implementation`` chooses how the variable genes are found
    (:func:`osteoimmune.kernels.hvg.seurat_hvg`, or ``scanpy``'s own function).

    A sample of more than ``max_cells`` cells is clustered on a seeded random subsample of
    that many (PCA fitted, graph and Leiden on it); every other cell joins the group most
    common among its ``n_neighbors`` nearest subsampled cells in that PCA. The exact kNN
    graph of all cells grows with the square of the cells (100,000 cells: ~60 s of a
    ~100 s step); lineages of tens of thousands of cells are found as well from a sample.
    """
    work = ad.AnnData(X=counts_matrix(adata))
    sc.pp.normalize_total(work, target_sum=1e4)
    sc.pp.log1p(work)
    if work.n_vars > n_top_genes:  # highly_variable_genes(flavor="seurat"), without copies
        hvg = seurat_hvg(
            work.X, logged=True, n_top_genes=n_top_genes, implementation=implementation
        )
        work = work[:, hvg].copy()
    rest = None
    if max_cells is not None and work.n_obs > max_cells:
        chosen = np.zeros(work.n_obs, dtype=bool)
        chosen[np.random.default_rng(seed).choice(work.n_obs, size=max_cells, replace=False)] = True
        work, rest = work[chosen].copy(), work[~chosen].copy()
    n_comps = int(min(n_comps, work.n_vars - 1, work.n_obs - 1))
    sc.pp.pca(work, n_comps=n_comps, random_state=seed)
    cache_umap_functions()
    sc.pp.neighbors(
        work,
        n_neighbors=min(n_neighbors, work.n_obs - 1),
        random_state=seed,
        transformer="sklearn",  # exact kNN: faster than pynndescent at one sample's size
    )
    sc.tl.leiden(
        work,
        resolution=resolution,
        random_state=seed,
        flavor="igraph",
        n_iterations=2,
        directed=False,
    )
    labels = ("g" + work.obs["leiden"].astype(str)).to_numpy()
    if rest is None:
        return labels
    from sklearn.neighbors import KNeighborsClassifier

    # the subsample's PCA (scanpy centres the genes implicitly): the same projection here
    x_rest = rest.X @ work.varm["PCs"] - np.asarray(work.X.mean(axis=0)) @ work.varm["PCs"]
    vote = KNeighborsClassifier(n_neighbors=min(n_neighbors, work.n_obs), algorithm="brute")
    vote.fit(work.obsm["X_pca"], labels)
    out = np.empty(len(chosen), dtype=object)
    out[chosen] = labels
    out[~chosen] = np.concatenate(
        [vote.predict(x_rest[i : i + 10_000]) for i in range(0, len(x_rest), 10_000)]
    )
    return out


def assign_qc_groups(
    adata: ad.AnnData,
    *,
    seed: int,
    resolution: float,
    min_group_cells: int,
    max_cells: int | None = None,
    implementation: str = "osteoimmune",
) -> None:
    """Store each sample's coarse clusters in ``obs['qc_group']`` (see :func:`coarse_groups`).

    Samples with fewer than twice ``min_group_cells`` cells are one group, ``all``; samples of
    more than ``max_cells`` are clustered on a subsample of that many.
    """
    groups = np.full(adata.n_obs, "all", dtype=object)
    for _, idx in adata.obs.groupby("sample", observed=True).indices.items():
        if len(idx) >= 2 * min_group_cells:
            groups[idx] = coarse_groups(
                cells_of(adata, idx),
                seed=seed,
                resolution=resolution,
                max_cells=max_cells,
                implementation=implementation,
            )
    adata.obs["qc_group"] = pd.Categorical(groups)


def grouped_flags(
    obs: pd.DataFrame,
    *,
    min_group_cells: int | None,
    counts_based: bool,
    lineage_can_tighten: bool = False,
    **thresholds,
) -> pd.DataFrame:
    """Removal reasons per cell, thresholds computed per sample or per sample x qc_group.

    With ``min_group_cells`` (lineage-aware mode) the thresholds are computed within each
    ``obs['qc_group']`` of a sample; groups with fewer cells keep the sample's thresholds.
    Unless ``lineage_can_tighten``, a group's bounds are widened to at least the sample's, so
    no cell that the sample's thresholds keep is flagged.
    """
    parts = []
    for _, sample_obs in obs.groupby("sample", observed=True):
        flags = qc_flags(sample_obs, counts_based=counts_based, **thresholds)
        if min_group_cells is not None and "qc_group" in sample_obs:
            groups = sample_obs.groupby("qc_group", observed=True).indices
            whole = None if lineage_can_tighten else sample_obs
            for idx in groups.values():
                if len(idx) >= min_group_cells:
                    flags.iloc[idx] = qc_flags(
                        sample_obs.iloc[idx],
                        counts_based=counts_based,
                        sample_obs=whole,
                        **thresholds,
                    ).to_numpy()
        parts.append(flags)
    return pd.concat(parts).reindex(obs.index)


# Each cell's verdict under every mode (obs columns qc_removed_<verdict>): per-sample
# thresholds, lineage-aware as configured, lineage-aware with the groups' own bounds (may be
# stricter than the sample's) and widened to never be stricter than the sample's.
VERDICTS = ("sample_mode", "lineage_mode", "lineage_own_bounds", "lineage_never_stricter")
VERDICT_PREFIX = "qc_removed_"


def lineage_losses(obs: pd.DataFrame, *, verdicts: pd.DataFrame) -> pd.DataFrame:
    """Cells removed per sample x qc_group under each QC mode.

    ``verdicts`` has one boolean column per mode (:data:`VERDICTS`), counted as
    ``removed_<mode>``; ``removed_by_tightening`` counts the cells the groups' own bounds remove
    although the sample's thresholds keep them (``qc.lineage_can_tighten: true`` removes them,
    ``false`` keeps them). Medians of total counts, genes and % mito / hemoglobin say which
    lineage a group is.
    """
    keys = [obs["sample"], obs["qc_group"] if "qc_group" in obs else pd.Series("all", obs.index)]
    counts = verdicts.astype(int).add_prefix("removed_")
    if {"sample_mode", "lineage_own_bounds"} <= set(verdicts.columns):
        tightened = verdicts["lineage_own_bounds"] & ~verdicts["sample_mode"]
        counts["removed_by_tightening"] = tightened.astype(int)
    counts.insert(0, "cells", 1)
    table = counts.groupby(keys, observed=True).sum()
    metrics = ["total_counts", "n_genes_by_counts", "pct_counts_mt", "pct_counts_hb"]
    medians = (
        obs[[m for m in metrics if m in obs]]
        .groupby(keys, observed=True)
        .median()
        .add_prefix("median_")
    )
    table = table.join(medians)
    table.index.names = ["sample", "qc_group"]
    return table


def small_samples(
    cells_out: pd.Series, *, min_cells: int, on_small_sample: str, dataset: str
) -> list:
    """Samples with fewer than ``min_cells`` cells after QC, to drop (or fail, per config).

    Raises
    ------
    QCError
        When ``on_small_sample`` is ``"fail"`` and a sample is small, or when every sample is.
    """
    small = cells_out[cells_out < min_cells]
    if small.empty:
        return []
    listed = ", ".join(f"{s} ({n} cells)" for s, n in small.items())
    if on_small_sample == "fail" or len(small) == len(cells_out):
        what = "every sample" if len(small) == len(cells_out) else "sample(s)"
        msg = (
            f"Dataset {dataset}: after QC {what} kept fewer than {min_cells} cells: {listed}. "
            "Relax `qc:` thresholds, lower `qc.min_cells_per_sample`"
            + (" or set `qc.on_small_sample: drop`." if on_small_sample == "fail" else ".")
        )
        raise QCError(msg)
    log.warning(
        "Dataset %s: dropped sample(s) with fewer than %d cells after QC: %s",
        dataset,
        min_cells,
        listed,
    )
    return list(small.index)


def qc_summary(flags: pd.DataFrame, remove: np.ndarray, samples: pd.Series) -> pd.DataFrame:
    """Per sample: cells in, cells flagged per reason, cells removed, cells out."""
    summary = flags.groupby(samples, observed=True).sum()
    summary.insert(0, "cells_in", samples.groupby(samples, observed=True).size())
    summary["cells_removed"] = (
        pd.Series(remove, index=samples.index).groupby(samples, observed=True).sum()
    )
    summary["cells_out"] = summary["cells_in"] - summary["cells_removed"]
    summary.index.name = "sample"
    return summary


def prepare_qc(
    adata: ad.AnnData,
    *,
    seed: int,
    value_type: str,
    doublet_threshold: float | str,
    doublet_mean_center: bool,
    doublet_max_cells: int | None = None,
    lineage_max_cells: int | None = None,
    pool: Executor | None = None,
    lineage_aware: bool,
    lineage_resolution: float,
    min_group_cells: int,
    remove_doublets: bool,
) -> list[str]:
    """Doublet scores and coarse QC groups for count input; returns notes for the report.

    The first note says which QC mode applies; later ones name skipped samples. Non-count
    input gets one note saying that count-based steps were skipped. ``doublet_threshold`` and
    ``doublet_mean_center`` and ``doublet_max_cells`` as ``threshold``, ``mean_center`` and
    ``max_cells`` of :func:`start_doublets`;
    ``lineage_resolution``, ``min_group_cells`` and ``lineage_max_cells`` as
    ``resolution``, ``min_group_cells`` and ``max_cells`` of :func:`assign_qc_groups`;
    with a ``pool`` of worker processes, scrublet runs there beside the coarse clustering;
    ``lineage_aware`` and ``remove_doublets`` (as in :func:`flag_cells`) only word the note.
    """
    if value_type != "counts":
        return [
            f"values are {value_type}, not counts: count-based QC, doublet detection and "
            "lineage-aware thresholds skipped, only cells with no detected genes removed"
        ]
    finish_doublets = start_doublets(
        adata,
        seed=seed,
        threshold=doublet_threshold,
        mean_center=doublet_mean_center,
        max_cells=doublet_max_cells,
        pool=pool,
    )
    assign_qc_groups(  # here, while the pool's workers score doublets
        adata,
        seed=seed,
        resolution=lineage_resolution,
        min_group_cells=min_group_cells,
        max_cells=lineage_max_cells,
    )
    notes = finish_doublets()
    mode = "within coarse clusters (lineage-aware)" if lineage_aware else "per sample"
    doublets = "scrublet doublets removed" if remove_doublets else "doublets scored, kept"
    return [f"adaptive MAD thresholds on counts {mode}; {doublets}", *notes]


FLAG_PREFIX = "qc_fail_"


def flag_cells(
    adata: ad.AnnData,
    *,
    counts_based: bool,
    lineage_aware: bool = False,
    lineage_can_tighten: bool = False,
    min_group_cells: int = 30,
    remove_doublets: bool = True,
    **thresholds,
) -> pd.DataFrame:
    """Mark the cells to remove, per sample (or per coarse group), in ``adata.obs`` (in place).

    Adds one ``qc_fail_<reason>`` column per reason (in the chosen mode), ``qc_pass``, and
    ``qc_removed_<mode>`` per mode of :data:`VERDICTS` (each mode's verdict, for the losses
    table). Returns the thresholds used (:func:`threshold_table`). Parameters as in
    :func:`filter_cells`.
    """
    own = "lineage_own_bounds" if lineage_can_tighten else "lineage_never_stricter"
    modes = {
        mode: grouped_flags(
            adata.obs,
            min_group_cells=None if mode == "sample_mode" else min_group_cells,
            counts_based=counts_based,
            lineage_can_tighten=mode == "lineage_own_bounds",
            **thresholds,
        )
        for mode in ("sample_mode", "lineage_own_bounds", "lineage_never_stricter")
    }
    modes["lineage_mode"] = modes[own]
    if remove_doublets and "predicted_doublet" in adata.obs:
        for flags in modes.values():
            flags["doublet"] = adata.obs["predicted_doublet"].to_numpy(dtype=bool)
    flags = modes["lineage_mode" if lineage_aware else "sample_mode"]
    stale = [c for c in adata.obs.columns if c.startswith(FLAG_PREFIX)]  # from an earlier call
    adata.obs = adata.obs.drop(columns=stale)
    for reason in flags.columns:
        adata.obs[FLAG_PREFIX + reason] = flags[reason].to_numpy(dtype=bool)
    adata.obs["qc_pass"] = ~flags.any(axis=1).to_numpy()
    for mode in VERDICTS:
        adata.obs[VERDICT_PREFIX + mode] = modes[mode].any(axis=1).to_numpy()
    return threshold_table(
        adata.obs,
        min_group_cells=min_group_cells if lineage_aware else None,
        counts_based=counts_based,
        lineage_can_tighten=lineage_can_tighten,
        **thresholds,
    )


def finish_qc(
    adata: ad.AnnData,
    *,
    min_cells_per_gene: int,
    min_cells_per_sample: int = 0,
    on_small_sample: str = "drop",
    dataset: str = "dataset",
) -> tuple[ad.AnnData, pd.DataFrame, pd.DataFrame]:
    """Apply the flags of :func:`flag_cells` (of one or many samples) and summarise them.

    Returns the filtered AnnData (a copy, genes detected in fewer than ``min_cells_per_gene``
    cells dropped, flag columns removed), the per-sample table and the lineage losses table.
    """
    obs = adata.obs
    reasons = [c for c in obs.columns if c.startswith(FLAG_PREFIX)]
    # a reason only some samples have (e.g. doublets, unscored in a small sample) is False
    flags = obs[reasons].fillna(False).astype(bool)
    flags.columns = [c.removeprefix(FLAG_PREFIX) for c in reasons]
    remove = ~obs["qc_pass"].fillna(False).to_numpy(dtype=bool)
    summary = qc_summary(flags, remove, obs["sample"])
    verdict_columns = [VERDICT_PREFIX + mode for mode in VERDICTS if VERDICT_PREFIX + mode in obs]
    verdicts = obs[verdict_columns].fillna(False).astype(bool)
    verdicts.columns = [c.removeprefix(VERDICT_PREFIX) for c in verdict_columns]
    losses = lineage_losses(obs, verdicts=verdicts)
    dropped = small_samples(
        summary["cells_out"],
        min_cells=max(min_cells_per_sample, 1),
        on_small_sample=on_small_sample,
        dataset=dataset,
    )
    summary["sample_dropped"] = summary.index.isin(dropped)
    summary.loc[summary["sample_dropped"], "cells_out"] = 0
    remove |= obs["sample"].isin(dropped).to_numpy()
    # genes are counted on the kept cells first, so that the AnnData is copied only once
    n_cells = _cells_per_gene(adata.X, ~remove)
    out = adata[~remove, n_cells >= min_cells_per_gene].copy()
    out.obs = out.obs.drop(columns=[*reasons, *verdict_columns])
    out.obs["qc_pass"] = True
    return out, summary, losses


def _cells_per_gene(x, keep: np.ndarray) -> np.ndarray:
    """Number of the kept cells (rows) in which each gene is non-zero, without copying X."""
    if sparse.issparse(x) and x.format == "csr":
        stored = np.repeat(keep, np.diff(x.indptr)) & (x.data != 0)
        return np.bincount(x.indices[stored], minlength=x.shape[1])
    return np.asarray((x[keep] != 0).sum(axis=0)).ravel()


def filter_cells(
    adata: ad.AnnData,
    *,
    counts_based: bool,
    min_cells_per_gene: int,
    lineage_aware: bool = False,
    lineage_can_tighten: bool = False,
    min_group_cells: int = 30,
    remove_doublets: bool = True,
    min_cells_per_sample: int = 0,
    on_small_sample: str = "drop",
    dataset: str = "dataset",
    **thresholds,
) -> tuple[ad.AnnData, pd.DataFrame, pd.DataFrame]:
    """Filter cells per sample (or per coarse group) and drop rarely detected genes.

    :func:`flag_cells` then :func:`finish_qc` in one call (the workflow runs the first per
    sample, in parallel jobs, and the second on all samples). The workflow passes every value
    from the config's ``qc:`` section (config/config.yaml, schema defaults); the keyword
    defaults here serve direct calls.

    Parameters
    ----------
    adata
        AnnData with QC metrics (:func:`compute_qc_metrics`) and ``obs['sample']``; optionally
        ``obs['qc_group']`` (:func:`assign_qc_groups`) and ``obs['predicted_doublet']``.
    counts_based
        Whether the values are raw counts; otherwise count-based criteria are skipped.
    min_cells_per_gene
        Genes detected in fewer cells are removed.
    lineage_aware, min_group_cells
        Compute thresholds within each qc_group of a sample (groups of at least
        ``min_group_cells`` cells; smaller ones use the sample's thresholds).
    lineage_can_tighten
        Let a group's thresholds be stricter than its sample's; by default they are widened
        to at least the sample's, so lineage-aware QC never removes a cell that the
        per-sample thresholds keep.
    remove_doublets
        Remove cells with ``obs['predicted_doublet']`` (reason ``doublet``).
    min_cells_per_sample, on_small_sample, dataset
        Samples with fewer cells left are dropped with a warning (``"drop"``) or raise
        :class:`QCError` (``"fail"``); ``dataset`` names the data in messages.
    **thresholds
        ``nmads``, ``mt_nmads``, ``max_pct_mt``, ``min_genes``, ``min_counts`` (see qc_flags).

    Returns
    -------
    The filtered AnnData (a copy); a table per sample (cells in, flagged per reason, removed,
    out, whether dropped as too small); cells removed per sample x qc_group in every mode
    (:func:`lineage_losses`).
    """
    flag_cells(
        adata,
        counts_based=counts_based,
        lineage_aware=lineage_aware,
        lineage_can_tighten=lineage_can_tighten,
        min_group_cells=min_group_cells,
        remove_doublets=remove_doublets,
        **thresholds,
    )
    return finish_qc(
        adata,
        min_cells_per_gene=min_cells_per_gene,
        min_cells_per_sample=min_cells_per_sample,
        on_small_sample=on_small_sample,
        dataset=dataset,
    )


QC_COLUMNS = (
    "sample",
    "qc_group",
    "total_counts",
    "n_genes_by_counts",
    "pct_counts_mt",
    "pct_counts_ribo",
    "pct_counts_hb",
    "pct_counts_in_top_20_genes",
    "doublet_score",
    "predicted_doublet",
)


def qc_cells_table(obs: pd.DataFrame) -> pd.DataFrame:
    """Per cell (before filtering): QC metrics, doublet score, group, reasons and verdicts."""
    flags = [c for c in obs.columns if c.startswith(FLAG_PREFIX) or c.startswith("qc_removed")]
    columns = [c for c in (*QC_COLUMNS, *flags, "qc_pass") if c in obs]
    return obs[columns]
