"""The pipeline's own QC -> clustering on a benchmark matrix, timed step by step.

    .venv/bin/python bench/pipeline.py bench/out/resampled_20000.h5ad --json out.json

Calls the library functions the way the rule scripts ``filter_cells.py`` and
``cluster_cells.py`` do, with the parameters of ``config/config.yaml``, in one process and
without writing the intermediate h5ad files the rules exchange.
"""

from __future__ import annotations

import argparse
import gc
import sys
import warnings
from pathlib import Path

import anndata as ad
import pandas as pd
import yaml
from timing import StepTimer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

from osteoimmune.cluster import (  # noqa: E402
    integrate,
    markers,
    neighbors,
    normalize,
    pca,
    select_hvg,
    umap,
)
from osteoimmune.qc import (  # noqa: E402
    assign_qc_groups,
    compute_qc_metrics,
    detect_doublets,
    finish_qc,
    flag_cells,
)
from osteoimmune.samples import concat_samples, share_counts  # noqa: E402
from osteoimmune.stability import cluster_over_resolutions  # noqa: E402


def split_samples(adata: ad.AnnData) -> list[ad.AnnData]:
    """One AnnData per sample, as rule read_dataset writes them for the qc_sample jobs.

    Each holds its raw counts once, as a qc_sample job does after reading (``share_counts``).
    """
    parts = [
        adata[idx].copy() for idx in adata.obs.groupby("sample", observed=True).indices.values()
    ]
    for part in parts:
        share_counts(part)
    return parts


def qc_steps(samples: list[ad.AnnData], *, qc: dict, seed: int, timer: StepTimer) -> ad.AnnData:
    """As rules qc_sample (for each sample, one after the other) and filter_cells."""
    parts = []
    while samples:
        part = samples.pop(0)  # as a qc_sample job, hold only the sample being QC'd
        with timer.step("qc_metrics", add=True):
            compute_qc_metrics(part, gene_lists=qc["gene_groups"])
        with timer.step("doublets", add=True):
            detect_doublets(
                part,
                seed=seed,
                threshold=qc["doublet_threshold"],
                mean_center=qc["doublet_mean_center"],
                max_cells=qc["doublet_max_cells"],
            )
        with timer.step("qc_groups", add=True):
            assign_qc_groups(
                part,
                seed=seed,
                resolution=qc["lineage_resolution"],
                min_group_cells=qc["min_group_cells"],
                max_cells=qc["lineage_max_cells"],
            )
        with timer.step("filter", add=True):
            flag_cells(
                part,
                counts_based=True,
                lineage_aware=qc["lineage_aware"],
                lineage_can_tighten=qc["lineage_can_tighten"],
                min_group_cells=qc["min_group_cells"],
                remove_doublets=qc["remove_doublets"],
                nmads=qc["nmads"],
                mt_nmads=qc["mt_nmads"],
                max_pct_mt=qc["max_pct_mt"],
                min_genes=qc["min_genes"],
                min_counts=qc["min_counts"],
            )
        parts.append(part)
    with timer.step("filter", add=True):
        # as filter_cells: one copy of the counts is joined and filtered, then shared again
        shared = all([share_counts(part) for part in parts])
        if shared:
            for part in parts:
                del part.layers["counts"]
        filtered, _, _ = finish_qc(
            concat_samples(parts),
            min_cells_per_gene=qc["min_cells_per_gene"],
            min_cells_per_sample=qc["min_cells_per_sample"],
            on_small_sample=qc["on_small_sample"],
            dataset="bench",
        )
        if shared:
            filtered.layers["counts"] = filtered.X.copy()  # cluster_cells reads two copies
    return filtered


def cluster_steps(adata: ad.AnnData, *, params: dict, seed: int, timer: StepTimer) -> None:
    """As rule cluster_cells: normalise, HVG, PCA, harmony, kNN, UMAP, Leiden, markers."""
    value_type = adata.uns["osteoimmune"]["value_type"]
    with timer.step("normalize"):
        normalize(adata, value_type=value_type)
    with timer.step("hvg"):
        select_hvg(
            adata,
            n_top_genes=params["n_top_genes"],
            value_type=value_type,
            batch_key=params["batch_key"],
        )
    # cluster.embed, step by step: pca, integrate, neighbors, umap
    with timer.step("pca"):
        pca(
            adata,
            n_pcs=params["n_pcs"],
            normalization=params["normalization"],
            value_type=value_type,
            seed=seed,
        )
    with timer.step("harmony"):
        rep, _ = integrate(
            adata, batch_key=params["batch_key"], seed=seed, harmony=params["harmony"]
        )
    with timer.step("neighbors"):
        neighbors(adata, rep=rep, n_neighbors=params["n_neighbors"], seed=seed, knn=params["knn"])
    with timer.step("umap"):
        umap(adata, rep=rep, seed=seed, umap_init=params["umap_init"])
    with timer.step("leiden (grid + stability)"):
        cluster_over_resolutions(
            adata, resolutions=params["resolutions"], repeats=params["stability_repeats"], seed=seed
        )
    with timer.step("markers"):
        markers(adata, n_genes=params["n_markers"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("h5ad")
    parser.add_argument("--json", required=True, help="where to write step times and peak RSS")
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    args = parser.parse_args(argv)
    # scanpy's rank_genes_groups warns once per cluster about a fragmented DataFrame
    warnings.filterwarnings("ignore", category=pd.errors.PerformanceWarning)
    config = yaml.safe_load(Path(args.config).read_text())
    timer = StepTimer()
    with timer.step("read"):
        samples = split_samples(ad.read_h5ad(args.h5ad))
    # no job of the workflow holds the whole matrix during QC: only the split samples are kept
    adata = qc_steps(samples, qc=config["qc"], seed=config["seed"], timer=timer)
    # the workflow clusters in a new process (rule cluster_cells): QC's AnnData copies, freed
    # only by the cycle collector (views refer to their parents), are not carried over
    gc.collect()
    cluster_steps(adata, params=config["cluster"], seed=config["seed"], timer=timer)
    timer.write(args.json, cells_out=adata.n_obs, clusters=int(adata.obs["leiden"].nunique()))


if __name__ == "__main__":
    main()
