"""Samplesheets: parsing, validation errors naming samplesheet, row and column, and the design."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import sparse
from tenx import write_10x_mtx

from osteoimmune.errors import ReaderError, RegistryError
from osteoimmune.readers import read_study_sample
from osteoimmune.registry import is_study, load_registry, select_datasets
from osteoimmune.samples import apply_design, comparison_unit, design_table
from osteoimmune.samplesheet import parse_samples, study_covariates

HEADER = ["sample", "donor", "condition", "file", "format", "sex", "age"]


def write_sheet(folder, rows, *, header=HEADER, sep="\t", name="samples.tsv"):
    lines = [sep.join(header)] + [sep.join(map(str, row)) for row in rows]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def touch(folder, *names):
    for name in names:
        (folder / name).write_bytes(b"x")


def write_registry(folder, entry, *, name="study"):
    base = {
        "title": "A study",
        "species": "human",
        "tissue": "bone marrow",
        "paper": "test",
        "license": "MIT",
        "values": "counts",
    }
    path = folder / "datasets.yaml"
    path.write_text(yaml.safe_dump({"datasets": {name: base | entry}}))
    return path


ROWS = [
    ["S1", "D1", "control", "s1.h5ad", "h5ad", "F", 61],
    ["S2", "D2", "control", "s2.h5ad", "h5ad", "M", 55],
    ["S3", "D3", "osteoporosis", "s3.h5ad", "h5ad", "F", 70],
    ["S4", "D4", "osteoporosis", "s4.h5ad", "h5ad", "M", ""],
]


@pytest.fixture
def sheet_dir(tmp_path):
    touch(tmp_path, "s1.h5ad", "s2.h5ad", "s3.h5ad", "s4.h5ad")
    return tmp_path


def test_samplesheet_file_is_parsed_with_typed_covariates(sheet_dir):
    write_sheet(sheet_dir, ROWS)
    registry = load_registry(write_registry(sheet_dir, {"samplesheet": "samples.tsv"}))
    entry = registry["study"]
    assert is_study(entry)
    samples = entry["samples"]
    assert [s["sample"] for s in samples] == ["S1", "S2", "S3", "S4"]
    assert [s["condition"] for s in samples] == ["control"] * 2 + ["osteoporosis"] * 2
    assert samples[0]["covariates"] == {"sex": "F", "age": 61.0}
    assert samples[3]["covariates"]["age"] is None  # empty cell: unknown
    assert study_covariates(samples) == {"sex": "categorical", "age": "numeric"}
    files = [*entry["files"], *(f for s in entry["samples"] for f in s["files"])]
    assert [f["filename"] for f in files] == ["s1.h5ad", "s2.h5ad", "s3.h5ad", "s4.h5ad"]
    assert files[2]["path"] == str(sheet_dir / "s3.h5ad")
    assert files[2]["sample"] == "S3" and files[2]["row"] == 3


def test_csv_samplesheet_and_inline_samples_agree(sheet_dir):
    write_sheet(sheet_dir, ROWS, sep=",", name="samples.csv")
    from_csv = load_registry(write_registry(sheet_dir, {"samplesheet": "samples.csv"}))
    inline = [dict(zip(HEADER, row, strict=True)) for row in ROWS]
    inline[3].pop("age")  # unknown: absent in YAML
    from_yaml = load_registry(write_registry(sheet_dir, {"samples": inline}))
    assert from_csv["study"]["samples"] == from_yaml["study"]["samples"]


def test_url_rows_and_10x_triplets_become_file_specs(tmp_path):
    triplet = ";".join(
        f"https://example.org/GSM1_{n}" for n in ("barcodes.tsv.gz", "features.tsv.gz", "m.mtx.gz")
    )
    rows = [
        {"sample": "A", "donor": "d1", "condition": "c", "url": triplet, "format": "10x_mtx"},
        {"sample": "B", "donor": "d2", "condition": "c", "format": "10x_h5",
         "url": "https://example.org/b.h5", "sha256": "ab" * 32},
    ]  # fmt: skip
    samples = parse_samples(rows, dataset="x", source="s.tsv", base=tmp_path)
    assert [f["filename"] for f in samples[0]["files"]] == [
        "GSM1_barcodes.tsv.gz",
        "GSM1_features.tsv.gz",
        "GSM1_m.mtx.gz",
    ]
    assert all(f["sha256"] is None for f in samples[0]["files"])  # unknown: recorded later
    assert samples[1]["files"][0]["sha256"] == "ab" * 32


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (
            [ROWS[0], ["S1", "D9", "control", "s2.h5ad", "h5ad", "F", 1]],
            "rows 1 and 2, column 'sample': the sample id 'S1' is used twice",
        ),
        (
            [ROWS[0], ["S2", "D1", "osteoporosis", "s2.h5ad", "h5ad", "F", 1]],
            "rows 1 and 2, column 'donor': donor 'D1' is in two conditions",
        ),
        (
            [ROWS[0], ["S2", "D2", "control", "gone.h5ad", "h5ad", "F", 1]],
            "row 2 (sample 'S2'), column 'file':",
        ),
        (
            [ROWS[0], ["S2", "D2", "control", "s2.h5ad", "loom", "F", 1]],
            "row 2 (sample 'S2'), column 'format': 'loom' is not a known format",
        ),
        (
            [ROWS[0], ["S2", "D2", "control", "s2.h5ad", "h5ad", "F", "old"]],
            "column 'age': covariate values mix numbers (row 1: '61') and text (row 2: 'old')",
        ),
        (
            [ROWS[0], ["S 2", "D2", "control", "s2.h5ad", "h5ad", "F", 1]],
            "row 2, column 'sample': 'S 2' is not a sample id",
        ),
        (
            [ROWS[0], ["S2", "", "control", "s2.h5ad", "h5ad", "F", 1]],
            "row 2 (sample 'S2'), column 'donor': empty",
        ),
    ],
    ids=["duplicate", "donor-two-conditions", "missing-file", "format", "mixed", "id", "donor"],
)
def test_samplesheet_errors_name_samplesheet_row_and_column(sheet_dir, rows, expected):
    sheet = write_sheet(sheet_dir, rows)
    registry = write_registry(sheet_dir, {"samplesheet": "samples.tsv"})
    with pytest.raises(RegistryError) as err:
        load_registry(registry)
    message = str(err.value)
    assert expected in message
    assert "Dataset 'study'" in message and str(sheet) in message


def test_paired_design_allows_a_donor_in_two_conditions(sheet_dir):
    rows = [ROWS[0], ["S2", "D1", "osteoporosis", "s2.h5ad", "h5ad", "F", 1]]
    write_sheet(sheet_dir, rows)
    entry = {"samplesheet": "samples.tsv", "paired": True}
    samples = load_registry(write_registry(sheet_dir, entry))["study"]["samples"]
    assert [s["donor"] for s in samples] == ["D1", "D1"]


def test_location_columns_are_exclusive_and_member_needs_an_archive(tmp_path):
    both = {"sample": "A", "donor": "d", "condition": "c", "url": "https://x.org/a.h5",
            "member": "GSM1", "format": "10x_h5"}  # fmt: skip
    with pytest.raises(RegistryError, match="give exactly one of them"):
        parse_samples([both], dataset="x", source="s.tsv", base=tmp_path)
    member = {"sample": "A", "donor": "d", "condition": "c", "member": "GSM1"}
    with pytest.raises(RegistryError, match="no file with role 'archive'"):
        parse_samples([member], dataset="x", source="s.tsv", base=tmp_path)
    (record,) = parse_samples([member], dataset="x", source="s", base=tmp_path, archive="R.tar")
    assert record["member"] == "GSM1" and record["files"] == []


def test_covariate_cannot_take_a_pipeline_column_name(sheet_dir):
    write_sheet(sheet_dir, [r[:5] + ["T"] for r in ROWS], header=HEADER[:5] + ["cell_type"])
    with pytest.raises(RegistryError, match="column 'cell_type': a covariate cannot be named"):
        load_registry(write_registry(sheet_dir, {"samplesheet": "samples.tsv"}))


def test_study_with_counts_file_or_metadata_is_an_error(sheet_dir):
    write_sheet(sheet_dir, ROWS)
    counts = {"role": "counts", "path": "s1.h5ad", "format": "h5ad"}
    entry = {"samplesheet": "samples.tsv", "files": [counts]}
    with pytest.raises(RegistryError, match="takes its counts from the samples' files"):
        load_registry(write_registry(sheet_dir, entry))


def test_default_selection_leaves_out_studies_marked_not_default(sheet_dir):
    write_sheet(sheet_dir, ROWS)
    registry = load_registry(
        write_registry(sheet_dir, {"samplesheet": "samples.tsv", "default": False})
    )
    assert select_datasets(registry, "default") == []
    assert select_datasets(registry, "all") == ["study"]


def counts_h5ad(path, *, values):
    rng = np.random.default_rng(0)
    genes = [f"GENE{i}" for i in range(30)]
    x = sparse.csr_matrix(rng.poisson(2, (20, 30)).astype(np.float32) * values)
    ad.AnnData(X=x, obs=pd.DataFrame(index=[f"c{i}" for i in range(20)]),
               var=pd.DataFrame(index=genes)).write_h5ad(path)  # fmt: skip
    return path


def test_a_sample_that_is_not_counts_is_an_error_naming_sample_and_row(tmp_path):
    counts_h5ad(tmp_path / "a.h5ad", values=1.0)
    counts_h5ad(tmp_path / "b.h5ad", values=0.37)  # normalised values, not counts
    rows = [
        {"sample": s, "donor": s, "condition": "c", "file": f"{s}.h5ad", "format": "h5ad"}
        for s in ("a", "b")
    ]
    samples = parse_samples(rows, dataset="x", source="s.tsv", base=tmp_path)
    settings = {"species": "human", "values": "counts", "author_label": None}
    paths = {f["filename"]: f["path"] for s in samples for f in s["files"]}
    good = read_study_sample(samples[0], paths, dataset="x", settings=settings)
    assert good.obs_names[0] == "c0-a" and list(good.obs["sample"].unique()) == ["a"]
    with pytest.raises(ReaderError, match=r"sample 'b' \(samplesheet row 2\).*not integers"):
        read_study_sample(samples[1], paths, dataset="x", settings=settings)


def test_design_reaches_obs_with_dtypes_and_the_design_table(tmp_path):
    obs = pd.DataFrame(
        {"sample": pd.Categorical(["S2", "S1", "S2", "S3"])}, index=["a", "b", "c", "d"]
    )
    adata = ad.AnnData(obs=obs, uns={"osteoimmune": {"dataset": "x"}})
    design = [
        {"sample": "S1", "donor": "D1", "condition": "ctrl", "age": 61.0, "sex": "F"},
        {"sample": "S2", "donor": "D2", "condition": "op", "age": None, "sex": "M"},
        {"sample": "S3", "donor": "D3", "condition": "op", "age": 70.0, "sex": "F"},
    ]
    apply_design(adata, design, covariates={"age": "numeric", "sex": "categorical"})
    assert adata.obs["age"].dtype == np.float64
    assert np.isnan(adata.obs.loc["a", "age"]) and adata.obs.loc["b", "age"] == 61.0
    assert list(adata.obs["condition"].cat.categories) == ["ctrl", "op"]
    assert list(adata.obs["sex"]) == ["M", "F", "M", "F"]
    assert adata.uns["osteoimmune"]["covariates"] == ["age", "sex"]
    table = design_table(adata.obs, pd.Index(["a", "b", "d"]), covariates=["age", "sex"])
    assert list(table["sample"]) == ["S2", "S1", "S3"]
    assert list(table["cells_read"]) == [2, 1, 1]
    assert list(table["cells_after_qc"]) == [1, 1, 1]
    with pytest.raises(Exception, match="not in the samplesheet's design"):
        apply_design(adata, design[:2], covariates={})


def test_a_10x_triplet_given_file_by_file_is_read_as_one_sample(tmp_path):
    # GEO per-sample supplementary files: v2 genes.tsv.gz, names joined by '.'
    counts = ad.read_h5ad(counts_h5ad(tmp_path / "a.h5ad", values=1.0))
    paths = write_10x_mtx(counts, tmp_path / "geo", prefix="GSM1_std1.", legacy=True)
    row = {"sample": "std1", "donor": "m1", "condition": "c", "format": "10x_mtx",
           "file": ";".join(str(p) for p in paths)}  # fmt: skip
    (sample,) = parse_samples([row], dataset="x", source="s.tsv", base=tmp_path)
    files = {f["filename"]: f["path"] for f in sample["files"]}
    settings = {"species": "human", "values": "counts", "author_label": None}
    adata = read_study_sample(sample, files, dataset="x", settings=settings)
    assert (adata.X != counts.X).nnz == 0
    assert list(adata.var_names) == list(counts.var_names)
    assert list(adata.obs_names) == [f"{c}-std1" for c in counts.obs_names]


def test_comparison_unit_splits_samples_that_span_conditions():
    obs = pd.DataFrame(
        {"sample": ["a", "a", "b"], "donor": ["d", "d", "e"], "condition": ["x", "x", "y"]}
    )
    assert comparison_unit(obs) == "sample" and "sample_condition" not in obs
    obs["condition"] = ["x", "y", "y"]  # sample a spans two conditions (e.g. time points)
    assert comparison_unit(obs) == "sample_condition"
    assert list(obs["sample_condition"]) == ["a_x", "a_y", "b_y"]
