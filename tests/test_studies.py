"""Studies: samplesheets of per-sample 10x files and GEO RAW.tar series, on real mirror cells.

Test inputs are rebuilt from the mirror's bytes: the Luecken 2021 CITE-seq counts (600 real
bone-marrow cells of two donors) split by donor, or at random into six pseudo-donor samples,
and written as 10x files, a samplesheet and a GEO-style RAW.tar served over HTTP on 127.0.0.1.
"""

import hashlib
import json
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, snakemake
from tenx import tar_member, write_10x_h5, write_10x_mtx, write_geo_raw_tar

from osteoimmune.checksums import read_lock
from osteoimmune.readers import read_dataset, read_study_sample
from osteoimmune.registry import load_registry
from osteoimmune.samples import apply_design, concat_samples
from osteoimmune.samplesheet import design_rows, study_covariates

pytestmark = pytest.mark.e2e

CITE = "luecken2021_bmmc_cite"
STUDY = {
    "title": "Six pseudo-donors of real bone-marrow cells",
    "species": "human",
    "tissue": "bone-marrow mononuclear cells",
    "paper": "test input rebuilt from Luecken et al. 2021 (mirror bytes, split at random)",
    "license": "MIT",
    "values": "counts",
    "reference_condition": "control",
    "default": False,
}


@pytest.fixture(scope="module")
def cite(mirror):
    """The mirror's Luecken CITE counts, read as the registry's single file."""
    entry = load_registry(REPO / "config" / "datasets.yaml")[CITE]
    counts = next(f for f in entry["files"] if f["role"] == "counts")
    entry = entry | {"files": [counts]}
    paths = {counts["filename"]: mirror / CITE / counts["filename"]}
    adata = read_dataset(entry, paths, dataset=CITE)
    source = ad.read_h5ad(paths[counts["filename"]], backed="r")
    adata.var["gene_id"] = source.var["gene_ids"].reindex(adata.var_names).astype(str)
    return adata


def as_counts(adata):
    """Cells x genes counts with gene ids, as a 10x writer takes them."""
    return ad.AnnData(X=adata.layers["counts"], obs=adata.obs[[]], var=adata.var[["gene_id"]])


def write_registry(folder, entry, *, name="study"):
    path = folder / "datasets.yaml"
    path.write_text(yaml.safe_dump({"datasets": {name: STUDY | entry}}, sort_keys=False))
    return path


def test_split_by_donor_joins_back_to_the_single_file(cite, tmp_path):
    donors = list(cite.obs["donor"].cat.categories)
    assert len(donors) == 2
    first, second = (cite[cite.obs["donor"] == d] for d in donors)
    write_10x_h5(as_counts(first), tmp_path / "d1.h5")
    write_10x_mtx(as_counts(second), tmp_path / "d2")
    sheet = pd.DataFrame(
        {
            "sample": ["d1", "d2"],
            "donor": donors,
            "condition": ["healthy", "healthy"],
            "file": ["d1.h5", "d2"],
            "format": ["10x_h5", "10x_mtx"],
            "age": [41, 33],
        }
    )
    sheet.to_csv(tmp_path / "samples.csv", index=False)
    entry = load_registry(write_registry(tmp_path, {"samplesheet": "samples.csv"}))["study"]
    settings = {k: entry[k] for k in ("species", "values", "gene_symbol_case", "author_label")}
    parts = []
    for sample in entry["samples"]:
        paths = {f["filename"]: f["path"] for f in sample["files"]}
        parts.append(read_study_sample(sample, paths, dataset="study", settings=settings))
    joined = concat_samples(parts)
    apply_design(
        joined, design_rows(entry["samples"]), covariates=study_covariates(entry["samples"])
    )

    # exactly the cells, genes, counts and donors of the single file, plus the covariate
    barcodes = joined.obs_names.str.replace(r"-d[12]$", "", regex=True)
    assert sorted(barcodes) == sorted(cite.obs_names)
    assert list(joined.var_names) == list(cite.var_names)
    single = cite[barcodes]
    assert (joined.layers["counts"] != single.layers["counts"]).nnz == 0
    assert list(joined.obs["donor"].astype(str)) == list(single.obs["donor"].astype(str))
    assert joined.obs["age"].dtype == np.float64
    assert set(joined.obs["age"]) == {41.0, 33.0}
    assert joined.uns["osteoimmune"]["covariates"] == ["age"]


def six_samples(cite):
    """Six random, disjoint samples of 100 real cells: three pseudo-donors per condition."""
    order = np.random.default_rng(0).permutation(cite.n_obs)
    return [as_counts(cite[np.sort(part)]) for part in np.array_split(order, 6)]


def geo_study(folder, base, samples, *, extra_members=()):
    """A GEO-style RAW.tar of the samples (GSM900001..), served; the samplesheet rows."""
    stems = {f"GSM90000{i + 1}_P{i + 1}": s for i, s in enumerate(samples)}
    write_geo_raw_tar(folder / "GSE900000_RAW.tar", stems, extra_members=extra_members)
    rows = [
        {
            "sample": f"P{i + 1}",
            "donor": f"D{i + 1}",
            "condition": "control" if i < 3 else "osteoporosis",
            "member": f"GSM90000{i + 1}",
            "age": 60 + i,
            "sex": "F" if i % 2 else "M",
        }
        for i in range(len(samples))
    ]
    archive = {
        "role": "archive",
        "url": f"{base}/GSE900000_RAW.tar",
        "sha256": None,
        "format": "tar",
    }
    return archive, rows


def run_study(workdir, registry, *targets, options=()):
    lock = workdir / "checksums.lock.tsv"
    return snakemake(
        workdir,
        f"registry={registry}",
        "datasets=all",
        f"checksum_lock={lock}",
        targets=targets,
        options=options,
    )


def test_geo_series_study_runs_from_url_to_report(cite, tmp_path, http_folder):
    folder, base = http_folder
    archive, rows = geo_study(folder, base, six_samples(cite))
    pd.DataFrame(rows).to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    registry = write_registry(tmp_path, {"files": [archive], "samplesheet": "samples.tsv"})
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = run_study(workdir, registry)
    assert result.returncode == 0, result.stderr[-5000:]

    # the archive's checksum was unknown: recorded at its first download, and said so
    tar_sha = hashlib.sha256((folder / "GSE900000_RAW.tar").read_bytes()).hexdigest()
    assert read_lock(workdir / "checksums.lock.tsv")[archive["url"]].sha256 == tar_sha
    manifest = json.loads((workdir / "resources/study/fetch_manifest.json").read_text())
    assert [f["checksum"] for f in manifest["files"]] == ["recorded"]

    results = workdir / "results" / "study"
    design = pd.read_csv(results / "tables" / "design.tsv", sep="\t")
    assert list(design["sample"]) == [f"P{i}" for i in range(1, 7)]
    assert list(design["donor"]) == [f"D{i}" for i in range(1, 7)]
    assert list(design["condition"]) == ["control"] * 3 + ["osteoporosis"] * 3
    assert list(design["age"]) == [60, 61, 62, 63, 64, 65]
    assert list(design["cells_read"]) == [100] * 6
    assert (design["cells_after_qc"] > 0).all()

    adata = ad.read_h5ad(results / "study.h5ad", backed="r")
    assert adata.obs["age"].dtype == np.float64
    assert isinstance(adata.obs["sex"].dtype, pd.CategoricalDtype)
    assert adata.obs.groupby("sample", observed=True)["donor"].nunique().eq(1).all()
    comparison = pd.read_csv(results / "tables" / "condition_comparison.tsv", sep="\t")
    assert not comparison["descriptive_only"].any()  # three donors per condition: tested
    assert set(comparison["n_donors_a"]) == {3}

    # the case-control comparisons across the 3 + 3 donors
    de = pd.read_csv(results / "tables" / "pseudobulk_summary.tsv", sep="\t")
    assert de["tested"].any() and (de.loc[de["tested"], "n_samples_ref"] >= 2).all()
    # a cell type without pseudobulks in a condition is untested, saying why
    assert de.loc[~de["tested"], "reason"].str.len().gt(0).all()
    assert set(de["contrast"]) == {"osteoporosis vs control"}
    assert de["design"].str.contains("condition").all()
    composition = pd.read_csv(results / "tables" / "composition_test.tsv", sep="\t")
    assert composition["tested"].any() and set(composition["reference"]) == {"control"}
    assert (results / "tables" / "communication_comparison.tsv").is_file()

    page = re.sub(r"\s+", " ", (results / "report.html").read_text())
    for section in (
        "Differential expression between conditions (pseudobulk)",
        "Composition across conditions",
        "Immune-to-bone communication",
    ):
        assert f">{section}</h2>" in page
    assert "Top changes between conditions" in (workdir / "results" / "index.html").read_text()
    assert "6 sample(s) x 6 donor(s) x 2 condition(s); covariates: age (numeric), sex" in page
    assert "checksum recorded at first download" in page
    design_html = page[page.index("<h2>Design</h2>") : page.index("<h2>Quality control")]
    for text in ("P6", "D6", "osteoporosis", "<th>age</th>", "<th>sex</th>"):
        assert text in design_html

    # a changed condition re-joins the samples; it does not re-read or re-QC them
    rows[5]["condition"] = "control"
    pd.DataFrame(rows).to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    dry = run_study(workdir, registry, options=["--dry-run"])
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = set(re.findall(r"^(?:local)?rule (\w+):", dry.stdout + dry.stderr, flags=re.M))
    assert "filter_cells" in planned
    assert not planned & {"fetch_dataset", "read_sample", "qc_sample"}


def test_archive_with_a_traversal_member_is_refused_naming_the_dataset(cite, tmp_path, http_folder):
    folder, base = http_folder
    evil = tar_member("../escaped.txt", data=b"outside")
    archive, rows = geo_study(folder, base, six_samples(cite)[:1], extra_members=[evil])
    registry = write_registry(tmp_path, {"files": [archive], "samples": rows[:1]}, name="evil")
    workdir = tmp_path / "work"
    workdir.mkdir()
    target = "results/evil/intermediate/sample_reads/P1.h5ad"
    result = run_study(workdir, registry, target)
    assert result.returncode != 0
    log = (workdir / "logs" / "read_sample" / "evil" / "P1.log").read_text()
    assert "Dataset 'evil'" in log and "../escaped.txt" in log and "refused" in log
    assert not (workdir / target).exists()
    assert not list(tmp_path.rglob("escaped.txt"))
    # the raw download is kept as it was fetched
    manifest = json.loads((workdir / "resources/evil/fetch_manifest.json").read_text())
    (row,) = manifest["files"]
    assert (workdir / row["path"]).read_bytes() == (folder / "GSE900000_RAW.tar").read_bytes()
