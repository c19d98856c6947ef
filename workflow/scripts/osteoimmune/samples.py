"""Split a dataset into one AnnData per sample (for per-sample QC jobs) and join them again."""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import pandas as pd

from osteoimmune.errors import QCError


def sample_slugs(samples: pd.Series) -> dict[str, str]:
    """A file-name-safe, unique slug for every sample name, in order of first appearance."""
    slugs: dict[str, str] = {}
    for sample in pd.unique(samples.astype(str)):
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", sample).strip("._") or "sample"
        slug, n = base, 1
        while slug in slugs.values():
            n += 1
            slug = f"{base}_{n}"
        slugs[sample] = slug
    return slugs


def split_by_sample(adata: ad.AnnData, out_dir: Path) -> pd.DataFrame:
    """Write each sample's cells to ``out_dir/<slug>.h5ad``; return the sample table.

    The table (sample, slug, cells) is also written as ``out_dir/samples.tsv``.
    """
    if adata.n_obs == 0:
        msg = f"Dataset {adata.uns['osteoimmune']['dataset']}: no cells to split into samples."
        raise QCError(msg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = adata.obs["sample"].astype(str)
    rows = []
    for sample, slug in sample_slugs(samples).items():
        mask = (samples == sample).to_numpy()
        adata[mask].copy().write_h5ad(out_dir / f"{slug}.h5ad")
        rows.append((sample, slug, int(mask.sum())))
    table = pd.DataFrame(rows, columns=["sample", "slug", "cells"])
    table.to_csv(out_dir / "samples.tsv", sep="\t", index=False)
    return table


def concat_samples(parts: list[ad.AnnData]) -> ad.AnnData:
    """Join per-sample AnnData objects (same genes) back into one, in the order given.

    ``obs['sample']`` stays categorical in that order; ``uns`` comes from the first part,
    ``var`` keeps the columns equal across parts.
    """
    if len(parts) == 1:
        return parts[0]
    order = [str(p.obs["sample"].iloc[0]) for p in parts if p.n_obs]
    joined = ad.concat(parts, merge="same", uns_merge="first")
    for column, dtype in parts[0].obs.dtypes.items():
        if isinstance(dtype, pd.CategoricalDtype) and column in joined.obs:
            joined.obs[column] = pd.Categorical(joined.obs[column])
    joined.obs["sample"] = joined.obs["sample"].cat.reorder_categories(
        order + [c for c in joined.obs["sample"].cat.categories if c not in order]
    )
    return joined
