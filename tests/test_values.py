"""Input value types: detected from the values, and each transformed exactly once."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import yaml
from conftest import REPO
from scipy import sparse

from osteoimmune.cluster import embed, leiden, markers, normalize, select_hvg
from osteoimmune.readers import read_dataset
from osteoimmune.reference import log_cp10k
from osteoimmune.registry import load_registry
from osteoimmune.samples import split_by_sample
from osteoimmune.values import (
    VALUE_TYPES,
    count_figures_note,
    detect_value_type,
    normalization_note,
)


def poisson_counts(seed=0, n_per_group=80, n_genes=120) -> np.ndarray:
    """Three groups of cells with distinct expressed gene blocks; library sizes vary."""
    rng = np.random.default_rng(seed)
    blocks = []
    for g in range(3):
        rates = np.full(n_genes, 0.3)
        rates[g * 30 : (g + 1) * 30] = 6.0
        depth = rng.uniform(0.5, 2.0, size=(n_per_group, 1))  # library sizes differ
        blocks.append(rng.poisson(rates * depth))
    counts = np.vstack(blocks).astype(np.float64)
    counts[:, 0] += 1  # no empty cell
    return counts


def cp10k(counts: np.ndarray) -> np.ndarray:
    return counts / counts.sum(axis=1, keepdims=True) * 1e4


def as_adata(values: np.ndarray, *, counts_layer: bool = False) -> ad.AnnData:
    x = sparse.csr_matrix(values.astype(np.float32))
    adata = ad.AnnData(X=x, layers={"counts": x.copy()} if counts_layer else None)
    adata.var_names = [f"G{i}" for i in range(adata.n_vars)]
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    adata.obs["donor"] = pd.Categorical(np.tile(["d1", "d2"], adata.n_obs // 2))
    adata.uns["osteoimmune"] = {}
    return adata


# --------------------------------------------------------------------------- detection


def test_detects_counts_normalized_and_log_normalized():
    counts = poisson_counts()
    found = detect_value_type(sparse.csr_matrix(counts))
    assert (found.kind, found.strong, found.integer) == ("counts", True, True)
    assert found.total_cv > 0.2 and np.isnan(found.expm1_total_cv)
    found = detect_value_type(sparse.csr_matrix(cp10k(counts)))
    assert found.kind == "normalized" and found.total_cv < 1e-6 and found.max_value > 25
    found = detect_value_type(sparse.csr_matrix(np.log1p(cp10k(counts))))
    assert (found.kind, found.strong) == ("log_normalized", True)
    assert found.expm1_total_cv < 1e-6 and found.max_value < 25
    # TPM looks like any size-normalised input
    assert detect_value_type(sparse.csr_matrix(cp10k(counts) * 100)).kind == "normalized"


def test_log_values_of_a_gene_subset_are_still_log_normalized_on_their_range():
    # genes kept after normalising (e.g. highly variable ones): expm1 totals no longer fixed
    logged = np.log1p(cp10k(poisson_counts()))[:, 20:70]
    found = detect_value_type(sparse.csr_matrix(logged))
    assert (found.kind, found.strong) == ("log_normalized", False)
    assert found.expm1_total_cv > 0.05
    # the same subset not logged: CP10k values far above any log value
    assert detect_value_type(sparse.csr_matrix(cp10k(poisson_counts())[:, 20:70])).kind == (
        "normalized"
    )


def test_fractions_and_rounded_normalised_values_are_normalized():
    counts = poisson_counts()
    fractions = counts / counts.sum(axis=1, keepdims=True)  # target sum 1: max below 1
    assert detect_value_type(sparse.csr_matrix(fractions)).kind == "normalized"
    rounded = np.round(cp10k(counts) * 100)  # integer CPM-like values, totals fixed
    found = detect_value_type(sparse.csr_matrix(rounded))
    assert found.integer and found.kind == "normalized"


def test_detection_reads_a_sample_of_cells_evenly_spaced():
    logged = np.log1p(cp10k(poisson_counts()))
    full = detect_value_type(sparse.csr_matrix(logged))
    part = detect_value_type(sparse.csr_matrix(logged), n_cells=24)
    assert part.kind == full.kind == "log_normalized"
    assert part.max_value == full.max_value  # the maximum is over every value
    few = detect_value_type(sparse.csr_matrix(logged[:2]))
    assert np.isnan(few.total_cv) and "not measured (too few cells)" in few.describe()


# --------------------------------------------------------------------------- normalisation


def test_normalize_transforms_each_type_once():
    counts = poisson_counts()
    from_counts = as_adata(counts, counts_layer=True)
    normalize(from_counts, value_type="counts")
    np.testing.assert_allclose(np.expm1(from_counts.X.toarray()).sum(1), 1e4, rtol=1e-4)
    assert (from_counts.layers["counts"] != sparse.csr_matrix(counts)).nnz == 0
    for value_type in ("normalized", "tpm"):
        adata = as_adata(cp10k(counts))
        normalize(adata, value_type=value_type)
        np.testing.assert_allclose(
            adata.X.toarray(), np.log1p(cp10k(counts).astype(np.float32)), rtol=1e-6
        )
    logged = np.log1p(cp10k(counts)).astype(np.float32)
    adata = as_adata(logged)
    normalize(adata, value_type="log_normalized")
    np.testing.assert_array_equal(adata.X.toarray(), logged)  # used as is, bit for bit
    # the three log-normalised results agree: no type is logged twice or left unlogged
    np.testing.assert_allclose(adata.X.toarray(), from_counts.X.toarray(), rtol=1e-5, atol=1e-6)
    for done in (from_counts, adata):
        assert done.uns["log1p"] == {"base": None}


def test_normalize_refuses_to_transform_twice_and_unknown_types():
    adata = as_adata(poisson_counts(), counts_layer=True)
    normalize(adata, value_type="counts")
    before = adata.X.copy()
    with pytest.raises(ValueError, match="log-transformed already.*twice"):
        normalize(adata, value_type="counts")
    assert (adata.X != before).nnz == 0
    with pytest.raises(ValueError, match="'logged' is not known.*log_normalized"):
        normalize(as_adata(poisson_counts()), value_type="logged")


def test_normalisation_sentences_say_what_was_done_per_type():
    notes = {t: normalization_note(t, target_sum=1e4) for t in VALUE_TYPES}
    assert notes["counts"].startswith("raw counts size-normalised to 10,000 per cell")
    assert "then log1p-transformed" in notes["counts"]
    assert notes["normalized"].startswith(
        "log1p only: the authors' size-normalised values (not logged) were log1p-transformed once"
    )
    assert notes["tpm"].startswith(
        "log1p only: the authors' TPM values were log1p-transformed once"
    )
    assert notes["log_normalized"].startswith("none: the input is log-normalised by the authors")
    assert (
        "used as is, neither size-normalised nor log-transformed again" in notes["log_normalized"]
    )
    adata = as_adata(np.log1p(cp10k(poisson_counts())))
    normalize(adata, value_type="log_normalized")
    assert adata.uns["osteoimmune"]["normalization"] == notes["log_normalized"]
    note = count_figures_note("log_normalized")
    assert "not drawn: the input is log-normalised values, not raw counts" in note


def test_clustering_log_normalized_input_keeps_x_equal_to_the_input():
    logged = np.log1p(cp10k(poisson_counts())).astype(np.float32)
    adata = as_adata(logged)
    normalize(adata, value_type="log_normalized")
    select_hvg(adata, n_top_genes=60, value_type="log_normalized", batch_key="donor")
    embed(
        adata, n_pcs=10, n_neighbors=10, batch_key="donor", seed=0,
        value_type="log_normalized", normalization="pearson_residuals",
    )  # fmt: skip
    leiden(adata, resolution=0.5, seed=0)
    table = markers(adata, n_genes=5)
    # Pearson residuals need counts: log-normalised input falls back to its own X
    assert "input is log_normalized: fell back" in adata.uns["osteoimmune"]["pca_input"]
    np.testing.assert_array_equal(adata.X.toarray(), logged)
    assert adata.obs["leiden"].nunique() >= 3 and not table.empty


# --------------------------------------------------------------------------- the rule scripts


def rebuild_as_log_normalized(mirror, folder) -> tuple[ad.AnnData, dict]:
    """paul2015's counts, normalize_total + log1p by scanpy, as an h5ad the reader reads."""
    registry = load_registry(REPO / "config" / "datasets.yaml")
    entry = registry["paul2015_bm_myeloid"]
    paths = {f["filename"]: mirror / "paul2015_bm_myeloid" / f["filename"] for f in entry["files"]}
    counts = read_dataset(entry, paths, dataset="paul2015_bm_myeloid")
    logged = ad.AnnData(X=counts.X.copy(), obs=counts.obs[[]], var=counts.var[[]])
    sc.pp.normalize_total(logged, target_sum=1e4)
    sc.pp.log1p(logged)
    logged.write_h5ad(folder / "paul_log.h5ad")
    spec = {"role": "counts", "format": "h5ad", "filename": "paul_log.h5ad"}
    rebuilt = {**entry, "values": "log_normalized", "files": [spec], "author_label": None}
    return logged, rebuilt


def test_log_normalized_mirror_data_through_the_rules_keep_the_input_values(mirror, tmp_path):
    import cluster_cells
    import compare_expression
    import filter_cells
    import qc_sample

    logged, entry = rebuild_as_log_normalized(mirror, tmp_path)
    adata = read_dataset(entry, {"paul_log.h5ad": tmp_path / "paul_log.h5ad"}, dataset="paul_log")
    (sample,) = split_by_sample(adata, tmp_path / "samples")["slug"]
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    qc = config["qc"]
    qc_sample.main(
        h5ad=tmp_path / "samples" / f"{sample}.h5ad", params=qc, seed=0,
        out=tmp_path / "qc.h5ad", thresholds=tmp_path / "thresholds.tsv",
    )  # fmt: skip
    tables = {k: tmp_path / f"{k}.tsv" for k in ("summary", "lineage", "cells", "design")}
    filter_cells.main(
        h5ads=[tmp_path / "qc.h5ad"], thresholds=[tmp_path / "thresholds.tsv"],
        min_cells_per_gene=qc["min_cells_per_gene"],
        min_cells_per_sample=qc["min_cells_per_sample"],
        on_small_sample=qc["on_small_sample"],
        out=tmp_path / "filtered.h5ad", tables={**tables, "thresholds": tmp_path / "t.tsv"},
    )  # fmt: skip
    params = {**config["cluster"], "resolutions": [0.4, 0.8], "stability_repeats": 2}
    cluster_cells.main(
        h5ad=tmp_path / "filtered.h5ad", params=params, seed=0, out=tmp_path / "clustered.h5ad",
        stability=tmp_path / "stability.tsv", marker_table=tmp_path / "markers.tsv",
    )  # fmt: skip
    out = ad.read_h5ad(tmp_path / "clustered.h5ad")
    assert out.n_obs > 0.9 * logged.n_obs and "counts" not in out.layers
    expected = logged[out.obs_names, out.var_names].X
    assert (out.X != expected).nnz == 0  # stored X equals the input: never transformed
    meta = out.uns["osteoimmune"]
    assert meta["value_type"] == meta["value_type_detected"] == "log_normalized"
    assert meta["normalization"] == normalization_note("log_normalized", target_sum=1e4)
    assert "values are log_normalized, not counts" in meta["qc_note"]
    assert "qc_fail_outlier_counts" not in ad.read_h5ad(tmp_path / "qc.h5ad").obs
    # consumers: the reference input is the same log CP10k, and no pseudobulk DE of non-counts
    np.testing.assert_allclose(log_cp10k(out).X.toarray(), expected.toarray(), atol=1e-5)
    keys = ("results", "summary", "samples", "genes", "enrichment", "pseudobulk")
    de = {k: tmp_path / f"de_{k}.tsv" for k in keys}
    compare_expression.main(
        matrices=tmp_path / "clustered.h5ad", h5ad=tmp_path / "clustered.h5ad", params={},
        enrichment_min_size=5,
        enrichment_max_size=500, reference=None,
        paired=False, seed=0, out=de,
    )  # fmt: skip
    reason = pd.read_csv(de["summary"], sep="\t")["reason"].iloc[0]
    assert reason == "values are log_normalized, not raw counts: pseudobulk DE needs counts"
