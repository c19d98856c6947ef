"""QC metrics and adaptive thresholds on small synthetic AnnData."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from osteoimmune.qc import compute_qc_metrics, filter_cells, mad_outlier

THRESHOLDS = dict(nmads=5, mt_nmads=3, max_pct_mt=20, min_genes=5, min_counts=0)


def make_adata(n_cells=200, n_genes=60, *, seed=0, mouse=False):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)
    genes = [f"GENE{i}" for i in range(n_genes)]
    genes[:3] = ["mt-Co1", "mt-Nd1", "mt-Cytb"] if mouse else ["MT-CO1", "MT-ND1", "MT-CYB"]
    genes[3:5] = ["RPL3", "RPS6"]
    genes[5] = "HBB"
    X = sp.csr_matrix(counts)
    adata = ad.AnnData(X=X, layers={"counts": X.copy()})
    adata.var_names = genes
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    half = n_cells // 2
    adata.obs["sample"] = pd.Categorical(["s1"] * half + ["s2"] * (n_cells - half))
    return adata


def test_mad_outlier_flags_far_values_only():
    values = np.r_[np.full(50, 10.0) + np.linspace(-1, 1, 50), 100.0, -80.0]
    flags = mad_outlier(values, nmads=5)
    assert flags.tolist() == [False] * 50 + [True, True]
    assert mad_outlier(values, nmads=5, upper_only=True)[-1] == np.False_
    assert not mad_outlier(np.ones(10), nmads=1).any()


@pytest.mark.parametrize("mouse", [False, True])
def test_species_aware_gene_groups_and_metrics(mouse):
    adata = make_adata(mouse=mouse)
    compute_qc_metrics(adata)
    assert adata.var["mt"].sum() == 3 and adata.var["ribo"].sum() == 2
    assert adata.var["hb"].sum() == 1
    counts = adata.layers["counts"].toarray()
    expected = 100 * counts[:, :3].sum(1) / counts.sum(1)
    np.testing.assert_allclose(adata.obs["pct_counts_mt"], expected, rtol=1e-5)
    for col in ("total_counts", "n_genes_by_counts", "pct_counts_ribo", "pct_counts_hb",
                "pct_counts_in_top_20_genes"):
        assert col in adata.obs


def test_filter_removes_outliers_per_sample_and_reports_reasons():
    adata = make_adata()
    counts = adata.layers["counts"].tolil()
    counts[0, :3] = 500  # mostly mitochondrial
    counts[150, :] = 0
    counts[150, 10] = 1  # nearly empty
    adata.layers["counts"] = counts.tocsr()
    adata.X = adata.layers["counts"].copy()
    compute_qc_metrics(adata)
    out, summary = filter_cells(adata, counts_based=True, min_cells_per_gene=1, **THRESHOLDS)
    assert "c0" not in out.obs_names and "c150" not in out.obs_names
    assert summary.loc["s1", "high_mt"] >= 1 and summary.loc["s2", "low_genes"] == 1
    assert (summary["cells_in"] - summary["cells_removed"] == summary["cells_out"]).all()
    assert summary["cells_out"].sum() == out.n_obs
    assert sp.issparse(out.X)


def test_non_count_input_skips_count_based_qc():
    adata = make_adata()
    counts = adata.layers["counts"].tolil()
    counts[0, :3] = 500
    adata.X = counts.tocsr()
    del adata.layers["counts"]
    compute_qc_metrics(adata)
    out, summary = filter_cells(adata, counts_based=False, min_cells_per_gene=1, **THRESHOLDS)
    assert "high_mt" not in summary.columns
    assert "c0" in out.obs_names
