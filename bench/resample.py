"""Make a larger benchmark matrix by resampling real cells with Poisson noise.

Cells of a raw-count registry dataset (read through the pipeline's own reader from the shared
mirror) are drawn with replacement to ``n_cells``, and each drawn profile gets Poisson noise
(counts ~ Poisson(original counts)) so that duplicates differ. The result is labelled as
resampled in ``uns['osteoimmune']['resampled']`` and in its file name. It is not new biology:
only a matrix of realistic size, sparsity and composition for timing.

    .venv/bin/python bench/resample.py --cells 20000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

from osteoimmune.readers import read_dataset  # noqa: E402
from osteoimmune.registry import load_registry  # noqa: E402

MIRROR = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "out"
DEFAULT_DATASET = "luecken2021_bmmc_cite"


def read_source(dataset: str, *, mirror: Path = MIRROR) -> ad.AnnData:
    """Read a registry dataset of raw counts from the mirror with the pipeline's reader."""
    entry = load_registry(ROOT / "config" / "datasets.yaml")[dataset]
    if entry["values"] != "counts":
        msg = f"Dataset {dataset} holds {entry['values']}, not raw counts; pick a counts dataset."
        raise ValueError(msg)
    paths = {f["filename"]: mirror / dataset / f["filename"] for f in entry["files"]}
    return read_dataset(entry, paths, dataset=dataset)


def resample(
    source: ad.AnnData, *, n_cells: int, seed: int, cells_per_sample: int | None = None
) -> ad.AnnData:
    """Draw ``n_cells`` cells with replacement; counts ~ Poisson(original counts).

    One pseudo-sample per source donor (``sample = resampled_<donor>``), or with
    ``cells_per_sample`` each donor's cells split in turn into pseudo-samples of about that
    many cells (``resampled_<donor>_<k>``), like the 10x channels of a real large dataset;
    CSR float32 counts in ``X`` and ``layers['counts']``, as the reader gives.
    """
    rng = np.random.default_rng(seed)
    cells = np.sort(rng.choice(source.n_obs, size=n_cells, replace=True))
    counts = sparse.csr_matrix(source.layers["counts"][cells], dtype=np.float32)
    counts.data = rng.poisson(counts.data).astype(np.float32)
    counts.eliminate_zeros()
    obs = source.obs.iloc[cells].copy()
    obs["source_cell"] = obs.index.to_numpy()
    obs.index = pd.Index([f"resampled_{i}" for i in range(n_cells)])
    donor = obs["donor"].astype(str)
    sample = "resampled_" + donor
    if cells_per_sample:
        for name in donor.unique():
            mine = np.flatnonzero((donor == name).to_numpy())
            parts = max(1, round(len(mine) / cells_per_sample))
            channel = np.arange(len(mine)) % parts + 1  # cells are sorted: deal them out
            sample.iloc[mine] = [f"resampled_{name}_{k}" for k in channel]
    obs["sample"] = pd.Categorical(sample)
    obs["donor"] = pd.Categorical(donor)
    adata = ad.AnnData(X=counts, obs=obs, var=source.var.copy())
    adata.layers["counts"] = counts.copy()
    meta = dict(source.uns["osteoimmune"])
    meta["dataset"] = f"{meta['dataset']}_resampled_{n_cells}"
    meta["resampled"] = {
        "note": "RESAMPLED benchmark matrix, not real cells: source cells drawn with "
        "replacement, counts ~ Poisson(original counts)",
        "source_dataset": source.uns["osteoimmune"]["dataset"],
        "source_cells": int(source.n_obs),
        "n_cells": int(n_cells),
        "seed": int(seed),
        "cells_per_sample": int(cells_per_sample or 0),
    }
    adata.uns["osteoimmune"] = meta
    return adata


def out_path(
    n_cells: int, dataset: str = DEFAULT_DATASET, cells_per_sample: int | None = None
) -> Path:
    """Where the resampled matrix of ``n_cells`` cells from ``dataset`` is written."""
    tag = "" if dataset == DEFAULT_DATASET else f"{dataset}_"
    split = f"_per{cells_per_sample}" if cells_per_sample else ""
    return OUT / f"resampled_{tag}{n_cells}{split}.h5ad"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cells-per-sample",
        type=int,
        default=None,
        help="split each donor's cells into pseudo-samples (channels) of about this size",
    )
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    out = out_path(args.cells, args.dataset, args.cells_per_sample)
    adata = resample(
        read_source(args.dataset),
        n_cells=args.cells,
        seed=args.seed,
        cells_per_sample=args.cells_per_sample,
    )
    adata.write_h5ad(out)
    print(f"wrote {out}: {adata.n_obs} resampled cells x {adata.n_vars} genes")
    return out


if __name__ == "__main__":
    main()
