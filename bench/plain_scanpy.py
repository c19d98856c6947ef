"""Baseline: the plain scanpy tutorial (QC -> clusters -> markers) on a benchmark matrix, timed.

    .venv/bin/python bench/plain_scanpy.py bench/out/resampled_20000.h5ad --json out.json

Parameters follow scanpy's preprocessing-and-clustering tutorial, then one ``score_genes`` call
per default set of the signature library (22 for the mouse and human libraries). Scrublet gets
an explicit threshold (0.25, the pipeline's default) because its automatic one needs
scikit-image, which is not installed here; ``--no-doublets`` leaves it out (at 100,000 cells in
one sample it alone takes most of an hour).
"""

from __future__ import annotations

import argparse
import warnings

import anndata as ad
import pandas as pd
import scanpy as sc
from timing import StepTimer

SEED = 0


def run(h5ad: str, timer: StepTimer, *, doublets: bool = True) -> ad.AnnData:
    with timer.step("read"):
        adata = ad.read_h5ad(h5ad)
        adata.X = adata.layers.pop("counts")
    with timer.step("qc_metrics"):
        adata.var["mt"] = adata.var_names.str.startswith("MT-")
        adata.var["ribo"] = adata.var_names.str.startswith(("RPS", "RPL"))
        adata.var["hb"] = adata.var_names.str.contains("^HB[^(P)]")
        sc.pp.calculate_qc_metrics(adata, qc_vars=["mt", "ribo", "hb"], inplace=True, log1p=True)
    with timer.step("filter"):
        sc.pp.filter_cells(adata, min_genes=100)
        sc.pp.filter_genes(adata, min_cells=3)
    if doublets:
        with timer.step("doublets"):
            sc.pp.scrublet(adata, batch_key="sample", threshold=0.25, random_state=SEED)
    adata.layers["counts"] = adata.X.copy()
    with timer.step("normalize"):
        sc.pp.normalize_total(adata)
        sc.pp.log1p(adata)
    with timer.step("hvg"):
        sc.pp.highly_variable_genes(adata, n_top_genes=2000, batch_key="sample")
    with timer.step("pca"):
        sc.tl.pca(adata, random_state=SEED)
    with timer.step("neighbors"):
        sc.pp.neighbors(adata, random_state=SEED)
    with timer.step("umap"):
        sc.tl.umap(adata, random_state=SEED)
    with timer.step("leiden"):
        sc.tl.leiden(adata, flavor="igraph", n_iterations=2, random_state=SEED)
    with timer.step("markers"):
        sc.tl.rank_genes_groups(adata, groupby="leiden", method="wilcoxon")
    with timer.step("score_genes"):  # the signature library's default sets, one call each
        for name, genes in score_sets(adata).items():
            sc.tl.score_genes(adata, genes, score_name=f"score_{name}", random_state=SEED)
    return adata


def score_sets(adata: ad.AnnData) -> dict[str, list[str]]:
    """The library's default score sets (``use: score``) with genes in the data."""
    from osteoimmune.scoring import default_score_sets
    from osteoimmune.signatures import load_library

    library = load_library()
    species = adata.uns["osteoimmune"]["species"]
    present = set(adata.var_names)
    sets = {}
    for name in default_score_sets(library, species):
        genes = [g for g in library.genes(name, species) if g in present]
        if genes:
            sets[name] = genes
    return sets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("h5ad")
    parser.add_argument("--json", required=True, help="where to write step times and peak RSS")
    parser.add_argument("--no-doublets", action="store_true", help="leave scrublet out")
    args = parser.parse_args(argv)
    # scanpy's rank_genes_groups warns once per cluster about a fragmented DataFrame
    warnings.filterwarnings("ignore", category=pd.errors.PerformanceWarning)
    timer = StepTimer()
    adata = run(args.h5ad, timer, doublets=not args.no_doublets)
    timer.write(args.json, cells_out=adata.n_obs, clusters=int(adata.obs["leiden"].nunique()))


if __name__ == "__main__":
    main()
