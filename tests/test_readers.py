"""Tests of osteoimmune.readers: every format on small synthetic files, bad input, real data."""

from __future__ import annotations

import gzip
import logging
import struct
import tarfile
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import tenx
import xarray as xr
from conftest import MANIFEST_SHAPES, REPO
from scipy import sparse

from osteoimmune.errors import ReaderError
from osteoimmune.readers import (
    check_species_symbols,
    labels_from_r,
    matrix_from_r,
    read_dataset,
    read_study_sample,
)
from osteoimmune.registry import load_registry, select_datasets
from osteoimmune.samplesheet import parse_samples
from osteoimmune.values import DETECTED

DATASET = "synthetic_ds"
N_CELLS, N_GENES = 20, 30


# --------------------------------------------------------------------------- synthetic data


@pytest.fixture
def counts() -> np.ndarray:
    """20 cells x 30 genes of Poisson counts; every cell and gene has a non-zero value."""
    values = np.random.default_rng(0).poisson(1.5, size=(N_CELLS, N_GENES)).astype(np.float64)
    values[np.arange(N_CELLS), np.arange(N_CELLS) % N_GENES] += 1
    return values


CELLS = [f"{'ctrl' if i < 8 else 'stim'}_C{i:02d}" for i in range(N_CELLS)]
GENES = [f"Gene{i}" for i in range(N_GENES)]  # mouse-like title case
HUMAN_GENES = [g.upper() for g in GENES]


def make_entry(files: list[dict], **fields) -> dict:
    entry = {
        "species": "mouse",
        "values": "counts",
        "gene_symbol_case": "as_is",
        "files": files,
        "metadata": {
            "sample": {"constant": "s1"},
            "donor": {"constant": "d1"},
            "condition": {"cell_name": "^(ctrl|stim)_"},
        },
        "author_label": None,
    }
    entry.update(fields)
    return entry


def read_one(entry: dict, folder: Path):
    paths = {f["filename"]: folder / f["filename"] for f in entry["files"]}
    return read_dataset(entry, paths, dataset=DATASET)


def assert_standard(adata, expected: np.ndarray, *, genes=GENES, counts_layer=True) -> None:
    assert adata.shape == expected.shape
    assert isinstance(adata.X, sparse.csr_matrix)
    assert adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.toarray(), expected.astype(np.float32))
    if counts_layer:
        assert isinstance(adata.layers["counts"], sparse.csr_matrix)
        assert adata.layers["counts"] is not adata.X
        assert (adata.layers["counts"] != adata.X).nnz == 0
    else:
        assert "counts" not in adata.layers
    assert list(adata.obs_names) == CELLS
    assert list(adata.var_names) == list(genes)
    assert list(adata.var["original_symbol"]) == list(genes)
    for key in ("dataset", "sample", "donor", "condition"):
        assert isinstance(adata.obs[key].dtype, pd.CategoricalDtype)
    assert set(adata.obs["dataset"]) == {DATASET}
    assert list(adata.obs["condition"]) == [c.split("_")[0] for c in CELLS]


def write_h5ad(path: Path, counts: np.ndarray, *, genes=GENES) -> None:
    obs = pd.DataFrame(
        {"batch": ["b1"] * 10 + ["b2"] * 10, "cell_type": ["T", "B"] * 10}, index=CELLS
    )
    var = pd.DataFrame({"gene_ids": [f"ENSMUSG{i:011d}" for i in range(N_GENES)]}, index=genes)
    normalised = counts / counts.sum(axis=1, keepdims=True) * 1e4
    adata = ad.AnnData(X=sparse.csc_matrix(normalised), obs=obs, var=var)
    adata.layers["counts"] = sparse.csc_matrix(counts)
    adata.write_h5ad(path)


def write_mtx_folder(folder: Path, counts: np.ndarray, *, legacy: bool = False) -> None:
    folder.mkdir(parents=True)
    # An antibody feature is appended to check that only gene expression is kept.
    matrix = np.hstack([counts, np.full((N_CELLS, 1), 7.0)]).T  # 10x stores genes x cells
    ids = [f"ENSMUSG{i:011d}" for i in range(N_GENES)] + ["ADT_CD3"]
    kinds = ["Gene Expression"] * N_GENES + ["Antibody Capture"]
    features = pd.DataFrame({"id": ids, "name": [*GENES, "CD3"], "type": kinds})
    opener, suffix = (open, "") if legacy else (gzip.open, ".gz")
    with opener(folder / f"matrix.mtx{suffix}", "wb") as handle:
        scipy.io.mmwrite(handle, sparse.coo_matrix(matrix[:N_GENES] if legacy else matrix))
    with opener(folder / f"{'genes' if legacy else 'features'}.tsv{suffix}", "wt") as handle:
        table = features.iloc[:N_GENES, :2] if legacy else features
        table.to_csv(handle, sep="\t", header=False, index=False)
    with opener(folder / f"barcodes.tsv{suffix}", "wt") as handle:
        handle.write("\n".join(CELLS) + "\n")


def write_10x_h5(path: Path, counts: np.ndarray) -> None:
    matrix = sparse.csc_matrix(counts.T.astype(np.int32))  # genes x cells, CSC by cell
    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix")
        group["data"], group["indices"] = matrix.data, matrix.indices
        group["indptr"] = matrix.indptr
        group["shape"] = np.array(matrix.shape, dtype=np.int32)
        group["barcodes"] = np.array(CELLS, dtype="S")
        features = group.create_group("features")
        features["id"] = np.array([f"ENSMUSG{i:011d}" for i in range(N_GENES)], dtype="S")
        features["name"] = np.array(GENES, dtype="S")
        features["feature_type"] = np.array(["Gene Expression"] * N_GENES, dtype="S")
        features["genome"] = np.array(["mm10"] * N_GENES, dtype="S")


# --------------------------------------------------------------------------- a minimal R writer
# rdata reads R files but cannot write them, so the tests serialise the few R types they need
# (XDR format 2, as R's save() and saveRDS() write it).


def _int(*values: int) -> bytes:
    return struct.pack(f">{len(values)}i", *values)


def _char(text: str | None) -> bytes:
    if text is None:
        return _int(9, -1)
    raw = text.encode()
    return _int(9 | (64 << 12), len(raw)) + raw  # CHARSXP, ASCII


def _attrs(pairs: dict) -> bytes:
    out = b""
    for name, value in pairs.items():
        out += _int(2 | (1 << 10)) + _int(1) + _char(name) + value  # LISTSXP with tag
    return out + _int(254)  # NILVALUE


def _flags(kind: int, attrs: dict | None, obj: bool = False) -> bytes:
    return _int(kind | (obj << 8) | (bool(attrs) << 9))


def r_str(values, attrs: dict | None = None) -> bytes:
    body = _int(len(values)) + b"".join(_char(v) for v in values)
    return _flags(16, attrs) + body + (_attrs(attrs) if attrs else b"")


def r_int(values, attrs: dict | None = None, obj: bool = False) -> bytes:
    body = _int(len(values), *[int(v) for v in values])
    return _flags(13, attrs, obj) + body + (_attrs(attrs) if attrs else b"")


def r_real(values, attrs: dict | None = None) -> bytes:
    body = _int(len(values)) + struct.pack(f">{len(values)}d", *values)
    return _flags(14, attrs) + body + (_attrs(attrs) if attrs else b"")


def r_list(items) -> bytes:
    return _int(19) + _int(len(items)) + b"".join(items)


def r_factor(labels, names=None) -> bytes:
    levels = sorted(set(labels))
    attrs = {"levels": r_str(levels), "class": r_str(["factor"])}
    if names is not None:
        attrs["names"] = r_str(names)
    return r_int([levels.index(v) + 1 for v in labels], attrs, obj=True)


def r_dense(matrix: np.ndarray, rows, cols) -> bytes:
    attrs = {"dim": r_int(matrix.shape), "dimnames": r_list([r_str(rows), r_str(cols)])}
    return r_real(matrix.ravel(order="F").tolist(), attrs)


def r_dgcmatrix(matrix: np.ndarray, rows, cols) -> bytes:
    csc = sparse.csc_matrix(matrix)
    attrs = {
        "i": r_int(csc.indices),
        "p": r_int(csc.indptr),
        "Dim": r_int(csc.shape),
        "Dimnames": r_list([r_str(rows), r_str(cols)]),
        "x": r_real(csc.data.tolist()),
        "factors": r_list([]),
        "class": r_str(["dgCMatrix"]),
    }
    return _int(25 | (1 << 8) | (1 << 9)) + _attrs(attrs)  # S4SXP, object, attributes


_HEADER = b"X\n" + _int(2, 0x040300, 0x020300)


def write_rda(path: Path, objects: dict[str, bytes]) -> None:
    body = b"".join(_int(2 | (1 << 10)) + _int(1) + _char(n) + o for n, o in objects.items())
    path.write_bytes(gzip.compress(b"RDX2\n" + _HEADER + body + _int(254)))


def write_rds(path: Path, obj: bytes) -> None:
    path.write_bytes(gzip.compress(_HEADER + obj))


# --------------------------------------------------------------------------- formats


def test_h5ad_layer_counts(tmp_path, counts):
    write_h5ad(tmp_path / "a.h5ad", counts)
    entry = make_entry(
        [{"role": "counts", "format": "h5ad", "filename": "a.h5ad", "layer": "counts"}],
        metadata={
            "sample": {"column": "batch"},
            "donor": {"constant": 7},
            "condition": {"cell_name": "^(ctrl|stim)_"},
        },
        author_label={"column": "cell_type"},
    )
    adata = read_one(entry, tmp_path)
    assert_standard(adata, counts)
    assert list(adata.obs["sample"]) == ["b1"] * 10 + ["b2"] * 10
    assert set(adata.obs["donor"]) == {"7"}
    assert list(adata.obs["author_cell_type"]) == ["T", "B"] * 10
    assert adata.var["gene_id"].iloc[3] == "ENSMUSG00000000003"
    note = adata.uns["osteoimmune"].pop("value_type_note")
    assert adata.uns["osteoimmune"] == {
        "dataset": DATASET,
        "species": "mouse",
        "value_type": "counts",
        "value_type_detected": "counts",
        "gene_symbol_case": "as_is",
        "source_files": ["a.h5ad"],
        "covariates": [],
    }
    assert note.startswith("input raw counts; checked on the values: max ")
    assert "all integers, per-cell totals vary" in note and "expm1" not in note


def test_h5ad_raw_x_and_obs_covariates(tmp_path, counts):
    # CELLxGENE-style: normalised X, raw counts in raw.X, donor metadata in obs
    normalised = counts / counts.sum(axis=1, keepdims=True) * 1e4
    obs = pd.DataFrame(
        {"donor_id": ["d1"] * 10 + ["d2"] * 10, "age": [30.0] * 10 + [61.0] * 10,
         "sex": ["F"] * 10 + ["M"] * 10},
        index=CELLS,
    )  # fmt: skip
    source = ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=GENES))
    source.raw = source
    source.X = sparse.csr_matrix(normalised)
    source.write_h5ad(tmp_path / "a.h5ad")
    entry = make_entry(
        [{"role": "counts", "format": "h5ad", "filename": "a.h5ad", "layer": "raw.X"}],
        metadata={
            "sample": {"column": "donor_id"},
            "donor": {"column": "donor_id"},
            "condition": {"cell_name": "^(ctrl|stim)_"},
            "covariates": ["age", "sex"],
        },
    )
    adata = read_one(entry, tmp_path)
    assert_standard(adata, counts)
    assert adata.obs["age"].dtype == np.float64 and list(adata.obs["age"].unique()) == [30, 61]
    assert isinstance(adata.obs["sex"].dtype, pd.CategoricalDtype)
    assert adata.uns["osteoimmune"]["covariates"] == ["age", "sex"]
    entry["files"][0]["layer"] = "raw.X"
    del source.raw
    source.write_h5ad(tmp_path / "a.h5ad")
    with pytest.raises(ReaderError, match="`layer: raw.X` but the file has no raw.X"):
        read_one(entry, tmp_path)


def test_h5ad_x_normalized_has_no_counts_layer(tmp_path, counts):
    write_h5ad(tmp_path / "a.h5ad", counts)
    entry = make_entry(
        [{"role": "counts", "format": "h5ad", "filename": "a.h5ad"}], values="normalized"
    )
    adata = read_one(entry, tmp_path)
    expected = counts / counts.sum(axis=1, keepdims=True) * 1e4
    assert isinstance(adata.X, sparse.csr_matrix)
    np.testing.assert_allclose(adata.X.toarray(), expected, rtol=1e-6)
    assert "counts" not in adata.layers
    assert adata.uns["osteoimmune"]["value_type"] == "normalized"
    assert adata.uns["osteoimmune"]["value_type_detected"] == "normalized"
    note = adata.uns["osteoimmune"]["value_type_note"]
    assert note.startswith("input size-normalised by the authors, not log-transformed")
    assert "per-cell totals vary < 0.1% (CV)" in note


def write_log_h5ad(path: Path, counts: np.ndarray) -> np.ndarray:
    """log1p CP10k (scanpy's normalize_total + log1p) in X; returns the values written."""
    values = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4).astype(np.float32)
    obs = pd.DataFrame(index=CELLS)
    ad.AnnData(X=sparse.csr_matrix(values), obs=obs, var=pd.DataFrame(index=GENES)).write_h5ad(path)
    return values


def test_log_normalized_input_is_read_as_is_and_its_type_recorded(tmp_path, counts):
    values = write_log_h5ad(tmp_path / "log.h5ad", counts)
    spec = {"role": "counts", "format": "h5ad", "filename": "log.h5ad"}
    adata = read_one(make_entry([spec], values="log_normalized"), tmp_path)
    assert_standard(adata, values, counts_layer=False)  # X equals the input, bit for bit
    meta = adata.uns["osteoimmune"]
    assert meta["value_type"] == meta["value_type_detected"] == "log_normalized"
    assert meta["value_type_note"].startswith(
        "input log-normalised by the authors (log1p of size-normalised values); used as is; "
        "checked on the values: max "
    )
    assert "per-cell totals of expm1(values) vary < 0.1% (CV)" in meta["value_type_note"]
    assert "log1p" not in adata.uns  # marked logged by normalisation, not by the reader


def test_study_sample_with_a_contradicted_type_names_sample_row_and_values(tmp_path, counts):
    write_log_h5ad(tmp_path / "a.h5ad", counts)
    row = {"sample": "a", "donor": "d", "condition": "c", "file": "a.h5ad", "format": "h5ad"}
    (sample,) = parse_samples([row], dataset="x", source="s.tsv", base=tmp_path)
    paths = {f["filename"]: f["path"] for f in sample["files"]}
    settings = {"species": "mouse", "values": "normalized", "author_label": None}
    with pytest.raises(
        ReaderError,
        match=r"Dataset 'x', sample 'a' \(samplesheet row 1\).*`values: normalized` but the "
        "values look log-transformed.*Set `values: log_normalized`",
    ):
        read_study_sample(sample, paths, dataset="x", settings=settings)
    adata = read_study_sample(
        sample, paths, dataset="x", settings={**settings, "values": "log_normalized"}
    )
    assert adata.uns["osteoimmune"]["value_type_detected"] == "log_normalized"
    assert "counts" not in adata.layers


def test_h5ad_protein_to_obsm(tmp_path, counts):
    write_h5ad(tmp_path / "rna.h5ad", counts)
    proteins = np.arange(N_CELLS * 3, dtype=float).reshape(N_CELLS, 3)
    order = np.arange(N_CELLS)[::-1]  # stored in another cell order: aligned by name
    mod2 = ad.AnnData(
        X=sparse.csr_matrix(proteins[order] * 0.5),
        obs=pd.DataFrame(index=np.array(CELLS)[order]),
        var=pd.DataFrame(index=["CD14", "CD16", "CD3"]),
    )
    mod2.layers["counts"] = sparse.csc_matrix(proteins[order])
    mod2.write_h5ad(tmp_path / "adt.h5ad")
    entry = make_entry(
        [
            {"role": "counts", "format": "h5ad", "filename": "rna.h5ad", "layer": "counts"},
            {"role": "protein", "format": "h5ad", "filename": "adt.h5ad", "layer": "counts"},
        ]
    )
    adata = read_one(entry, tmp_path)
    frame = adata.obsm["protein"]
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["CD14", "CD16", "CD3"]
    assert list(frame.index) == CELLS
    np.testing.assert_array_equal(frame.to_numpy(), proteins)
    assert adata.uns["osteoimmune"]["source_files"] == ["rna.h5ad", "adt.h5ad"]


@pytest.mark.parametrize("layout", ["folder", "tar.gz", "legacy"])
def test_10x_mtx(tmp_path, counts, layout):
    raw = tmp_path / "raw"
    write_mtx_folder(raw / "filtered_feature_bc_matrix", counts, legacy=layout == "legacy")
    filename = "filtered_feature_bc_matrix"
    if layout == "tar.gz":
        filename = "sample.tar.gz"
        with tarfile.open(raw / filename, "w:gz") as tar:
            tar.add(raw / "filtered_feature_bc_matrix", arcname="filtered_feature_bc_matrix")
    before = sorted(p.name for p in raw.rglob("*"))
    entry = make_entry([{"role": "counts", "format": "10x_mtx", "filename": filename}])
    adata = read_one(entry, raw)
    assert_standard(adata, counts)
    assert "CD3" not in adata.var_names  # antibody capture dropped
    assert adata.var["gene_id"].iloc[0] == "ENSMUSG00000000000"
    assert sorted(p.name for p in raw.rglob("*")) == before  # nothing extracted beside it


def test_10x_tar_with_a_member_outside_its_folder_is_refused(tmp_path, counts):
    raw = tmp_path / "raw"
    write_mtx_folder(raw / "filtered_feature_bc_matrix", counts)
    with tarfile.open(raw / "sample.tar.gz", "w:gz") as tar:
        tar.add(raw / "filtered_feature_bc_matrix", arcname="filtered_feature_bc_matrix")
        tar.add(raw / "filtered_feature_bc_matrix" / "barcodes.tsv.gz", arcname="../evil.tsv.gz")
    entry = make_entry([{"role": "counts", "format": "10x_mtx", "filename": "sample.tar.gz"}])
    with pytest.raises(ReaderError, match=r"'sample.tar.gz'.*member '../evil.tsv.gz'.*outside"):
        read_one(entry, raw)
    assert not (tmp_path / "evil.tsv.gz").exists()


def test_10x_h5(tmp_path, counts):
    write_10x_h5(tmp_path / "m.h5", counts)
    entry = make_entry([{"role": "counts", "format": "10x_h5", "filename": "m.h5"}])
    adata = read_one(entry, tmp_path)
    assert_standard(adata, counts)
    assert adata.var["gene_id"].iloc[1] == "ENSMUSG00000000001"


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
@pytest.mark.parametrize("orientation", ["genes_x_cells", "cells_x_genes"])
@pytest.mark.parametrize("gz", [False, True])
def test_dense_tables(tmp_path, counts, fmt, orientation, gz):
    table = pd.DataFrame(counts.astype(int), index=CELLS, columns=GENES)
    if orientation == "genes_x_cells":
        table = table.T
    filename = f"m.{fmt}" + (".gz" if gz else "")
    table.to_csv(tmp_path / filename, sep="," if fmt == "csv" else "\t")
    entry = make_entry(
        [{"role": "counts", "format": fmt, "filename": filename, "orientation": orientation}]
    )
    assert_standard(read_one(entry, tmp_path), counts)


def test_rda_dgcmatrix_with_named_factor(tmp_path, counts):
    labels = ["T", "B", "NK", "B"] * 5
    shuffled = np.random.default_rng(1).permutation(N_CELLS)
    write_rda(tmp_path / "m.rda", {"other": r_int([1]), "mat": r_dgcmatrix(counts.T, GENES, CELLS)})
    write_rda(
        tmp_path / "l.rda",
        {"lab": r_factor([labels[i] for i in shuffled], names=[CELLS[i] for i in shuffled])},
    )
    entry = make_entry(
        [
            {
                "role": "counts",
                "format": "rda",
                "filename": "m.rda",
                "object": "mat",
                "orientation": "genes_x_cells",
            },
            {"role": "labels", "format": "rda", "filename": "l.rda", "object": "lab"},
        ],
        author_label={"file": "labels"},
    )
    adata = read_one(entry, tmp_path)
    assert_standard(adata, counts)
    assert list(adata.obs["author_cell_type"]) == labels  # aligned by the factor's names
    assert adata.uns["osteoimmune"]["source_files"] == ["m.rda", "l.rda"]


def test_rds_dense_with_unnamed_character_labels(tmp_path, counts):
    labels = ["T", "B"] * 10
    write_rds(tmp_path / "m.rds", r_dense(counts.T, GENES, CELLS))
    write_rds(tmp_path / "l.rds", r_str(labels))
    entry = make_entry(
        [
            {
                "role": "counts",
                "format": "rds",
                "filename": "m.rds",
                "orientation": "genes_x_cells",
            },
            {"role": "labels", "format": "rds", "filename": "l.rds"},
        ],
        author_label={"file": "labels"},
    )
    adata = read_one(entry, tmp_path)
    assert_standard(adata, counts)
    assert list(adata.obs["author_cell_type"]) == labels


def test_matrix_from_r_objects(counts):
    csc = sparse.csc_matrix(counts.T)
    dgc = SimpleNamespace(
        i=csc.indices,
        p=csc.indptr,
        x=csc.data,
        Dim=np.array(csc.shape),
        Dimnames=[np.array(GENES), np.array(CELLS)],
        factors=[],
        **{"class": np.array(["dgCMatrix"])},
    )
    dense = xr.DataArray(counts.T, dims=["dim_0", "dim_1"], coords={"dim_0": GENES, "dim_1": CELLS})
    for obj in (dgc, dense):
        adata = matrix_from_r(obj, orientation="genes_x_cells", dataset=DATASET, filename="x.rda")
        assert isinstance(adata.X, sparse.csr_matrix)
        assert adata.X.dtype == np.float32
        np.testing.assert_array_equal(adata.X.toarray(), counts)
        assert list(adata.obs_names) == CELLS
        assert list(adata.var_names) == GENES
    with pytest.raises(ReaderError, match="not a matrix"):
        matrix_from_r(["a"], orientation="genes_x_cells", dataset=DATASET, filename="x.rda")


def test_labels_from_r_objects():
    factor = pd.Categorical(["b", "a", None], categories=["a", "b"])
    series = labels_from_r(factor, names=["c1", "c2", "c3"], dataset=DATASET, filename="l.rda")
    assert list(series.index) == ["c1", "c2", "c3"]
    assert series.iloc[:2].tolist() == ["b", "a"]
    assert pd.isna(series.iloc[2])
    series = labels_from_r(np.array(["x", "y"]), dataset=DATASET, filename="l.rda")
    assert series.tolist() == ["x", "y"]
    assert list(series.index) == [0, 1]


# --------------------------------------------------------------------------- species symbols


def test_check_species_symbols():
    check_species_symbols(GENES, "mouse", dataset=DATASET)
    check_species_symbols(HUMAN_GENES, "human", dataset=DATASET)
    check_species_symbols(HUMAN_GENES, "mouse", dataset=DATASET, gene_symbol_case="upper")
    check_species_symbols(["ACTB", "Actb"], "mouse", dataset=DATASET)  # too few to judge
    with pytest.raises(ReaderError, match="gene_symbol_case: upper"):
        check_species_symbols(HUMAN_GENES, "mouse", dataset=DATASET)
    with pytest.raises(ReaderError, match="species: mouse"):
        check_species_symbols(GENES, "human", dataset=DATASET)
    with pytest.raises(ReaderError, match="gene_column"):
        check_species_symbols([f"ENSG{i:011d}" for i in range(30)], "human", dataset=DATASET)
    with pytest.raises(ReaderError, match="species"):
        check_species_symbols(GENES, "zebrafish", dataset=DATASET)


def test_gene_column_replaces_ensembl_index(tmp_path, counts):
    ids = [f"ENSMUSG{i:011d}" for i in range(N_GENES)]
    var = pd.DataFrame({"symbol": GENES[:-1] + [GENES[0]]}, index=ids)  # one duplicate symbol
    ad.AnnData(X=sparse.csr_matrix(counts), obs=pd.DataFrame(index=CELLS), var=var).write_h5ad(
        tmp_path / "e.h5ad"
    )
    spec = {"role": "counts", "format": "h5ad", "filename": "e.h5ad"}
    with pytest.raises(ReaderError, match=f"{DATASET}.*e.h5ad.*Ensembl.*gene_column"):
        read_one(make_entry([spec]), tmp_path)
    adata = read_one(make_entry([{**spec, "gene_column": "symbol"}]), tmp_path)
    # the duplicate symbol's counts are summed into its first column (see the tests below)
    assert list(adata.var_names) == GENES[:-1]
    assert list(adata.var["original_symbol"]) == GENES[:-1]
    assert list(adata.var["gene_id"]) == ids[:-1]


def test_unknown_species_in_entry(tmp_path, counts):
    write_h5ad(tmp_path / "a.h5ad", counts)
    entry = make_entry(
        [{"role": "counts", "format": "h5ad", "filename": "a.h5ad"}],
        species="rat",
        values="normalized",
    )
    with pytest.raises(ReaderError, match=f"{DATASET}.*species 'rat'"):
        read_one(entry, tmp_path)


# --------------------------------------------------------------------------- suspicious input


def _dup_symbol_h5ad(path: Path, matrix: np.ndarray, *, values: str = "counts") -> list[str]:
    """An h5ad whose symbols repeat Gene0 (twice more) and Gene1 (once more); returns them."""
    symbols = GENES[:-3] + ["Gene0", "Gene1", "Gene0"]
    ids = [f"ENSMUSG{i:011d}" for i in range(N_GENES)]
    var = pd.DataFrame({"symbol": symbols}, index=ids)
    obs = pd.DataFrame(index=CELLS)
    ad.AnnData(X=sparse.csr_matrix(matrix), obs=obs, var=var).write_h5ad(path)
    return symbols


def test_duplicate_symbols_sum_counts_in_first_column(tmp_path, counts, caplog):
    _dup_symbol_h5ad(tmp_path / "d.h5ad", counts)
    spec = {"role": "counts", "format": "h5ad", "filename": "d.h5ad", "gene_column": "symbol"}
    with caplog.at_level(logging.WARNING, logger="osteoimmune"):
        adata = read_one(make_entry([spec]), tmp_path)
    assert list(adata.var_names) == GENES[:-3]  # first-occurrence order, no 'Gene0-1'
    expected = counts[:, :-3].copy()
    expected[:, 0] += counts[:, -3] + counts[:, -1]
    expected[:, 1] += counts[:, -2]
    assert_standard(adata, expected, genes=GENES[:-3])
    assert adata.var["gene_id"].iloc[0] == "ENSMUSG00000000000"  # the first copy's
    assert isinstance(adata.X, sparse.csr_matrix) and adata.X.has_sorted_indices
    (record,) = [r for r in caplog.records if "more than once" in r.getMessage()]
    message = record.getMessage()
    assert record.levelname == "WARNING" and DATASET in message and "d.h5ad" in message
    assert "2 gene symbols" in message and "'Gene0' (3 columns)" in message
    assert "summed" in message


@pytest.mark.parametrize("fmt", ["10x_h5", "10x_mtx"])
def test_duplicate_symbols_of_10x_files_are_summed_without_anndata_warnings(
    tmp_path, counts, fmt, caplog, recwarn
):
    genes = GENES[:-1] + ["Gene3"]  # Cell Ranger references repeat a few symbols
    ids = [f"ENSMUSG{i:011d}" for i in range(N_GENES)]
    source = ad.AnnData(
        X=sparse.csr_matrix(counts), obs=pd.DataFrame(index=CELLS), var=pd.DataFrame(index=genes)
    )
    source.var["gene_id"] = ids
    filename = "m.h5" if fmt == "10x_h5" else "mtx"
    if fmt == "10x_h5":
        tenx.write_10x_h5(source, tmp_path / filename)
    else:
        tenx.write_10x_mtx(source, tmp_path / filename)
    entry = make_entry([{"role": "counts", "format": fmt, "filename": filename}])
    recwarn.clear()  # building the source above warns; reading it should not
    with caplog.at_level(logging.WARNING, logger="osteoimmune"):
        adata = read_one(entry, tmp_path)
    expected = counts[:, :-1].copy()
    expected[:, 3] += counts[:, -1]
    assert_standard(adata, expected, genes=GENES[:-1])
    assert adata.var["gene_id"].iloc[3] == ids[3]
    assert any("'Gene3' (2 columns)" in r.getMessage() for r in caplog.records)
    assert not [w for w in recwarn if "not unique" in str(w.message)]  # merged, not to be fixed


def test_duplicate_symbols_of_normalized_values_keep_the_better_covered_copy(
    tmp_path, counts, caplog
):
    source = counts.copy()
    source[5:, 0] = 0  # the first Gene0 is in 5 cells
    source[3:, -1] = 0  # the third in 3
    source[:, -3] = 2  # the second in every cell: kept
    values = cp10k(source)
    _dup_symbol_h5ad(tmp_path / "d.h5ad", values)
    spec = {"role": "counts", "format": "h5ad", "filename": "d.h5ad", "gene_column": "symbol"}
    with caplog.at_level(logging.WARNING, logger="osteoimmune"):
        adata = read_one(make_entry([spec], values="normalized"), tmp_path)
    assert list(adata.var_names) == GENES[:-3]
    np.testing.assert_array_equal(adata.X[:, 0].toarray().ravel(), values[:, -3].astype(np.float32))
    assert adata.var["gene_id"].iloc[0] == f"ENSMUSG{N_GENES - 3:011d}"  # the kept copy's
    np.testing.assert_array_equal(adata.X[:, 2:].toarray(), values[:, 2:-3].astype(np.float32))
    message = next(r.getMessage() for r in caplog.records if "more than once" in r.getMessage())
    assert "most non-zero cells" in message and "summed" not in message.split(";")[0]


def test_duplicate_barcodes_within_a_sample_are_refused(tmp_path, counts):
    cells = CELLS[:-2] + [CELLS[0], CELLS[1]]
    obs = pd.DataFrame({"batch": ["b1"] * 10 + ["b2"] * 10}, index=cells)
    var = pd.DataFrame(index=GENES)
    ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var).write_h5ad(tmp_path / "c.h5ad")
    spec = {"role": "counts", "format": "h5ad", "filename": "c.h5ad"}
    with pytest.raises(
        ReaderError,
        match=f"Dataset '{DATASET}', file 'c.h5ad': 2 cell barcodes occur more than once "
        f"within sample 's1' .*'{CELLS[0]}'.*`sample:`",
    ):
        read_one(make_entry([spec]), tmp_path)
    # the same barcodes in different samples are normal: read, with unique cell names
    metadata = {**make_entry([])["metadata"], "sample": {"column": "batch"}}
    adata = read_one(make_entry([spec], metadata=metadata), tmp_path)
    assert adata.obs_names.is_unique and adata.n_obs == N_CELLS
    assert list(adata.obs["sample"]) == ["b1"] * 10 + ["b2"] * 10


def test_duplicate_barcodes_in_a_study_sample_are_refused(tmp_path, counts):
    cells = [CELLS[0]] + CELLS[1:-1] + [CELLS[0]]
    obs = pd.DataFrame(index=cells)
    var = pd.DataFrame(index=GENES)
    ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var).write_h5ad(tmp_path / "a.h5ad")
    row = {"sample": "a", "donor": "d", "condition": "c", "file": "a.h5ad", "format": "h5ad"}
    (sample,) = parse_samples([row], dataset="x", source="s.tsv", base=tmp_path)
    paths = {f["filename"]: f["path"] for f in sample["files"]}
    settings = {"species": "mouse", "values": "counts", "author_label": None}
    with pytest.raises(
        ReaderError,
        match=r"Dataset 'x', sample 'a' \(samplesheet row 1\), file 'a.h5ad': 1 cell barcode "
        f"occurs more than once.*'{CELLS[0]}'",
    ):
        read_study_sample(sample, paths, dataset="x", settings=settings)


def _labels_entry(tmp_path, counts, labels: pd.Series) -> dict:
    write_rds(tmp_path / "m.rds", r_dense(counts.T, GENES, CELLS))
    labels.rename_axis("cell").rename("label").to_csv(tmp_path / "labels.csv")
    return make_entry(
        [
            {
                "role": "counts",
                "format": "rds",
                "filename": "m.rds",
                "orientation": "genes_x_cells",
            },
            {"role": "labels", "format": "csv", "filename": "labels.csv"},
        ],
        author_label={"file": "labels"},
    )


def test_partial_labels_are_reported(tmp_path, counts, caplog):
    labels = pd.Series(["T", "B"] * 8, index=CELLS[4:])  # the first 4 cells have no label
    entry = _labels_entry(tmp_path, counts, labels)
    with caplog.at_level(logging.WARNING, logger="osteoimmune"):
        adata = read_one(entry, tmp_path)
    assert adata.obs["author_cell_type"].isna().sum() == 4
    assert list(adata.obs["author_cell_type"][4:]) == ["T", "B"] * 8
    (message,) = [r.getMessage() for r in caplog.records if "labels.csv" in r.getMessage()]
    assert DATASET in message and "16 of 20 cells have an author label" in message
    assert f"'{CELLS[0]}'" in message


def test_complete_labels_are_silent(tmp_path, counts, caplog):
    entry = _labels_entry(tmp_path, counts, pd.Series(["T", "B"] * 10, index=CELLS[::-1]))
    with caplog.at_level(logging.WARNING, logger="osteoimmune"):
        adata = read_one(entry, tmp_path)
    assert list(adata.obs["author_cell_type"]) == ["B", "T"] * 10
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_labels_matching_no_cell_say_the_names_do_not_match(tmp_path, counts):
    labels = pd.Series(["T", "B"] * 10, index=[f"{c}-1" for c in CELLS])
    entry = _labels_entry(tmp_path, counts, labels)
    with pytest.raises(
        ReaderError,
        match=f"Dataset '{DATASET}', file 'labels.csv': none of the 20 cells.*"
        "names do not match the matrix's cell names",
    ):
        read_one(entry, tmp_path)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def _csv_gz(tmp_path, counts, damage) -> dict:
    table = pd.DataFrame(counts.astype(int), index=CELLS, columns=GENES)
    raw = gzip.compress(table.to_csv().encode())
    (tmp_path / "m.csv.gz").write_bytes(damage(raw))
    spec = {"role": "counts", "format": "csv", "filename": "m.csv.gz"}
    return make_entry([{**spec, "orientation": "cells_x_genes"}])


def case_truncated_csv_gz(tmp_path, counts):
    return _csv_gz(tmp_path, counts, _truncated), "m.csv.gz", "m.csv.gz' is truncated.*re-download"


def case_garbage_csv_gz(tmp_path, counts):
    def garbage(raw: bytes) -> bytes:
        return bytes(np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8))

    return _csv_gz(tmp_path, counts, garbage), "m.csv.gz", "not a valid gzip file.*re-download"


def case_corrupt_csv_gz(tmp_path, counts):
    def flipped(raw: bytes) -> bytes:
        middle = len(raw) // 2
        return (
            raw[:middle] + bytes(b ^ 0xFF for b in raw[middle : middle + 40]) + raw[middle + 40 :]
        )

    return _csv_gz(tmp_path, counts, flipped), "m.csv.gz", "m.csv.gz' is not a valid gzip file"


def case_truncated_mtx_gz(tmp_path, counts):
    folder = tmp_path / "filtered_feature_bc_matrix"
    write_mtx_folder(folder, counts)
    matrix = folder / "matrix.mtx.gz"
    matrix.write_bytes(_truncated(matrix.read_bytes()))
    entry = make_entry([{"role": "counts", "format": "10x_mtx", "filename": folder.name}])
    return entry, folder.name, "'matrix.mtx.gz' is truncated.*re-download"


def case_truncated_labels_csv_gz(tmp_path, counts):
    entry = _labels_entry(tmp_path, counts, pd.Series(["T", "B"] * 10, index=CELLS))
    raw = gzip.compress((tmp_path / "labels.csv").read_bytes())
    (tmp_path / "labels.csv.gz").write_bytes(_truncated(raw))
    entry["files"][1]["filename"] = "labels.csv.gz"
    return entry, "labels.csv.gz", "is truncated.*re-download"


GZIP_CASES = [
    case_truncated_csv_gz,
    case_garbage_csv_gz,
    case_corrupt_csv_gz,
    case_truncated_mtx_gz,
    case_truncated_labels_csv_gz,
]


@pytest.mark.parametrize("case", GZIP_CASES, ids=lambda c: c.__name__.removeprefix("case_"))
def test_corrupt_gzip_is_reported_as_such(tmp_path, counts, case):
    entry, filename, pattern = case(tmp_path, counts)
    with pytest.raises(ReaderError, match=pattern) as info:
        read_one(entry, tmp_path)
    message = str(info.value)
    assert DATASET in message and filename in message
    assert "gzip" in message and "layout" not in message and "not numeric" not in message


def test_csv_duplicate_gene_columns_are_not_renamed_by_pandas(tmp_path, counts, caplog):
    genes = GENES[:-1] + ["Gene0"]
    pd.DataFrame(counts.astype(int), index=CELLS, columns=genes).to_csv(tmp_path / "m.csv")
    spec = {"role": "counts", "format": "csv", "filename": "m.csv", "orientation": "cells_x_genes"}
    with caplog.at_level(logging.WARNING, logger="osteoimmune"):
        adata = read_one(make_entry([spec]), tmp_path)
    assert list(adata.var_names) == GENES[:-1]  # not 'Gene0.1'
    expected = counts[:, :-1].copy()
    expected[:, 0] += counts[:, -1]
    assert_standard(adata, expected, genes=GENES[:-1])
    assert any("'Gene0' (2 columns)" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- bad input


def _h5ad_case(tmp_path, matrix, **fields):
    ad.AnnData(
        X=sparse.csr_matrix(matrix),
        obs=pd.DataFrame(index=CELLS[: matrix.shape[0]]),
        var=pd.DataFrame(index=GENES[: matrix.shape[1]]),
    ).write_h5ad(tmp_path / "bad.h5ad")
    return make_entry([{"role": "counts", "format": "h5ad", "filename": "bad.h5ad"}], **fields)


def case_all_zeros(tmp_path, counts):
    return _h5ad_case(tmp_path, np.zeros_like(counts)), "bad.h5ad", "empty"


def case_no_cells(tmp_path, counts):
    return _h5ad_case(tmp_path, counts[:0]), "bad.h5ad", "empty"


def cp10k(counts: np.ndarray) -> np.ndarray:
    return counts / counts.sum(axis=1, keepdims=True) * 1e4


def case_fractional_counts(tmp_path, counts):
    return (
        _h5ad_case(tmp_path, cp10k(counts)),
        "bad.h5ad",
        "not integers.*don't look like raw counts.*size-normalised.*values: normalized",
    )


def case_log_values_as_counts(tmp_path, counts):
    return (
        _h5ad_case(tmp_path, np.log1p(cp10k(counts))),
        "bad.h5ad",
        "`values: counts` but.*not integers.*log-transformed.*Set `values: log_normalized`",
    )


def case_log_values_as_normalized(tmp_path, counts):
    return (
        _h5ad_case(tmp_path, np.log1p(cp10k(counts)), values="normalized"),
        "bad.h5ad",
        r"`values: normalized` but the values look log-transformed .*: max [\d.]+, not integers, "
        r"per-cell totals vary .*expm1\(values\) vary < 0.1% \(CV\)\. Used as normalized they "
        "would be log-transformed a second time. Set `values: log_normalized`",
    )


def case_log_values_as_tpm(tmp_path, counts):
    return (
        _h5ad_case(tmp_path, np.log1p(cp10k(counts) * 100), values="tpm"),
        "bad.h5ad",
        "`values: tpm` but.*log-transformed a second time.*Set `values: log_normalized`",
    )


def case_counts_as_log_normalized(tmp_path, counts):
    return (
        _h5ad_case(tmp_path, counts, values="log_normalized"),
        "bad.h5ad",
        "`values: log_normalized` but the values look raw counts.*all integers.*never "
        "log-transformed nor size-normalised.*Set `values: counts`",
    )


def case_normalized_as_log_normalized(tmp_path, counts):
    return (
        _h5ad_case(tmp_path, cp10k(counts), values="log_normalized"),
        "bad.h5ad",
        "`values: log_normalized` but the values look size-normalised.*never log-transformed.*"
        r"Set `values: normalized` \(or `values: tpm` for TPM\)",
    )


def case_counts_as_normalized(tmp_path, counts):
    return (
        _h5ad_case(tmp_path, counts, values="normalized"),
        "bad.h5ad",
        "`values: normalized` but the values look raw counts.*never size-normalised.*"
        "Set `values: counts`",
    )


def case_negative(tmp_path, counts):
    matrix = counts.copy()
    matrix[0, 0] = -1
    return _h5ad_case(tmp_path, matrix, values="normalized"), "bad.h5ad", "negative"


def case_nan(tmp_path, counts):
    matrix = counts.copy()
    matrix[2, 3] = np.nan
    return _h5ad_case(tmp_path, matrix, values="tpm"), "bad.h5ad", "NaN"


def case_missing_obs_column(tmp_path, counts):
    write_h5ad(tmp_path / "a.h5ad", counts)
    entry = make_entry(
        [{"role": "counts", "format": "h5ad", "filename": "a.h5ad", "layer": "counts"}],
        author_label={"column": "celltype"},
    )
    return entry, "a.h5ad", "'celltype'.*batch, cell_type"


def case_regex_no_match(tmp_path, counts):
    write_h5ad(tmp_path / "a.h5ad", counts)
    entry = make_entry(
        [{"role": "counts", "format": "h5ad", "filename": "a.h5ad", "layer": "counts"}]
    )
    entry["metadata"]["condition"] = {"cell_name": "^(ctrl)_"}
    return entry, "a.h5ad", "does not match 12 of 20.*stim_C08"


def case_labels_length(tmp_path, counts):
    write_rds(tmp_path / "m.rds", r_dense(counts.T, GENES, CELLS))
    write_rds(tmp_path / "l.rds", r_str(["T"] * (N_CELLS - 1)))
    entry = make_entry(
        [
            {
                "role": "counts",
                "format": "rds",
                "filename": "m.rds",
                "orientation": "genes_x_cells",
            },
            {"role": "labels", "format": "rds", "filename": "l.rds"},
        ],
        author_label={"file": "labels"},
    )
    return entry, "l.rds", "19 labels for 20 cells"


def case_text_named_h5ad(tmp_path, counts):
    (tmp_path / "fake.h5ad").write_text("<html>Not Found</html>\n")
    entry = make_entry([{"role": "counts", "format": "h5ad", "filename": "fake.h5ad"}])
    return entry, "fake.h5ad", "not an HDF5 file"


def case_text_named_rda(tmp_path, counts):
    (tmp_path / "fake.rda").write_text("gene,cell\n")
    entry = make_entry(
        [
            {
                "role": "counts",
                "format": "rda",
                "filename": "fake.rda",
                "object": "m",
                "orientation": "genes_x_cells",
            }
        ]
    )
    return entry, "fake.rda", "not an R data file"


def case_missing_r_object(tmp_path, counts):
    write_rda(tmp_path / "m.rda", {"mat": r_dense(counts.T, GENES, CELLS)})
    entry = make_entry(
        [
            {
                "role": "counts",
                "format": "rda",
                "filename": "m.rda",
                "object": "counts",
                "orientation": "genes_x_cells",
            }
        ]
    )
    return entry, "m.rda", "'counts' is not in the file.*holds: mat"


def case_missing_layer(tmp_path, counts):
    write_h5ad(tmp_path / "a.h5ad", counts)
    entry = make_entry([{"role": "counts", "format": "h5ad", "filename": "a.h5ad", "layer": "raw"}])
    return entry, "a.h5ad", "layer 'raw'.*layers: counts"


def case_csv_without_orientation(tmp_path, counts):
    pd.DataFrame(counts, index=CELLS, columns=GENES).to_csv(tmp_path / "m.csv")
    entry = make_entry([{"role": "counts", "format": "csv", "filename": "m.csv"}])
    return entry, "m.csv", "orientation"


BAD_CASES = [
    case_all_zeros,
    case_no_cells,
    case_fractional_counts,
    case_log_values_as_counts,
    case_log_values_as_normalized,
    case_log_values_as_tpm,
    case_counts_as_log_normalized,
    case_normalized_as_log_normalized,
    case_counts_as_normalized,
    case_negative,
    case_nan,
    case_missing_obs_column,
    case_regex_no_match,
    case_labels_length,
    case_text_named_h5ad,
    case_text_named_rda,
    case_missing_r_object,
    case_missing_layer,
    case_csv_without_orientation,
]


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.__name__.removeprefix("case_"))
def test_bad_input_raises_reader_error(tmp_path, counts, case):
    entry, filename, pattern = case(tmp_path, counts)
    with pytest.raises(ReaderError, match=pattern) as info:
        read_one(entry, tmp_path)
    message = str(info.value)
    assert DATASET in message
    assert filename in message


def test_missing_local_file(tmp_path):
    entry = make_entry([{"role": "counts", "format": "h5ad", "filename": "gone.h5ad"}])
    with pytest.raises(ReaderError, match=f"{DATASET}.*gone.h5ad.*fetch"):
        read_one(entry, tmp_path)


# --------------------------------------------------------------------------- real data


REAL_SHAPES = MANIFEST_SHAPES


@pytest.fixture(scope="module")
def real_datasets(mirror) -> dict:
    registry = load_registry(REPO / "config" / "datasets.yaml")
    out = {}
    for name in select_datasets(registry, "default"):
        entry = registry[name]
        paths = {f["filename"]: mirror / name / f["filename"] for f in entry["files"]}
        out[name] = (entry, read_dataset(entry, paths, dataset=name))
    return out


def test_real_shapes_and_standard_form(real_datasets):
    assert set(real_datasets) == set(REAL_SHAPES)
    for name, (entry, adata) in real_datasets.items():
        assert adata.shape == REAL_SHAPES[name], name
        assert isinstance(adata.X, sparse.csr_matrix)
        assert adata.X.dtype == np.float32
        assert adata.var_names.is_unique and adata.obs_names.is_unique
        assert adata.uns["osteoimmune"]["value_type"] == entry["values"]
        # what the values say agrees with the registry (TPM is a size-normalised kind)
        assert adata.uns["osteoimmune"]["value_type_detected"] == DETECTED[entry["values"]], name
        assert set(adata.obs["dataset"]) == {name}
        if entry["values"] == "counts":
            assert np.all(adata.X.data == np.round(adata.X.data)), name
            assert (adata.layers["counts"] != adata.X).nnz == 0
        else:
            assert "counts" not in adata.layers
        assert ("author_cell_type" in adata.obs) == (entry["author_label"] is not None), name


def test_real_labels_and_metadata(real_datasets):
    obs = {name: adata.obs for name, (_, adata) in real_datasets.items()}
    assert set(obs["matsushita2023_bm_stroma"]["author_cell_type"]) == {
        "CH",
        "ORT",
        "OS",
        "RE",
        "Stem",
    }
    assert set(obs["paul2015_bm_myeloid"]["author_cell_type"]) == {
        "Erythrocyte",
        "Monocytes",
        "Basophils",
        "GMP",
        "Neutrophils",
        "Multipotent progenitors",
        "Megakaryocytes",
    }
    assert set(obs["shalek2014_bmdc_lps"]["condition"]) == {"Unstimulated", "LPS_6h"}
    for name in ("luecken2021_bmmc_cite", "luecken2021_bmmc_multiome"):
        assert set(obs[name]["donor"]) == {"s1d1", "s1d2"}
        assert obs[name]["author_cell_type"].notna().all()
    assert obs["weinreb2020_larry_bm_culture"]["author_cell_type"].notna().all()


def test_real_protein(real_datasets):
    _, adata = real_datasets["luecken2021_bmmc_cite"]
    protein = adata.obsm["protein"]
    assert protein.shape == (600, 134)
    assert "CD14" in protein.columns
    assert list(protein.index) == list(adata.obs_names)
    assert (protein.to_numpy() == np.round(protein.to_numpy())).all()  # the counts layer


def test_real_counts_rebuilt_as_log_normalized_are_read_as_is(real_datasets, tmp_path):
    """paul2015's counts, normalize_total + log1p by scanpy, read back through the reader."""
    import scanpy as sc

    entry, counts = real_datasets["paul2015_bm_myeloid"]
    logged = ad.AnnData(X=counts.X.copy(), obs=counts.obs[["sample"]], var=counts.var[[]])
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    logged.write_h5ad(tmp_path / "paul_log.h5ad")
    spec = {"role": "counts", "format": "h5ad", "filename": "paul_log.h5ad"}
    metadata = {**entry["metadata"], "sample": {"column": "sample"}}
    rebuilt = {**entry, "files": [spec], "metadata": metadata, "author_label": None}
    paths = {"paul_log.h5ad": tmp_path / "paul_log.h5ad"}
    adata = read_dataset({**rebuilt, "values": "log_normalized"}, paths, dataset="paul_log")
    assert (adata.X != logged.X).nnz == 0 and adata.X.dtype == np.float32
    assert list(adata.var_names) == list(counts.var_names)
    assert adata.uns["osteoimmune"]["value_type_detected"] == "log_normalized"
    with pytest.raises(
        ReaderError,
        match="Dataset 'paul_log', file 'paul_log.h5ad': `values: normalized` but the values "
        "look log-transformed.*Set `values: log_normalized`",
    ):
        read_dataset({**rebuilt, "values": "normalized"}, paths, dataset="paul_log")
    with pytest.raises(ReaderError, match="`values: counts` but.*Set `values: log_normalized`"):
        read_dataset({**rebuilt, "values": "counts"}, paths, dataset="paul_log")
