"""Test helpers: write AnnData counts as 10x Genomics files and GEO ``_RAW.tar`` archives.

Cell Ranger layouts, as public data sets publish them:

- v3 HDF5 (``filtered_feature_bc_matrix.h5``): group ``matrix`` with the genes x cells CSC
  matrix (``data``, ``indices``, ``indptr``, ``shape``), ``barcodes`` and ``features``;
- v3 folder: gzipped ``matrix.mtx``, ``barcodes.tsv`` and 3-column ``features.tsv``;
- v2 as GEO submitters upload it: the same, with a 2-column ``genes.tsv``, all gzipped.

Gene ids are ``var['gene_id']`` (or scanpy's ``var['gene_ids']``) when present, else the symbol.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
from scipy import sparse

# A fixed time stamp keeps archives byte-identical between runs.
MTIME = 1_600_000_000


def _counts(adata: ad.AnnData) -> sparse.csr_matrix:
    """Cells x genes CSR int32 of ``adata.X``, which must hold non-negative integers."""
    matrix = sparse.csr_matrix(adata.X)
    data = matrix.data
    if np.any(data < 0) or np.any(data != np.round(data)):
        msg = "10x files hold raw counts: adata.X must be non-negative integers."
        raise ValueError(msg)
    matrix = sparse.csr_matrix(
        (data.astype(np.int32), matrix.indices, matrix.indptr), shape=matrix.shape
    )
    matrix.sort_indices()
    return matrix


def _gene_ids(adata: ad.AnnData) -> np.ndarray:
    for column in ("gene_id", "gene_ids"):
        if column in adata.var.columns:
            return adata.var[column].astype(str).to_numpy()
    return adata.var_names.astype(str).to_numpy()


def write_10x_h5(adata: ad.AnnData, path: Path, *, genome: str = "GRCh38") -> Path:
    """Write raw counts (cells x genes) as a Cell Ranger v3 HDF5 file; return its path."""
    # A CSR of cells x genes is, array for array, the CSC of genes x cells that Cell Ranger keeps.
    matrix = _counts(adata)
    n_genes = adata.n_vars
    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix")
        group.create_dataset("data", data=matrix.data, compression="gzip")
        group.create_dataset("indices", data=matrix.indices.astype(np.int64), compression="gzip")
        group.create_dataset("indptr", data=matrix.indptr.astype(np.int64))
        group.create_dataset("shape", data=np.array([n_genes, adata.n_obs], dtype=np.int32))
        group.create_dataset("barcodes", data=adata.obs_names.astype(str).to_numpy().astype("S"))
        features = group.create_group("features")
        features.create_dataset("id", data=_gene_ids(adata).astype("S"))
        features.create_dataset("name", data=adata.var_names.astype(str).to_numpy().astype("S"))
        features.create_dataset("feature_type", data=np.array([b"Gene Expression"] * n_genes))
        features.create_dataset("genome", data=np.array([genome.encode()] * n_genes))
        features.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
    return Path(path)


def write_10x_mtx(
    adata: ad.AnnData, folder: Path, *, prefix: str = "", legacy: bool = False
) -> list[Path]:
    """Write raw counts as a gzipped 10x triplet in ``folder``; return the three paths.

    ``legacy=True`` writes Cell Ranger v2's 2-column ``genes.tsv.gz`` instead of the v3
    ``features.tsv.gz`` (id, symbol, ``Gene Expression``), as GEO submitters publish it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    matrix = _counts(adata).tocoo()
    paths = [folder / f"{prefix}{name}" for name in ("matrix.mtx.gz", "barcodes.tsv.gz")]
    paths.append(folder / f"{prefix}{'genes' if legacy else 'features'}.tsv.gz")
    with gzip.open(paths[0], "wt") as out:
        out.write("%%MatrixMarket matrix coordinate integer general\n%\n")
        out.write(f"{adata.n_vars} {adata.n_obs} {matrix.nnz}\n")
        # Genes x cells, 1-based, ordered by cell as Cell Ranger writes it.
        order = np.lexsort((matrix.col, matrix.row))
        rows = np.column_stack([matrix.col[order] + 1, matrix.row[order] + 1, matrix.data[order]])
        np.savetxt(out, rows, fmt="%d")
    with gzip.open(paths[1], "wt") as out:
        out.writelines(f"{cell}\n" for cell in adata.obs_names.astype(str))
    columns = [_gene_ids(adata), adata.var_names.astype(str).to_numpy()]
    if not legacy:
        columns.append(np.full(adata.n_vars, "Gene Expression"))
    with gzip.open(paths[2], "wt") as out:
        out.writelines("\t".join(fields) + "\n" for fields in zip(*columns, strict=True))
    return paths


def tar_member(
    name: str, *, data: bytes = b"", tartype: bytes = tarfile.REGTYPE, linkname: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    """A member for ``write_geo_raw_tar(extra_members=...)``: any name, type and link target."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime, info.mode = tartype, linkname, MTIME, 0o644
    if tartype in tarfile.REGULAR_TYPES:
        info.size = len(data)
        return info, data
    return info, None


def write_geo_raw_tar(
    path: Path,
    samples: dict[str, ad.AnnData],
    *,
    kind: str = "mtx",
    extra_members: Iterable[tuple[tarfile.TarInfo, bytes | None]] = (),
) -> Path:
    """Write a GEO series' ``GSE..._RAW.tar``: a plain tar of per-sample files at the top level.

    ``samples`` maps a member stem (``'GSM100001_S1'``) to its counts; ``kind`` is ``'mtx'``
    (v3 triplet), ``'mtx_legacy'`` (v2 ``genes.tsv.gz``) or ``'h5'``, giving members like
    ``GSM100001_S1_matrix.mtx.gz`` or ``GSM100001_S1_filtered_feature_bc_matrix.h5``.
    ``extra_members`` (from :func:`tar_member`) are added after the samples, e.g. unsafe ones.
    A path ending ``.gz`` gives a gzipped tar.
    """
    if kind not in ("mtx", "mtx_legacy", "h5"):
        msg = f"kind must be 'mtx', 'mtx_legacy' or 'h5', not {kind!r}"
        raise ValueError(msg)
    with tempfile.TemporaryDirectory() as tmp:
        files: list[Path] = []
        for stem, adata in samples.items():
            if kind == "h5":
                h5 = Path(tmp) / f"{stem}_filtered_feature_bc_matrix.h5"
                files.append(write_10x_h5(adata, h5))
            else:
                legacy = kind == "mtx_legacy"
                files += write_10x_mtx(adata, Path(tmp), prefix=f"{stem}_", legacy=legacy)
        mode = "w:gz" if str(path).endswith(".gz") else "w"
        with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tar:
            for file in files:
                data = file.read_bytes()
                info, _ = tar_member(file.name, data=data)
                tar.addfile(info, io.BytesIO(data))
            for info, data in extra_members:
                tar.addfile(info, None if data is None else io.BytesIO(data))
    return Path(path)
