"""Normalisation, HVG, embedding and Leiden on synthetic data; determinism."""

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from osteoimmune.cluster import embed, leiden, normalize, select_hvg


def make_adata(seed=0, n_per_group=80, n_genes=120):
    """Three groups of cells with distinct expressed gene blocks, two donors."""
    rng = np.random.default_rng(seed)
    blocks = []
    for g in range(3):
        rates = np.full(n_genes, 0.3)
        rates[g * 30:(g + 1) * 30] = 6.0
        blocks.append(rng.poisson(rates, size=(n_per_group, n_genes)))
    X = sp.csr_matrix(np.vstack(blocks).astype(np.float32))
    adata = ad.AnnData(X=X, layers={"counts": X.copy()})
    adata.var_names = [f"G{i}" for i in range(n_genes)]
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    adata.obs["group"] = np.repeat(["a", "b", "c"], n_per_group)
    adata.obs["donor"] = pd.Categorical(np.tile(["d1", "d2"], adata.n_obs // 2))
    adata.uns["osteoimmune"] = {}
    return adata


def run(adata, *, seed=0, value_type="counts"):
    normalize(adata, value_type=value_type)
    select_hvg(adata, n_top_genes=60, value_type=value_type, batch_key="donor")
    note = embed(adata, n_pcs=10, n_neighbors=10, batch_key="donor", seed=seed)
    leiden(adata, resolution=0.5, seed=seed)
    return note


def test_clusters_recover_the_groups_with_harmony_across_donors():
    from sklearn.metrics import adjusted_rand_score

    adata = make_adata()
    note = run(adata)
    assert "harmony" in note and "X_pca_harmony" in adata.obsm
    assert adjusted_rand_score(adata.obs["group"], adata.obs["leiden"]) > 0.9
    assert adata.var["highly_variable"].sum() == 60
    assert sp.issparse(adata.X) and sp.issparse(adata.layers["counts"])


def test_normalize_counts_vs_non_counts():
    adata = make_adata()
    normalize(adata, value_type="counts")
    totals = np.expm1(adata.X.toarray()).sum(1)
    np.testing.assert_allclose(totals, 1e4, rtol=1e-3)
    tpm = make_adata()
    raw = tpm.X.toarray()
    normalize(tpm, value_type="tpm")
    np.testing.assert_allclose(tpm.X.toarray(), np.log1p(raw), rtol=1e-6)


def test_same_input_and_seed_give_identical_clusters_and_embedding():
    first, second = make_adata(), make_adata()
    run(first, seed=3)
    run(second, seed=3)
    assert first.obs["leiden"].tolist() == second.obs["leiden"].tolist()
    np.testing.assert_array_equal(first.obsm["X_umap"], second.obsm["X_umap"])


def test_one_donor_skips_integration_and_small_panel_keeps_all_genes():
    adata = make_adata(n_genes=50)
    adata.obs["donor"] = "d1"
    note = run(adata)
    assert "no batch integration" in note and "X_pca_harmony" not in adata.obsm
    assert adata.var["highly_variable"].all()
