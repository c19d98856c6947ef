"""Tests of osteoimmune.archives on real cells packed as a GEO series' ``_RAW.tar``.

The Luecken 2021 CITE-seq counts (600 cells x 1000 genes, two donors) from the mirror are split
by donor into two GSM samples and written as Cell Ranger files, so every read is checked
against the exact cells, genes and counts that went in.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import shutil
import tarfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse
from tenx import tar_member, write_10x_h5, write_10x_mtx, write_geo_raw_tar

from osteoimmune import archives
from osteoimmune.archives import archive_samples
from osteoimmune.errors import ReaderError
from osteoimmune.readers import read_matrix_file


def read_archive_sample(archive, **kwargs):
    """As the readers call it: members read by read_matrix_file."""
    return archives.read_archive_sample(archive, read=read_matrix_file, **kwargs)


DATASET = "geo_test"
CITE = "openproblems_bmmc_cite_starter.output_rna.h5ad"
SPEC = {"role": "archive", "format": "tar", "filename": "GSE100000_RAW.tar"}
STEMS = {"s1d1": "GSM100001_S1", "s1d2": "GSM100002_S2"}


@pytest.fixture(scope="module")
def splits(mirror) -> dict[str, ad.AnnData]:
    """Member stem -> that donor's cells: raw counts, the source cell and gene names."""
    spec = {"format": "h5ad", "layer": "counts", "filename": CITE}
    cite = read_matrix_file(spec, mirror / "luecken2021_bmmc_cite" / CITE, dataset="t")
    assert cite.shape == (600, 1000)
    assert sorted(cite.obs["batch"].unique()) == sorted(STEMS)
    return {stem: cite[cite.obs["batch"] == batch].copy() for batch, stem in STEMS.items()}


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    """The system temporary folder for the test: what the reader extracts lands here."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(folder))
    return folder


@pytest.fixture
def extractions(monkeypatch) -> list[str]:
    """Names of the tar members extracted during the test (tarfile itself is used)."""
    calls: list[str] = []
    original = tarfile.TarFile.extract

    def spy(self, member, *args, **kwargs):
        calls.append(getattr(member, "name", member))
        return original(self, member, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extract", spy)
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda *a, **k: calls.append("*"))
    return calls


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_cells(got: ad.AnnData, expected: ad.AnnData) -> None:
    assert list(got.obs_names) == list(expected.obs_names)
    assert list(got.var_names) == list(expected.var_names)
    assert list(got.var["gene_ids"]) == list(expected.var["gene_ids"])
    assert sparse.issparse(got.X) and got.X.format == "csr" and got.X.dtype == np.float32
    assert expected.X.nnz > 0
    assert (got.X != expected.X).nnz == 0


# --------------------------------------------------------------------------- the helpers


def test_write_10x_h5_round_trips_through_scanpy(tmp_path, splits):
    expected = splits["GSM100001_S1"]
    path = write_10x_h5(expected, tmp_path / "m.h5")
    by_scanpy = sc.read_10x_h5(path)
    assert_same_cells(sparse_csr32(by_scanpy), expected)
    assert set(by_scanpy.var["genome"]) == {"GRCh38"}
    assert set(by_scanpy.var["feature_types"]) == {"Gene Expression"}
    spec = {"format": "10x_h5", "filename": "m.h5"}
    assert_same_cells(read_matrix_file(spec, path, dataset=DATASET), expected)


@pytest.mark.parametrize("legacy", [False, True], ids=["v3", "v2"])
def test_write_10x_mtx_round_trips_through_scanpy(tmp_path, splits, legacy):
    expected = splits["GSM100002_S2"]
    paths = write_10x_mtx(expected, tmp_path / "gz", prefix="S2_", legacy=legacy)
    assert [p.name for p in paths][-1] == ("S2_genes.tsv.gz" if legacy else "S2_features.tsv.gz")
    folder = tmp_path / "gz"
    if legacy:  # scanpy reads v2 files only uncompressed, as Cell Ranger v2 wrote them
        folder = tmp_path / "plain"
        folder.mkdir()
        for path in paths:
            with gzip.open(path, "rb") as src, (folder / path.name[:-3]).open("wb") as out:
                shutil.copyfileobj(src, out)
    got = sc.read_10x_mtx(folder, prefix="S2_", make_unique=False)
    assert_same_cells(sparse_csr32(got), expected)
    assert ("feature_types" in got.var) is not legacy


def sparse_csr32(adata: ad.AnnData) -> ad.AnnData:
    adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
    return adata


# --------------------------------------------------------------------------- reading samples


def test_archive_samples_groups_gsm_ids(tmp_path, splits, caplog):
    extra = [
        tar_member("GSM100001_S1_metadata.csv.gz", data=gzip.compress(b"cell,x\n")),
        tar_member("filelist.txt", data=b"GSM100001_S1_matrix.mtx.gz\n"),
    ]
    archive = write_geo_raw_tar(tmp_path / "GSE100000_RAW.tar", splits, extra_members=extra)
    with caplog.at_level(logging.INFO, logger="osteoimmune.archives"):
        samples = archive_samples(archive, dataset=DATASET)
    assert samples == {
        "GSM100001": [
            "GSM100001_S1_barcodes.tsv.gz",
            "GSM100001_S1_features.tsv.gz",
            "GSM100001_S1_matrix.mtx.gz",
            "GSM100001_S1_metadata.csv.gz",
        ],
        "GSM100002": [
            "GSM100002_S2_barcodes.tsv.gz",
            "GSM100002_S2_features.tsv.gz",
            "GSM100002_S2_matrix.mtx.gz",
        ],
    }
    assert "filelist.txt" in caplog.text
    # Another file of the sample (a metadata table) does not stop its matrix being read.
    got = read_archive_sample(archive, member="GSM100001", spec=SPEC, dataset=DATASET, sample="S1")
    assert_same_cells(got, splits["GSM100001_S1"])


@pytest.mark.parametrize(
    ("kind", "suffix"),
    [("mtx", ".tar"), ("mtx_legacy", ".tar"), ("h5", ".tar"), ("mtx", ".tar.gz")],
    ids=["v3-triplet", "v2-genes-tsv-gz", "h5", "v3-triplet-gzipped-tar"],
)
def test_read_archive_sample_returns_the_split(tmp_path, splits, scratch, kind, suffix):
    downloads = tmp_path / "resources"
    downloads.mkdir()
    archive = write_geo_raw_tar(downloads / f"GSE100000_RAW{suffix}", splits, kind=kind)
    before = sha256(archive)
    assert list(archive_samples(archive, dataset=DATASET)) == ["GSM100001", "GSM100002"]
    for stem, expected in splits.items():
        gsm, sample = stem.split("_")
        got = read_archive_sample(archive, member=gsm, spec=SPEC, dataset=DATASET, sample=sample)
        assert_same_cells(got, expected)
    assert sha256(archive) == before
    assert list(downloads.iterdir()) == [archive]  # nothing extracted beside the download
    assert list(scratch.iterdir()) == []  # the private temporary folder is removed


def test_single_table_is_read_with_the_spec_format(tmp_path, splits):
    expected = splits["GSM100002_S2"][:40].copy()
    table = pd.DataFrame(
        expected.X.toarray().T.astype(int), index=expected.var_names, columns=expected.obs_names
    )
    data = gzip.compress(table.to_csv().encode())
    archive = write_geo_raw_tar(
        tmp_path / "GSE1_RAW.tar", {}, extra_members=[tar_member("GSM7_counts.csv.gz", data=data)]
    )
    spec = {**SPEC, "format": "csv", "orientation": "genes_x_cells"}
    got = read_archive_sample(archive, member="GSM7", spec=spec, dataset=DATASET, sample="S7")
    assert list(got.obs_names) == list(expected.obs_names)
    assert list(got.var_names) == list(expected.var_names)
    assert (got.X != expected.X).nnz == 0


# --------------------------------------------------------------------------- refused archives


UNSAFE = {
    "traversal": lambda root: tar_member("../evil.txt", data=b"pwned"),
    "absolute": lambda root: tar_member(str(root / "evil-absolute.txt"), data=b"pwned"),
    "symlink": lambda root: tar_member(
        "GSM100001_S1_link.tsv.gz", tartype=tarfile.SYMTYPE, linkname=str(root / "evil-target")
    ),
    "hardlink": lambda root: tar_member(
        "GSM100001_S1_hard.tsv.gz", tartype=tarfile.LNKTYPE, linkname="../../evil-hard"
    ),
    "fifo": lambda root: tar_member("GSM100001_S1_pipe", tartype=tarfile.FIFOTYPE),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_member_refuses_the_archive(tmp_path, splits, scratch, extractions, case):
    info, _ = unsafe = UNSAFE[case](tmp_path)
    archive = write_geo_raw_tar(tmp_path / "GSE100000_RAW.tar", splits, extra_members=[unsafe])
    before = sha256(archive)
    with tarfile.open(archive) as tar:  # the member went into the archive as written
        assert tar.getnames()[-1] == info.name
    for read in (
        lambda: archive_samples(archive, dataset=DATASET),
        lambda: read_archive_sample(
            archive, member="GSM100001", spec=SPEC, dataset=DATASET, sample="S1"
        ),
    ):
        with pytest.raises(ReaderError) as err:
            read()
        message = str(err.value)
        assert f"Dataset '{DATASET}'" in message
        assert "archive 'GSE100000_RAW.tar'" in message
        assert f"member '{info.name}'" in message
        assert "refused, nothing was extracted" in message
    assert extractions == []
    assert list(scratch.iterdir()) == []
    assert not list(tmp_path.rglob("evil*"))
    assert sha256(archive) == before


# --------------------------------------------------------------------------- bad requests


def test_unknown_gsm_lists_the_archive_samples(tmp_path, splits):
    archive = write_geo_raw_tar(tmp_path / "GSE100000_RAW.tar", splits)
    with pytest.raises(ReaderError) as err:
        read_archive_sample(archive, member="GSM999", spec=SPEC, dataset=DATASET, sample="S9")
    message = str(err.value)
    for part in (DATASET, "GSE100000_RAW.tar", "sample 'S9'", "GSM999", "GSM100001, GSM100002"):
        assert part in message


def test_gsm_without_a_matrix_lists_its_files(tmp_path, splits):
    extra = [tar_member("GSM100003_S3_metadata.csv.gz", data=gzip.compress(b"cell,x\n"))]
    archive = write_geo_raw_tar(tmp_path / "GSE100000_RAW.tar", splits, extra_members=extra)
    with pytest.raises(ReaderError, match="no readable matrix") as err:
        read_archive_sample(archive, member="GSM100003", spec=SPEC, dataset=DATASET, sample="S3")
    assert "GSM100003_S3_metadata.csv.gz" in str(err.value)
    assert "sample 'S3'" in str(err.value)


def test_gsm_with_two_matrices_is_ambiguous(tmp_path, splits):
    h5 = write_10x_h5(splits["GSM100001_S1"], tmp_path / "m.h5")
    extra = [tar_member("GSM100001_S1_filtered_feature_bc_matrix.h5", data=h5.read_bytes())]
    archive = write_geo_raw_tar(tmp_path / "GSE100000_RAW.tar", splits, extra_members=extra)
    with pytest.raises(ReaderError, match="ambiguous") as err:
        read_archive_sample(archive, member="GSM100001", spec=SPEC, dataset=DATASET, sample="S1")
    message = str(err.value)
    assert "GSM100001_S1_matrix.mtx.gz" in message
    assert "GSM100001_S1_filtered_feature_bc_matrix.h5" in message


def test_not_a_tar_is_refused(tmp_path):
    archive = tmp_path / "GSE100000_RAW.tar"
    archive.write_bytes(b"<!doctype html><html>Not found</html>" * 20)
    with pytest.raises(ReaderError, match="not a readable tar archive") as err:
        archive_samples(archive, dataset=DATASET)
    assert f"Dataset '{DATASET}', archive 'GSE100000_RAW.tar'" in str(err.value)


@pytest.mark.parametrize("inner", ["../../evil.txt", "/tmp/evil-absolute.txt"])
def test_unsafe_member_of_a_nested_tar_is_refused(tmp_path, scratch, inner):
    """A GSM's 10x folder packed as a .tar.gz inside the archive is checked member by member."""
    nested = io.BytesIO()
    with tarfile.open(fileobj=nested, mode="w:gz") as tar:
        info, data = tar_member(inner, data=b"pwned")
        tar.addfile(info, io.BytesIO(data))
    name = "GSM100001_S1_filtered_feature_bc_matrix.tar.gz"
    extra = [tar_member(name, data=nested.getvalue())]
    archive = write_geo_raw_tar(tmp_path / "GSE100000_RAW.tar", {}, extra_members=extra)
    with pytest.raises(ReaderError) as err:
        read_archive_sample(archive, member="GSM100001", spec=SPEC, dataset=DATASET, sample="S1")
    message = str(err.value)
    assert f"Dataset '{DATASET}'" in message and "archive 'GSE100000_RAW.tar'" in message
    assert f"member '{name}'" in message and f"'{inner}'" in message
    assert "refused" in message
    assert not list(tmp_path.rglob("evil*")) and not Path("/tmp/evil-absolute.txt").exists()
    assert list(scratch.iterdir()) == []


def test_nested_tar_of_a_10x_folder_is_read(tmp_path, splits, scratch):
    """The check of a nested tar lets a plain 10x folder through (``./`` names, a folder)."""
    folder = tmp_path / "filtered_feature_bc_matrix"
    folder.mkdir()
    write_10x_mtx(splits["GSM100001_S1"], folder)
    nested = tmp_path / "nested.tar.gz"
    with tarfile.open(nested, "w:gz") as tar:
        tar.add(folder, arcname="./filtered_feature_bc_matrix")
    name = "GSM100001_S1_filtered_feature_bc_matrix.tar.gz"
    extra = [tar_member(name, data=nested.read_bytes())]
    archive = write_geo_raw_tar(tmp_path / "GSE100000_RAW.tar", {}, extra_members=extra)
    got = read_archive_sample(archive, member="GSM100001", spec=SPEC, dataset=DATASET, sample="S1")
    assert_same_cells(got, splits["GSM100001_S1"])
    assert list(scratch.iterdir()) == []
