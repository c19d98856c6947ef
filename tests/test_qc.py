"""QC metrics and adaptive thresholds on small synthetic AnnData."""

import logging

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score, roc_auc_score

from osteoimmune.errors import QCError
from osteoimmune.qc import (
    _cells_per_gene,
    assign_qc_groups,
    compute_qc_metrics,
    detect_doublets,
    doublet_parts,
    filter_cells,
    finish_qc,
    flag_cells,
    mad_bounds,
)
from osteoimmune.samples import concat_samples, sample_slugs, share_counts, split_by_sample

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


def mad_outlier(values, *, nmads, upper_only=False):
    """Flag values outside :func:`mad_bounds`, as the QC thresholds do."""
    lower, upper = mad_bounds(values, nmads=nmads, upper_only=upper_only)
    values = np.asarray(values, dtype=float)
    return (values < lower) | (values > upper)


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
    for col in (
        "total_counts",
        "n_genes_by_counts",
        "pct_counts_ribo",
        "pct_counts_hb",
        "pct_counts_in_top_20_genes",
    ):
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
    out, summary, _ = filter_cells(adata, counts_based=True, min_cells_per_gene=1, **THRESHOLDS)
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
    out, summary, _ = filter_cells(adata, counts_based=False, min_cells_per_gene=1, **THRESHOLDS)
    assert "high_mt" not in summary.columns
    assert "c0" in out.obs_names


def make_populations(sizes, *, n_genes=200, seed=0, depth=None, program=40):
    """Counts of cell populations, each expressing its own block of ``program`` genes."""
    rng = np.random.default_rng(seed)
    depth = depth or [1.0] * len(sizes)
    blocks = []
    for k, (n, scale) in enumerate(zip(sizes, depth, strict=True)):
        rate = np.full(n_genes, 0.3)
        rate[6 + k * program : 6 + (k + 1) * program] = 6.0
        blocks.append(rng.poisson(rate * scale * rng.uniform(0.8, 1.2, (n, 1)), (n, n_genes)))
    counts = np.vstack(blocks).astype(np.float32)
    adata = make_adata(n_cells=counts.shape[0], n_genes=n_genes, seed=seed)
    adata.X = sp.csr_matrix(counts)
    adata.layers["counts"] = adata.X.copy()
    adata.obs["sample"] = pd.Categorical(["s1"] * counts.shape[0])
    adata.obs["population"] = np.repeat(np.arange(len(sizes)), sizes)
    return adata


def test_lineage_aware_mode_keeps_a_low_count_population():
    # 300 deep cells and 80 "neutrophil-like" ones with a tenth of the counts and fewer genes
    adata = make_populations([300, 80], depth=[1.0, 0.1])
    compute_qc_metrics(adata)
    assign_qc_groups(adata, seed=0, resolution=0.3, min_group_cells=30)
    low = (adata.obs["population"] == 1).to_numpy()
    assert adata.obs["qc_group"][low].nunique() == 1
    assert not set(adata.obs["qc_group"][low]) & set(adata.obs["qc_group"][~low])
    kwargs = dict(counts_based=True, min_cells_per_gene=1, **THRESHOLDS)
    sample_out, _, losses = filter_cells(adata.copy(), lineage_aware=False, **kwargs)
    lineage_out, summary, _ = filter_cells(adata.copy(), lineage_aware=True, **kwargs)
    neutrophils = adata.obs_names[low]
    assert neutrophils.isin(sample_out.obs_names).sum() < 0.1 * low.sum()
    assert neutrophils.isin(lineage_out.obs_names).sum() > 0.9 * low.sum()
    assert losses["removed_sample_mode"].sum() > losses["removed_lineage_mode"].sum()
    assert losses["cells"].sum() == adata.n_obs
    assert summary["cells_out"].sum() == lineage_out.n_obs
    assert "qc_group" in lineage_out.obs


def test_doublets_and_coarse_groups_leave_the_shared_counts_of_a_whole_sample_as_they_were():
    """A one-sample QC job works on its counts without copying them, and never changes them."""
    adata, _ = with_doublets(make_populations([150, 150, 100]), n_doublets=30)
    share_counts(adata)  # as the qc_sample job: X and layers['counts'] one object
    before = adata.X.copy()
    detect_doublets(adata, seed=0, threshold=0.25)
    assign_qc_groups(adata, seed=0, resolution=0.3, min_group_cells=30)
    assert adata.layers["counts"] is adata.X
    assert (adata.X != before).nnz == 0 and adata.X.dtype == before.dtype
    assert adata.obs["qc_group"].nunique() > 1 and adata.obs["predicted_doublet"].any()


def test_small_coarse_groups_fall_back_to_sample_thresholds():
    adata = make_populations([300, 80], depth=[1.0, 0.1])
    compute_qc_metrics(adata)
    assign_qc_groups(adata, seed=0, resolution=0.3, min_group_cells=30)
    kwargs = dict(counts_based=True, min_cells_per_gene=1, lineage_aware=True, **THRESHOLDS)
    _, _, losses = filter_cells(adata, min_group_cells=1000, **kwargs)
    assert (losses["removed_sample_mode"] == losses["removed_lineage_mode"]).all()


def with_doublets(adata, *, n_doublets, seed=0):
    """Append doublets: the summed counts of pairs of cells from different populations."""
    rng = np.random.default_rng(seed)
    pop = adata.obs["population"].to_numpy()
    first = rng.choice(np.flatnonzero(pop == 0), n_doublets)
    second = rng.choice(np.flatnonzero(pop == 1), n_doublets)
    counts = adata.layers["counts"]
    doublets = ad.AnnData(X=counts[first] + counts[second], var=adata.var[[]])
    doublets.obs_names = [f"d{i}" for i in range(n_doublets)]
    doublets.obs["sample"] = "s1"
    singlets = ad.AnnData(X=counts, obs=adata.obs[["sample"]], var=adata.var[[]])
    out = ad.concat([singlets, doublets])
    out.layers["counts"] = out.X.copy()
    out.obs["sample"] = pd.Categorical(out.obs["sample"])
    return out, out.obs_names.str.startswith("d")


def test_scrublet_scores_synthetic_doublets_higher_than_singlets():
    adata, is_doublet = with_doublets(make_populations([150, 150, 100]), n_doublets=30)
    notes = detect_doublets(adata, seed=0, threshold=0.25)
    assert notes == []
    scores = adata.obs["doublet_score"].to_numpy()
    assert not np.isnan(scores).any()
    assert scores[is_doublet].mean() > 3 * scores[~is_doublet].mean()
    called = adata.obs["predicted_doublet"].to_numpy()
    assert called.dtype == bool and called[is_doublet].mean() > called[~is_doublet].mean()
    compute_qc_metrics(adata)
    # doublets have twice the counts: wide MAD bounds leave the doublet call as their only reason
    wide = THRESHOLDS | dict(nmads=50)
    out, summary, _ = filter_cells(adata, counts_based=True, min_cells_per_gene=1, **wide)
    assert summary.loc["s1", "doublet"] == called.sum() > 0
    assert not out.obs["predicted_doublet"].any()
    kept, summary, _ = filter_cells(
        adata, counts_based=True, min_cells_per_gene=1, remove_doublets=False, **wide
    )
    assert "doublet" not in summary.columns
    assert kept.obs["predicted_doublet"].sum() == called.sum()


def test_a_large_sample_is_scored_for_doublets_in_random_parts():
    """Above max_cells a sample is split, each part with its own simulated doublets."""
    parts = doublet_parts(1000, max_cells=300, seed=0)
    assert len(parts) == 4 and all(len(p) <= 300 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1000))
    assert [len(p) for p in doublet_parts(300, max_cells=300, seed=0)] == [300]
    assert [len(p) for p in doublet_parts(10, max_cells=None, seed=0)] == [10]
    adata, is_doublet = with_doublets(make_populations([300, 300, 200]), n_doublets=60)
    whole = adata.copy()
    detect_doublets(whole, seed=0, threshold=0.25)
    detect_doublets(adata, seed=0, threshold=0.25, max_cells=450)  # 860 cells: 2 parts
    split, whole = adata.obs["doublet_score"].to_numpy(), whole.obs["doublet_score"].to_numpy()
    assert not np.isnan(split).any() and not np.allclose(split, whole)  # scored apart
    # the parts separate doublets from singlets about as well as the whole sample does
    auc = {name: roc_auc_score(is_doublet, x) for name, x in (("split", split), ("whole", whole))}
    assert auc["split"] > 0.9 and auc["split"] > auc["whole"] - 0.05, auc


def test_scrublet_with_and_without_mean_centring_both_find_the_doublets():
    adata, is_doublet = with_doublets(make_populations([150, 150, 100]), n_doublets=30)
    centred = adata.copy()
    detect_doublets(adata, seed=0, threshold=0.25, mean_center=False)  # sparse, truncated SVD
    detect_doublets(centred, seed=0, threshold=0.25)  # default: scrublet's z-score and PCA
    sparse_scores = adata.obs["doublet_score"].to_numpy()
    dense_scores = centred.obs["doublet_score"].to_numpy()
    assert not np.allclose(sparse_scores, dense_scores)  # the option reaches scrublet
    for scores in (sparse_scores, dense_scores):
        assert scores[is_doublet].mean() > 3 * scores[~is_doublet].mean()
    assert np.corrcoef(sparse_scores, dense_scores)[0, 1] > 0.8


def test_scrublet_skips_small_samples_with_a_note():
    adata = make_populations([150, 100])
    adata.obs["sample"] = pd.Categorical(["big"] * 220 + ["tiny"] * 30)
    notes = detect_doublets(adata, seed=0, threshold=0.25, min_cells=50)
    assert len(notes) == 1 and "tiny" in notes[0] and "30 cells" in notes[0]
    tiny = (adata.obs["sample"] == "tiny").to_numpy()
    assert adata.obs["doublet_score"][tiny].isna().all()
    assert not adata.obs["doublet_score"][~tiny].isna().any()
    assert not adata.obs["predicted_doublet"][tiny].any()


def test_qc_flags_and_groups_are_deterministic_for_a_seed():
    runs = []
    for _ in range(2):
        adata, _ = with_doublets(make_populations([150, 150, 100]), n_doublets=30)
        adata.obs["population"] = 0
        compute_qc_metrics(adata)
        detect_doublets(adata, seed=3, threshold=0.25)
        assign_qc_groups(adata, seed=3, resolution=0.3, min_group_cells=30)
        out, _, losses = filter_cells(
            adata, counts_based=True, min_cells_per_gene=1, lineage_aware=True, **THRESHOLDS
        )
        runs.append((adata.obs, list(out.obs_names), losses))
    first, second = runs
    pd.testing.assert_series_equal(first[0]["doublet_score"], second[0]["doublet_score"])
    assert (first[0]["qc_group"] == second[0]["qc_group"]).all()
    assert first[0]["qc_group"].nunique() >= 3
    assert first[1] == second[1]
    pd.testing.assert_frame_equal(first[2], second[2])


def too_small_second_sample():
    adata = make_adata(n_cells=60)
    adata.obs["sample"] = pd.Categorical(["big"] * 50 + ["small"] * 10)
    compute_qc_metrics(adata)
    return adata


def test_a_sample_too_small_after_qc_is_dropped_with_a_warning(caplog):
    adata = too_small_second_sample()
    with caplog.at_level(logging.WARNING, logger="osteoimmune"):
        out, summary, _ = filter_cells(
            adata,
            counts_based=True,
            min_cells_per_gene=1,
            min_cells_per_sample=20,
            on_small_sample="drop",
            dataset="toy",
            **THRESHOLDS,
        )
    assert "small" in caplog.text and "toy" in caplog.text
    assert set(out.obs["sample"]) == {"big"}
    assert summary.loc["small", "sample_dropped"] and summary.loc["small", "cells_out"] == 0
    assert summary["cells_out"].sum() == out.n_obs


def test_a_sample_too_small_after_qc_fails_when_configured():
    with pytest.raises(QCError, match=r"toy.*kept fewer than 20 cells: small \(\d cells\)"):
        filter_cells(
            too_small_second_sample(),
            counts_based=True,
            min_cells_per_gene=1,
            min_cells_per_sample=20,
            on_small_sample="fail",
            dataset="toy",
            **THRESHOLDS,
        )


def test_every_sample_too_small_is_a_clear_error():
    adata = make_adata(n_cells=40)
    compute_qc_metrics(adata)
    with pytest.raises(QCError, match=r"Dataset toy: .*every sample.*s1 \(\d+ cells\)"):
        filter_cells(
            adata,
            counts_based=True,
            min_cells_per_gene=1,
            min_cells_per_sample=30,
            dataset="toy",
            **THRESHOLDS,
        )


def test_thresholds_table_gives_the_bounds_the_flags_used():
    adata = make_populations([300, 80], depth=[1.0, 0.1])
    compute_qc_metrics(adata)
    assign_qc_groups(adata, seed=0, resolution=0.3, min_group_cells=30)
    table = flag_cells(
        adata, counts_based=True, lineage_aware=True, min_group_cells=30, **THRESHOLDS
    )
    assert set(table["scope"]) == {"sample", *adata.obs["qc_group"].astype(str)}
    # cells outside the sample-scope bounds are exactly those removed in sample mode
    outside = np.zeros(adata.n_obs, dtype=bool)
    for row in table[table["scope"] == "sample"].itertuples():
        values = adata.obs[row.metric].to_numpy(dtype=float)
        lower = -np.inf if np.isnan(row.lower) else row.lower
        upper = np.inf if np.isnan(row.upper) else row.upper
        # the count bounds are exp(log1p bounds) - 1: compare with a float tolerance
        outside |= (values < lower * (1 - 1e-9)) | (values > upper * (1 + 1e-9))
    np.testing.assert_array_equal(outside, adata.obs["qc_removed_sample_mode"].to_numpy())
    upper_mt = table.query("scope == 'sample' and metric == 'pct_counts_mt'")["upper"].item()
    assert upper_mt <= THRESHOLDS["max_pct_mt"]


def test_gene_group_lists_from_config_replace_the_patterns():
    adata = make_adata(mouse=True)
    compute_qc_metrics(adata, gene_lists={"mt": [adata.var_names[5].upper()]})
    assert adata.var["mt"].sum() == 1 and adata.var["mt"].iloc[5]
    assert adata.var["ribo"].sum() == 2  # groups not listed keep their pattern
    with pytest.raises(QCError, match="Unknown QC gene group"):
        compute_qc_metrics(adata, gene_lists={"mito": ["x"]})


def test_per_sample_jobs_give_the_same_result_as_one_pass(tmp_path):
    adata = make_populations([200, 120, 90])
    adata.obs["sample"] = pd.Categorical(
        np.tile(["b 1", "a/2"], adata.n_obs // 2 + 1)[: adata.n_obs]
    )
    adata.uns["osteoimmune"] = {"dataset": "toy"}
    kwargs = dict(counts_based=True, lineage_aware=True, min_group_cells=30, **THRESHOLDS)
    whole = adata.copy()
    compute_qc_metrics(whole)
    assign_qc_groups(whole, seed=0, resolution=0.3, min_group_cells=30)
    one_pass, summary, _ = filter_cells(whole, min_cells_per_gene=1, **kwargs)
    table = split_by_sample(adata, tmp_path)
    assert list(table["slug"]) == ["b_1", "a_2"] and (tmp_path / "samples.tsv").exists()
    parts = []
    for slug in table["slug"]:
        part = ad.read_h5ad(tmp_path / f"{slug}.h5ad")
        compute_qc_metrics(part)
        assign_qc_groups(part, seed=0, resolution=0.3, min_group_cells=30)
        flag_cells(part, **kwargs)
        parts.append(part)
    joined, summary_jobs, _ = finish_qc(concat_samples(parts), min_cells_per_gene=1)
    assert list(joined.obs["sample"].cat.categories) == ["b 1", "a/2"]
    assert sorted(joined.obs_names) == sorted(one_pass.obs_names)
    pd.testing.assert_frame_equal(
        summary_jobs.rename(index=str).sort_index(),
        summary.rename(index=str).sort_index(),
        check_index_type=False,
    )
    assert not any(c.startswith("qc_fail_") for c in joined.obs.columns)


def test_sample_slugs_are_unique_and_file_safe():
    slugs = sample_slugs(pd.Series(["a b", "a_b", "../x", "a b"]))
    assert slugs == {"a b": "a_b", "a_b": "a_b_2", "../x": "x"}


def test_equal_counts_are_held_once_and_still_written_twice(tmp_path):
    adata = make_adata()
    assert share_counts(adata) and adata.layers["counts"] is adata.X
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert (back.layers["counts"] != back.X).nnz == 0 and back.layers["counts"] is not back.X
    different = make_adata()
    different.layers["counts"].data[0] += 1  # e.g. X already normalised
    assert not share_counts(different)
    assert different.layers["counts"] is not different.X


def test_cells_per_gene_counts_kept_rows_without_explicit_zeros():
    rng = np.random.default_rng(1)
    x = sp.random(50, 30, density=0.3, format="csr", random_state=2, dtype=np.float32)
    x.data[::7] = 0  # explicit zeros are not detections
    keep = rng.random(50) < 0.6
    expected = np.asarray((x[keep].toarray() != 0).sum(axis=0)).ravel()
    np.testing.assert_array_equal(_cells_per_gene(x, keep), expected)
    np.testing.assert_array_equal(_cells_per_gene(x.tocsc(), keep), expected)


def low_mito_group(*, n_high=300, n_low=100, n_between=12, seed=0):
    """A sample whose second population (macrophage-like) has far less mitochondrial RNA.

    Population 0: 8-14 % mito counts; population 1: 1.5-2.5 %, but for ``n_between`` cells at
    7 %: inside the sample's mito bound, far above the group's own one.
    """
    adata = make_populations([n_high, n_low], seed=seed)
    rng = np.random.default_rng(seed)
    target = np.r_[rng.uniform(8, 14, n_high), rng.uniform(1.5, 2.5, n_low)]
    between = np.arange(n_high, n_high + n_between)
    target[between] = 7.0
    counts = adata.layers["counts"].tolil()
    other = np.asarray(adata.layers["counts"][:, 3:].sum(axis=1)).ravel()
    counts[:, :3] = 0
    counts[:, 0] = np.round(other * target / (100 - target)).reshape(-1, 1)
    adata.X = counts.tocsr()
    adata.layers["counts"] = adata.X.copy()
    compute_qc_metrics(adata)
    assign_qc_groups(adata, seed=0, resolution=0.3, min_group_cells=30)
    return adata, adata.obs_names[between]


def test_lineage_aware_qc_never_removes_a_cell_the_sample_thresholds_keep():
    adata, between = low_mito_group()
    low = (adata.obs["population"] == 1).to_numpy()
    assert adata.obs["qc_group"][low].nunique() == 1  # the low-mito population is one group
    kwargs = dict(counts_based=True, min_cells_per_gene=1, lineage_aware=True, **THRESHOLDS)
    tight, _, _ = filter_cells(adata.copy(), lineage_can_tighten=True, **kwargs)
    loose, _, losses = filter_cells(adata, **kwargs)  # default: never stricter
    # the group's own mito bound removes the 7 % cells; the sample's bound keeps them
    assert not between.isin(tight.obs_names).any()
    assert between.isin(loose.obs_names).all()
    sample_kept = ~adata.obs["qc_removed_sample_mode"].to_numpy()
    assert not (sample_kept & adata.obs["qc_removed_lineage_mode"].to_numpy()).any()
    assert adata.obs_names[sample_kept].isin(loose.obs_names).all()
    # the losses table shows both lineage modes and the cells only tightening removes
    group = adata.obs.loc[between[0], "qc_group"]
    row = losses.loc[("s1", group)]
    assert row["removed_by_tightening"] >= len(between)
    assert row["removed_lineage_own_bounds"] >= row["removed_sample_mode"] + len(between)
    assert row["removed_lineage_mode"] == row["removed_lineage_never_stricter"]
    assert (losses["removed_lineage_never_stricter"] <= losses["removed_sample_mode"]).all()
    tightened = adata.obs["qc_removed_lineage_own_bounds"].to_numpy() & sample_kept
    assert losses["removed_by_tightening"].sum() == tightened.sum()
    assert set(between) <= set(adata.obs_names[tightened])


def test_group_bounds_are_widened_to_the_sample_bounds_unless_they_may_tighten():
    adata, _ = low_mito_group()
    tables = {
        tighten: flag_cells(
            adata, counts_based=True, lineage_aware=True, lineage_can_tighten=tighten, **THRESHOLDS
        ).set_index(["scope", "metric"])
        for tighten in (False, True)
    }
    group = adata.obs.loc[adata.obs["population"] == 1, "qc_group"].iloc[0]
    sample_mt = tables[False].loc[("sample", "pct_counts_mt"), "upper"]
    assert tables[True].loc[(group, "pct_counts_mt"), "upper"] < 4 < sample_mt
    assert tables[False].loc[(group, "pct_counts_mt"), "upper"] == sample_mt
    for (scope, metric), row in tables[False].iterrows():
        sample = tables[False].loc[("sample", metric)]
        assert not row["lower"] > sample["lower"], (scope, metric)  # NaN: unbounded
        assert not row["upper"] < sample["upper"], (scope, metric)


def test_gzipped_tables_are_byte_reproducible(tmp_path, monkeypatch):
    import gzip
    import time

    from osteoimmune.tables import write_tsv

    table = pd.DataFrame({"n_counts": [1.5, 2.0]}, index=["c1", "c2"])
    write_tsv(table, tmp_path / "a.tsv.gz", index=True)
    later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: later)  # a run an hour later
    write_tsv(table, tmp_path / "a2.tsv.gz", index=True)
    first, second = (tmp_path / "a.tsv.gz").read_bytes(), (tmp_path / "a2.tsv.gz").read_bytes()
    assert first[4:8] == b"\0\0\0\0"  # gzip header MTIME
    assert gzip.decompress(first) == gzip.decompress(second)
    assert first[4:8] == second[4:8]


def test_counts_equal_to_x_are_written_once_and_read_back_as_one_object(tmp_path):
    """Before normalisation an intermediate file holds the raw counts once, not twice."""
    import h5py

    from osteoimmune.samples import read_counts_once, write_counts_once

    adata = make_adata()
    adata.uns["osteoimmune"] = {"dataset": "toy"}
    assert adata.layers["counts"] is not adata.X
    assert write_counts_once(adata, tmp_path / "once.h5ad", compression="lzf")
    assert "counts" in adata.layers and "counts_in_X" not in adata.uns["osteoimmune"]
    with h5py.File(tmp_path / "once.h5ad", "r") as handle:
        assert "counts" not in handle["layers"]
    back = read_counts_once(tmp_path / "once.h5ad")
    assert back.layers["counts"] is back.X and "counts_in_X" not in back.uns["osteoimmune"]
    assert (back.X != adata.X).nnz == 0 and back.uns["osteoimmune"] == {"dataset": "toy"}
    adata.X = adata.X * 2  # normalised: X and counts differ, both are written
    assert not write_counts_once(adata, tmp_path / "both.h5ad")
    back = read_counts_once(tmp_path / "both.h5ad")
    assert back.layers["counts"] is not back.X
    assert (back.layers["counts"] != adata.layers["counts"]).nnz == 0


def test_uncompressed_h5ad_stores_sparse_arrays_contiguously_and_reads_back_the_same(tmp_path):
    """Uncompressed intermediates: one contiguous block per sparse array, a standard h5ad."""
    import anndata as ad
    import h5py

    from osteoimmune.samples import write_h5ad

    adata = make_adata()
    adata.layers["normalised"] = adata.X * 0.5
    adata.obs["label"] = pd.Categorical(np.resize(["a", "b", "c"], adata.n_obs))
    adata.obsm["X_pca"] = np.arange(adata.n_obs * 2, dtype=float).reshape(-1, 2)
    adata.uns["osteoimmune"] = {"dataset": "toy", "seed": 0}
    tiny = adata[:2].copy()  # arrays shorter than anndata's chunks
    for name, data, compression in [
        ("plain.h5ad", adata, None),
        ("tiny.h5ad", tiny, None),
        ("lzf.h5ad", adata, "lzf"),
    ]:
        write_h5ad(data, tmp_path / name, compression=compression)
        with h5py.File(tmp_path / name, "r") as handle:
            for key in ("X/data", "X/indices", "X/indptr", "layers/normalised/data"):
                assert handle[key].compression == compression
                # anndata's own writer keeps sparse arrays resizable, in chunks
                assert (handle[key].chunks is None) == (compression is None)
        back = ad.read_h5ad(tmp_path / name)
        assert (back.X != data.X).nnz == 0
        assert (back.layers["normalised"] != data.layers["normalised"]).nnz == 0
        pd.testing.assert_frame_equal(back.obs, data.obs)
        np.testing.assert_array_equal(back.obsm["X_pca"], data.obsm["X_pca"])
        assert back.uns["osteoimmune"] == data.uns["osteoimmune"]
        backed = ad.read_h5ad(tmp_path / name, backed="r")  # as the report reads it
        assert (backed.X[:2] != data.X[:2]).nnz == 0
        backed.file.close()


def test_coarse_groups_of_a_large_sample_from_a_subsample_find_the_same_lineages():
    """Above max_cells the groups come from a subsample; every cell joins its population's."""
    from osteoimmune.qc import coarse_groups

    adata = make_populations([400, 300, 200])
    whole = coarse_groups(adata, seed=0, resolution=0.3)
    sampled = coarse_groups(adata, seed=0, resolution=0.3, max_cells=300)
    population = adata.obs["population"].to_numpy()
    assert len(sampled) == adata.n_obs and not pd.isna(sampled).any()
    assert adjusted_rand_score(population, whole) == 1
    assert adjusted_rand_score(population, sampled) == 1
    assert np.array_equal(sampled, coarse_groups(adata, seed=0, resolution=0.3, max_cells=300))


def test_read_parts_reads_only_the_matrices_a_job_uses(tmp_path):
    from osteoimmune.samples import read_parts

    adata = make_adata()
    adata.uns["osteoimmune"] = {"dataset": "toy"}
    adata.X = adata.X * 2
    adata.obsm["X_pca"] = np.ones((adata.n_obs, 2))
    adata.write_h5ad(tmp_path / "a.h5ad")
    x_only = read_parts(tmp_path / "a.h5ad")
    assert (x_only.X != adata.X).nnz == 0 and not x_only.layers
    assert x_only.obs.equals(adata.obs) and x_only.uns["osteoimmune"] == {"dataset": "toy"}
    assert np.array_equal(x_only.obsm["X_pca"], adata.obsm["X_pca"])
    counts = read_parts(tmp_path / "a.h5ad", x=False, layers=("counts",))
    assert counts.X is None and (counts.layers["counts"] != adata.layers["counts"]).nnz == 0
    assert counts.shape == adata.shape


def test_annotations_written_alone_go_back_onto_the_matrices(tmp_path):
    """score_signatures writes its scores without the matrices; export_h5ad joins them."""
    from osteoimmune.samples import annotations, read_parts, with_annotations, write_h5ad

    data = make_adata()
    data.obsp["connectivities"] = sp.identity(data.n_obs, format="csr", dtype=np.float32)
    data.varm["PCs"] = np.ones((data.n_vars, 2))
    data.write_h5ad(tmp_path / "data.h5ad")
    scored = data.copy()
    scored.obs["score_x"] = np.arange(scored.n_obs, dtype=float)
    scored.obsm["signature_p"] = pd.DataFrame({"x": 0.5}, index=scored.obs_names)
    scored.uns["signature_coverage"] = {"x": 1}
    write_h5ad(annotations(scored), tmp_path / "scores.h5ad")
    with h5py.File(tmp_path / "scores.h5ad", "r") as handle:
        assert "X" not in handle and not handle["layers"].keys()  # no matrices
    alone = read_parts(tmp_path / "scores.h5ad", x=False)
    joined = with_annotations(ad.read_h5ad(tmp_path / "data.h5ad"), alone)
    assert joined.obs.equals(scored.obs) and joined.var.equals(data.var)
    assert joined.uns["signature_coverage"] == {"x": 1}
    assert joined.obsm["signature_p"].equals(scored.obsm["signature_p"])
    assert (joined.X != data.X).nnz == 0
    assert (joined.layers["counts"] != data.layers["counts"]).nnz == 0
    assert (joined.obsp["connectivities"] != data.obsp["connectivities"]).nnz == 0
    assert np.array_equal(joined.varm["PCs"], data.varm["PCs"])
    with pytest.raises(QCError, match="other obs names"):
        with_annotations(data[1:].copy(), alone)
    # the workflow's export step names both files
    from export_h5ad import main as export

    data[1:].copy().write_h5ad(tmp_path / "other.h5ad")
    with pytest.raises(QCError, match=r"scores\.h5ad does not fit .*other\.h5ad"):
        export(
            matrices=tmp_path / "other.h5ad", scores=tmp_path / "scores.h5ad", out=tmp_path / "o"
        )
    export(
        matrices=tmp_path / "data.h5ad", scores=tmp_path / "scores.h5ad", out=tmp_path / "f.h5ad"
    )
    assert ad.read_h5ad(tmp_path / "f.h5ad").obs.equals(scored.obs)


def test_annotated_cells_are_read_from_the_matrices_and_the_annotations_alone(tmp_path):
    """annotate_cells writes annotations alone; the later jobs join them to the clustered file."""
    from osteoimmune.samples import annotations, read_annotated, write_h5ad

    data = make_adata()
    data.obsp["connectivities"] = sp.identity(data.n_obs, format="csr", dtype=np.float32)
    write_h5ad(data, tmp_path / "clustered.h5ad")
    typed = data.copy()
    typed.obs["cell_type"] = pd.Categorical(["B cell"] * typed.n_obs)
    typed.uns["annotation"] = {"reference": {"id": "", "note": "none"}}
    write_h5ad(annotations(typed), tmp_path / "annotated.h5ad")
    with h5py.File(tmp_path / "annotated.h5ad", "r") as handle:
        assert (
            "X" not in handle and not handle["layers"].keys() and not handle.get("obsp", {}).keys()
        )
    cells = read_annotated(tmp_path / "clustered.h5ad", tmp_path / "annotated.h5ad")
    assert cells.obs.equals(typed.obs) and cells.uns["annotation"]["reference"]["note"] == "none"
    assert (cells.X != data.X).nnz == 0 and not cells.layers
    counts = read_annotated(
        tmp_path / "clustered.h5ad", tmp_path / "annotated.h5ad", x=False, layers=("counts",)
    )
    assert counts.X is None and (counts.layers["counts"] != data.layers["counts"]).nnz == 0
    whole = read_annotated(
        tmp_path / "clustered.h5ad", tmp_path / "annotated.h5ad", everything=True
    )
    assert (whole.obsp["connectivities"] != data.obsp["connectivities"]).nnz == 0
    assert whole.obs.equals(typed.obs) and "counts" in whole.layers
    # files of two runs: an error naming both
    write_h5ad(data[1:].copy(), tmp_path / "other.h5ad")
    with pytest.raises(QCError, match=r"annotated\.h5ad does not fit .*other\.h5ad"):
        read_annotated(tmp_path / "other.h5ad", tmp_path / "annotated.h5ad")


def test_doublets_scored_by_worker_processes_equal_those_scored_here():
    """qc_sample's second thread: scrublet in a worker, the same scores and calls."""
    from osteoimmune.qc import start_doublets
    from osteoimmune.workers import worker_pool

    adata, _ = with_doublets(make_populations([300, 300, 200]), n_doublets=60)
    adata.obs["sample"] = pd.Categorical(np.where(np.arange(adata.n_obs) % 3, "s1", "s2"))
    here = adata.copy()
    notes = detect_doublets(here, seed=0, threshold=0.25, max_cells=300)
    with worker_pool(2) as pool:
        finish = start_doublets(adata, seed=0, threshold=0.25, max_cells=300, pool=pool)
        assert "doublet_score" not in adata.obs  # stored on request
        assert finish() == notes
    pd.testing.assert_frame_equal(adata.obs, here.obs)
    assert here.obs["doublet_score"].notna().all()


def test_doublet_parts_are_handed_to_the_pool_a_few_at_a_time():
    """A sample of many parts: at most ``in_flight`` parts' counts queued or running at once,
    not all of them cut up front; the scores are those scored here."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from osteoimmune.qc import start_doublets

    class Counting(ThreadPoolExecutor):
        def __init__(self):
            super().__init__(4)
            self.lock, self.open, self.most = threading.Lock(), 0, 0

        def submit(self, fn, *args, **kwargs):
            with self.lock:
                self.open += 1
                self.most = max(self.most, self.open)
            future = super().submit(fn, *args, **kwargs)
            future.add_done_callback(self._done)  # before start_doublets' own callback
            return future

        def _done(self, _):
            with self.lock:
                self.open -= 1

    adata, _ = with_doublets(make_populations([300, 300, 200]), n_doublets=60)
    adata.obs["sample"] = "s1"
    here = adata.copy()
    detect_doublets(here, seed=0, threshold=0.25, max_cells=150)  # 860 cells: 6 parts
    with Counting() as pool:
        start_doublets(adata, seed=0, threshold=0.25, max_cells=150, pool=pool, in_flight=2)()
    assert pool.most == 2
    pd.testing.assert_frame_equal(adata.obs, here.obs)


def test_a_job_asks_for_a_second_thread_exactly_when_it_uses_workers(tmp_path):
    """qc_sample and cluster_cells: threads from the cell count, by the scripts' own rule."""
    from osteoimmune.workers import PARALLEL_MIN_CELLS, h5ad_cells, threads_for_file, workers_for

    for n in (PARALLEL_MIN_CELLS - 1, PARALLEL_MIN_CELLS):
        path = tmp_path / f"{n}.h5ad"
        ad.AnnData(sp.csr_matrix((n, 3), dtype=np.float32)).write_h5ad(path)
        assert h5ad_cells(path) == n
        expected = 2 if n >= PARALLEL_MIN_CELLS else 1
        assert threads_for_file(path, 2) == workers_for(n, 2) == expected
    assert threads_for_file(tmp_path / "not_yet_written.h5ad", 2) == 1
