"""Split a dataset into one AnnData per sample (for per-sample QC jobs) and join them again."""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from scipy import sparse

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


def cells_of(adata: ad.AnnData, idx: np.ndarray) -> ad.AnnData:
    """``adata[idx]``, or ``adata`` itself when ``idx`` is every cell in order.

    A sample that is the whole dataset is then worked on without a copy: anndata's subset
    of all cells would double the memory of a large sample.
    """
    if len(idx) == adata.n_obs and np.array_equal(idx, np.arange(adata.n_obs)):
        return adata
    return adata[idx]


def capped_cells(
    labels: np.ndarray,
    groups,
    *,
    max_cells: int | None,
    seed: int,
    within: np.ndarray | None = None,
) -> np.ndarray:
    """Rows of the cells of ``groups``, at most ``max_cells`` of each, drawn with ``seed``.

    Groups are drawn in the order given (the draws depend on it); a group of at most
    ``max_cells`` cells (or any group when ``max_cells`` is None) keeps every cell. Only cells
    in ``within`` (a boolean mask) count. Returns the rows sorted.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for group in groups:
        mine = labels == group
        mine = np.flatnonzero(mine if within is None else mine & within)
        if max_cells is not None and len(mine) > max_cells:
            mine = rng.choice(mine, size=max_cells, replace=False)
        rows.append(mine)
    return np.sort(np.concatenate(rows)) if rows else np.array([], dtype=np.int64)


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
        write_counts_once(cells_of(adata, np.flatnonzero(mask)), out_dir / f"{slug}.h5ad")
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


def share_counts(adata: ad.AnnData) -> bool:
    """Hold one copy of the counts when ``X`` and ``layers['counts']`` are equal (QC stage).

    The reader stores the raw counts twice (``X`` and ``layers['counts']``) and an h5ad file
    read back holds two copies; between reading and normalisation they are the same values.
    When they are equal (same sparse structure and values), the layer becomes the very object
    ``X`` is, halving the memory of a QC job; nothing in QC changes ``X`` in place. Returns
    whether they are shared; written back to h5ad, both are stored as before.
    """
    counts, x = adata.layers.get("counts"), adata.X
    if counts is None or counts is x:
        return counts is x
    same = (
        sparse.issparse(x)
        and sparse.issparse(counts)
        and x.format == counts.format
        and x.shape == counts.shape
        and x.dtype == counts.dtype
        and np.array_equal(x.indptr, counts.indptr)
        and np.array_equal(x.indices, counts.indices)
        and np.array_equal(x.data, counts.data)
    )
    if same:
        adata.layers["counts"] = x
    return same


COUNTS_IN_X = "counts_in_X"


def write_h5ad(adata: ad.AnnData, path, *, compression: str | None = None) -> None:
    """Write ``adata`` to h5ad; uncompressed, its sparse matrices are stored contiguously.

    anndata stores a sparse matrix's arrays resizable, hence in chunks of ~100 KB, also
    uncompressed; in one contiguous block they are written and read back several times
    faster (100,000 cells, X and counts of 2.9 GB: read 0.8 s from the page cache instead of
    6-13 s with lzf; bench/README.md). The file is a standard h5ad either way. ``compression``
    is h5py's (``lzf``, ``gzip``) or None.
    """
    if compression is None:
        ad.io.write_h5ad(path, adata, dataset_kwargs={"maxshape": None})
    else:
        adata.write_h5ad(path, compression=compression)


def annotations(adata: ad.AnnData) -> ad.AnnData:
    """``adata``'s obs, var, uns and obsm, without its matrices (``X``, layers) and graph.

    What a job adds to the cells (cell types, scores, states) written on its own: a small file
    that the jobs reading only annotations read in place of the whole data (:func:`read_parts`
    with ``x=False``), and that :func:`with_annotations` puts back on the matrices.
    """
    return ad.AnnData(obs=adata.obs, var=adata.var, uns=adata.uns, obsm=dict(adata.obsm))


def with_annotations(adata: ad.AnnData, annotated: ad.AnnData) -> ad.AnnData:
    """``adata``'s matrices (``X``, layers, obsp, varm) with ``annotated``'s obs, var, uns, obsm.

    The inverse of :func:`annotations`: the cells and genes must be the same, in the same order.
    """
    for axis in ("obs", "var"):
        mine, theirs = getattr(adata, f"{axis}_names"), getattr(annotated, f"{axis}_names")
        if not mine.equals(theirs):
            msg = (
                f"The annotations are of other {axis} names than the data ({len(theirs)} vs "
                f"{len(mine)}); rerun the workflow so that both come from the same run."
            )
            raise QCError(msg)
    return ad.AnnData(
        X=adata.X,
        layers=dict(adata.layers),
        obsp=dict(adata.obsp),
        varm=dict(adata.varm),
        obs=annotated.obs,
        var=annotated.var,
        uns=annotated.uns,
        obsm=dict(annotated.obsm),
    )


def write_counts_once(adata: ad.AnnData, path, *, compression: str | None = None) -> bool:
    """Write ``adata`` to h5ad with its raw counts once when ``X`` equals ``layers['counts']``.

    Before normalisation the reader's ``X`` and ``layers['counts']`` hold the same counts;
    written as they are, a file holds (and every later job reads) them twice. Here the layer
    is left out of the file and ``uns['osteoimmune']['counts_in_X']`` says so;
    :func:`read_counts_once` puts it back as the very object ``X`` is. ``adata`` itself is
    left as it was. Returns whether the counts were written once.
    """
    if not share_counts(adata):
        write_h5ad(adata, path, compression=compression)
        return False
    counts = adata.layers.pop("counts")
    meta = adata.uns.setdefault("osteoimmune", {})
    meta[COUNTS_IN_X] = True
    try:
        write_h5ad(adata, path, compression=compression)
    finally:
        adata.layers["counts"] = counts
        del meta[COUNTS_IN_X]
    return True


def read_counts_once(path) -> ad.AnnData:
    """Read an h5ad of :func:`write_counts_once`: ``layers['counts']`` is ``X`` again."""
    adata = ad.read_h5ad(path)
    if adata.uns.get("osteoimmune", {}).pop(COUNTS_IN_X, False):
        adata.layers["counts"] = adata.X
    return adata


def read_parts(path, *, x: bool = True, layers: tuple[str, ...] = ()) -> ad.AnnData:
    """Read what a job uses of an h5ad: obs, var, uns, obsm, and ``X`` and/or some layers.

    A job that tests ``X`` (markers, ligand-receptor) needs no raw counts, and one that sums
    raw counts (pseudobulk) needs no ``X``: each matrix left out is one fewer to read and
    decompress (~10 s and ~1.5 GB for 100,000 cells of a full transcriptome). The graph
    (``obsp``) and ``varm`` are not read. With ``x=False`` and no layers only the annotations
    are read, as a report or a per-donor summary needs: ~1 s for 100,000 cells, where
    ``read_h5ad(backed="r")``, which still reads the layers and the graph, takes ~9 s.
    """
    from anndata.io import read_elem

    with h5py.File(path, "r") as handle:
        parts = {
            key: read_elem(handle[key]) for key in ("obs", "var", "uns", "obsm") if key in handle
        }
        matrix = read_elem(handle["X"]) if x and "X" in handle else None
        stored = handle["layers"] if "layers" in handle else {}
        chosen = {name: read_elem(stored[name]) for name in layers if name in stored}
    return ad.AnnData(X=matrix, layers=chosen, **parts)


def read_annotated(
    matrices,
    annotated,
    *,
    x: bool = True,
    layers: tuple[str, ...] = (),
    everything: bool = False,
) -> ad.AnnData:
    """The annotated cells: ``matrices``' ``X`` and/or layers under ``annotated``'s annotations.

    annotate_cells and score_signatures write their annotations alone (:func:`annotations`);
    the matrices stay in the clustered file, written once. ``x`` and ``layers`` as in
    :func:`read_parts`; ``everything`` reads all of ``matrices`` (also the graph and ``varm``),
    as the user's h5ad holds them. Files of different runs (other cells or genes) are an
    error naming both.
    """
    data = ad.read_h5ad(matrices) if everything else read_parts(matrices, x=x, layers=layers)
    try:
        return with_annotations(data, read_parts(annotated, x=False))
    except QCError as err:
        msg = f"{annotated} does not fit {matrices}: {err}"
        raise QCError(msg) from err


def apply_design(adata: ad.AnnData, design: list[dict], *, covariates: dict[str, str]) -> None:
    """Give every cell its sample's donor, condition and covariates, from a samplesheet.

    Parameters
    ----------
    adata
        Cells with a ``sample`` obs column (the joined samples of a study).
    design
        One dict per sample: ``sample``, ``donor``, ``condition`` and a value per covariate
        (None when unknown), in the samplesheet's order.
    covariates
        Covariate name -> ``"numeric"`` (obs column of floats, NaN when unknown) or
        ``"categorical"`` (categories in the samplesheet's order).

    Sets ``uns['osteoimmune']['covariates']`` to the covariate names.
    """
    table = pd.DataFrame(design).set_index("sample")
    samples = adata.obs["sample"].astype(str)
    missing = sorted(set(samples) - set(table.index))
    if missing:
        msg = (
            f"Dataset {adata.uns['osteoimmune']['dataset']}: samples {missing} are not in the "
            "samplesheet's design; run the workflow again so that the samples are re-read."
        )
        raise QCError(msg)
    for column in ("donor", "condition", *covariates):
        values = table[column].reindex(samples.to_numpy()).to_numpy()
        if covariates.get(column) == "numeric":
            adata.obs[column] = pd.to_numeric(values).astype(np.float64)
        else:
            order = list(dict.fromkeys(v for v in table[column] if v is not None))
            adata.obs[column] = pd.Categorical(values, categories=order)
    adata.uns["osteoimmune"]["covariates"] = list(covariates)


def design_table(obs: pd.DataFrame, kept: pd.Index, *, covariates: list[str]) -> pd.DataFrame:
    """Samples, their donor, condition and covariates, cells read and cells after QC.

    One row per sample, donor and condition present (a dataset whose condition varies
    within a sample has a row per condition), in the order of the samples.
    """
    keys = ["sample", "donor", "condition"]
    frame = obs[keys + covariates].copy()
    frame["cells_read"] = 1
    frame["cells_after_qc"] = obs.index.isin(kept).astype(int)
    agg = {c: "first" for c in covariates} | {"cells_read": "sum", "cells_after_qc": "sum"}
    table = frame.groupby(keys, observed=True, sort=False).agg(agg).reset_index()
    return table[keys + covariates + ["cells_read", "cells_after_qc"]]


def comparison_unit(obs: pd.DataFrame) -> str:
    """The obs column whose values are the replicates of a comparison across conditions.

    ``sample`` when every sample holds cells of one donor and one condition; otherwise (a
    sample spanning conditions, e.g. time points of one culture) a column
    ``sample_condition`` (``<sample>_<condition>``, one value per sample and condition and
    donor) is added to ``obs`` and its name returned.
    """
    per_sample = obs.groupby("sample", observed=True)[["donor", "condition"]].nunique()
    if (per_sample <= 1).all(axis=None):
        return "sample"
    parts = [obs[key].astype(str) for key in ("sample", "condition", "donor")]
    unit = parts[0] + "_" + parts[1]
    if (per_sample["donor"] > 1).any():
        unit = unit + "_" + parts[2]
    obs["sample_condition"] = pd.Categorical(unit, categories=list(dict.fromkeys(unit)))
    return "sample_condition"
