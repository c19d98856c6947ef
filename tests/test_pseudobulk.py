"""Pseudobulk differential expression: synthetic unit tests and known-truth studies of real cells.

The e2e tests build pseudo-donor studies from the mirror's Luecken 2021 CITE-seq cells
(tests/pseudodonors.py) with spiked genes, composition shifts and donor effects, and check
what PyDESeq2 on the pseudobulks finds against that truth.
"""

import io

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from pseudodonors import make_study, pick_genes, real_cells, score
from scipy import stats

from osteoimmune.errors import OsteoimmuneError
from osteoimmune.pseudobulk import (
    ENRICHMENT_COLUMNS,
    RESULT_COLUMNS,
    SUMMARY_COLUMNS,
    TABLE_COLUMNS,
    PseudobulkError,
    compare_expression,
    de_enrichment,
    differential_expression,
    highlight,
    osteoimmune_genes,
    pseudobulk,
    top_gene_heatmap,
    volcano,
)
from osteoimmune.signatures import load_library

ALPHA = 0.05
MONO, TCELL = "CD14+ Mono", "CD4+ T activated"


# --- synthetic cells ---------------------------------------------------------------------


def _cells(layout: dict, *, n_genes: int = 40, covariates=None, seed: int = 0) -> ad.AnnData:
    """``layout``: sample -> (donor, condition, {cell_type: n_cells}); Poisson(3) counts."""
    rng = np.random.default_rng(seed)
    rows = [
        {"sample": s, "donor": d, "condition": c, "cell_type": t}
        for s, (d, c, types) in layout.items()
        for t, n in types.items()
        for _ in range(n)
    ]
    obs = pd.DataFrame(rows, index=[f"c{i}" for i in range(len(rows))])
    conditions = list(dict.fromkeys(obs["condition"]))
    for key in ("sample", "donor", "cell_type"):
        obs[key] = pd.Categorical(obs[key])
    obs["condition"] = pd.Categorical(obs["condition"], categories=conditions)
    for name, values in (covariates or {}).items():
        obs[name] = values(obs)
    counts = sp.csr_matrix(rng.poisson(3.0, (len(obs), n_genes)).astype(np.float32))
    adata = ad.AnnData(
        X=counts.copy(), obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)])
    )
    adata.layers["counts"] = counts
    adata.uns["osteoimmune"] = {
        "dataset": "synthetic",
        "species": "human",
        "covariates": list(covariates or {}),
    }
    return adata


def _two_conditions(n_per_condition: int, cells: int = 30) -> dict:
    return {
        f"{c}{i}": (f"{c}_d{i}", c, {"mono": cells, "T": cells})
        for c in ("healthy", "osteoporosis")
        for i in range(n_per_condition)
    }


def test_pseudobulk_sums_equal_the_cells_counts_and_skip_unassigned():
    layout = {
        "s1": ("d1", "healthy", {"mono": 12, "T": 15, "unassigned": 20}),
        "s2": ("d2", "osteoporosis", {"mono": 14, "T": 11, "unassigned": 9}),
    }
    adata = _cells(layout)
    pb, table = pseudobulk(adata, min_cells=1, min_counts=0)
    counts = adata.layers["counts"]
    for name, row in pb.obs.iterrows():
        mask = (adata.obs["sample"] == row["sample"]) & (adata.obs["cell_type"] == row["group"])
        expected = np.asarray(counts[mask.to_numpy()].sum(axis=0)).ravel()
        np.testing.assert_array_equal(pb[name].X.ravel(), expected)
        assert row["n_cells"] == mask.sum()
        assert row["total_counts"] == expected.sum()
    assert "unassigned" not in set(table["group"]) | set(pb.obs["group"])
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert sorted(pb.obs["group"]) == ["T", "T", "mono", "mono"]
    assert pb.X.dtype == np.int64
    # changing the unassigned cells' counts changes nothing
    other = adata.copy()
    unassigned = (other.obs["cell_type"] == "unassigned").to_numpy()
    dense = other.layers["counts"].toarray()
    dense[unassigned] += 100
    other.layers["counts"] = sp.csr_matrix(dense)
    np.testing.assert_array_equal(pseudobulk(other, min_cells=1, min_counts=0)[0].X, pb.X)


def test_min_cells_and_min_counts_filters_say_why():
    layout = {
        "s1": ("d1", "healthy", {"mono": 12, "T": 5}),
        "s2": ("d2", "osteoporosis", {"mono": 30, "T": 12}),
    }
    adata = _cells(layout, n_genes=20)  # ~60 counts per cell
    pb, table = pseudobulk(adata, min_cells=10, min_counts=1000)
    by = table.set_index(["sample", "group"])
    assert by.loc[("s1", "T"), "reason"] == "5 cells < min_cells 10"
    assert by.loc[("s1", "mono"), "reason"].endswith("counts < min_counts 1000")
    assert by.loc[("s2", "mono"), "kept"] and by.loc[("s2", "mono"), "reason"] == ""
    assert by.loc[("s2", "T"), "reason"].endswith("counts < min_counts 1000")
    assert list(pb.obs_names) == ["s2|mono"]
    assert table["kept"].sum() == pb.n_obs


def test_absent_sample_x_group_is_a_table_row_not_a_pseudobulk():
    layout = {
        "s1": ("d1", "healthy", {"mono": 12, "T": 12}),
        "s2": ("d2", "osteoporosis", {"mono": 12}),
    }
    pb, table = pseudobulk(_cells(layout), min_cells=10, min_counts=0)
    row = table[(table["sample"] == "s2") & (table["group"] == "T")].iloc[0]
    assert (row["n_cells"], row["kept"], row["reason"]) == (0, False, "no cells")
    assert pb.n_obs == 3 and (pb.X.sum(axis=1) > 0).all()


def test_covariates_numeric_averaged_categorical_single_or_missing():
    layout = _two_conditions(1, cells=10)
    covariates = {
        "age": lambda obs: np.where(obs["sample"] == "healthy0", 40.0, 60.0)
        + np.arange(len(obs)) % 2,
        "site": lambda obs: pd.Categorical(
            np.where(np.arange(len(obs)) % 2 & (obs["sample"] == "healthy0"), "a", "b")
        ),
    }
    pb, _ = pseudobulk(_cells(layout, covariates=covariates), min_cells=1, min_counts=0)
    obs = pb.obs.set_index(["sample", "group"])
    assert obs.loc[("healthy0", "mono"), "age"] == pytest.approx(40.5)
    assert pd.isna(obs.loc[("healthy0", "mono"), "site"])  # two sites in one sample
    assert obs.loc[("osteoporosis0", "T"), "site"] == "b"
    assert list(pb.obs["condition"].cat.categories) == ["healthy", "osteoporosis"]


def test_bad_input_is_a_clear_error():
    adata = _cells(_two_conditions(1))
    with pytest.raises(PseudobulkError, match="no layer 'raw'"):
        pseudobulk(adata, layer="raw")
    floats = adata.copy()
    floats.layers["counts"] = floats.layers["counts"] * 0.5
    with pytest.raises(PseudobulkError, match="non-integer"):
        pseudobulk(floats)
    mixed = adata.copy()
    mixed.obs["condition"] = pd.Categorical(
        np.where(np.arange(mixed.n_obs) % 2, "healthy", "osteoporosis")
    )
    with pytest.raises(PseudobulkError, match="several donors or conditions"):
        pseudobulk(mixed)
    with pytest.raises(OsteoimmuneError, match="Reference condition 'control'"):
        compare_expression(adata, reference="control")
    no_type = adata.copy()
    del no_type.obs["cell_type"]
    with pytest.raises(PseudobulkError, match=r"\['cell_type'\]"):
        pseudobulk(no_type)


def test_one_sample_per_condition_is_not_tested():
    adata = _cells(_two_conditions(1))
    results, summary, _ = compare_expression(adata, reference="healthy", min_counts=0)
    assert results.empty and list(results.columns) == list(RESULT_COLUMNS)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert not summary["tested"].any()
    assert set(summary["reason"]) == {
        "1 sample in osteoporosis; 1 sample in healthy: no test (needs 2 per condition)"
    }


def test_single_condition_tests_nothing():
    layout = {f"s{i}": (f"d{i}", "healthy", {"mono": 20}) for i in range(4)}
    results, summary, table = compare_expression(_cells(layout), min_counts=0)
    assert results.empty and table["kept"].all()
    assert summary[["group", "tested", "reason"]].values.tolist() == [
        ["mono", False, "single condition (healthy): nothing to compare"]
    ]


def test_constant_and_confounded_covariates_are_dropped_with_a_note():
    layout = _two_conditions(3, cells=15)
    covariates = {
        "batch": lambda obs: pd.Categorical(obs["condition"].astype(str) + "_run"),
        "site": lambda obs: pd.Categorical(["a"] * len(obs)),
        "age years": lambda obs: 30.0 + (7.0 * obs["sample"].cat.codes.to_numpy()) % 5,
    }
    adata = _cells(layout, n_genes=30, covariates=covariates)
    pb, _ = pseudobulk(adata, min_cells=10, min_counts=0)
    results, summary = differential_expression(
        pb, group="mono", reference="healthy", covariates=list(covariates), paired=True
    )
    row = summary.iloc[0]
    assert row["tested"] and row["design"] == "~ `age years` + condition"
    assert "paired, but no donor of mono is in two tested conditions" in row["note"]
    assert "covariate batch dropped: confounded with condition or donor in mono" in row["note"]
    assert "covariate site dropped: constant in mono" in row["note"]
    assert row["genes_tested"] == results["gene"].nunique() > 0
    assert (results["contrast"] == "osteoporosis vs healthy").all()


def test_osteoimmune_genes_are_species_correct_and_highlight_keeps_them():
    library = load_library()
    human, mouse = osteoimmune_genes("human"), osteoimmune_genes("mouse")
    assert human[:8] == ["TNFSF11", "TNFRSF11B", "TNFRSF11A", "CSF1", "IL1B", "TNF", "IL6", "IL17A"]
    assert mouse[:3] == ["Tnfsf11", "Tnfrsf11b", "Tnfrsf11a"]
    for name in ("macrophage_M1_classical_core", "macrophage_M2a_alternative_core"):
        assert set(library.genes(name, "mouse")) <= set(mouse)
        assert set(library.genes(name, "human")) <= set(human)
    assert len(human) == len(set(human))
    with pytest.raises(PseudobulkError, match="Unknown species 'rat'"):
        osteoimmune_genes("rat")
    results = pd.DataFrame({"gene": ["A", "TNFSF11", "B", "IL6"], "padj": [0.01, 0.9, 0.02, 1.0]})
    assert highlight(results, human)["gene"].tolist() == ["TNFSF11", "IL6"]


# --- pseudo-donor studies of real cells ----------------------------------------------------


def _top_genes(cells: ad.AnnData, n: int) -> ad.AnnData:
    # the n genes with most counts: PyDESeq2's time grows with the genes, and most of the
    # others would fail the expression filter anyway
    totals = np.asarray(cells.layers["counts"].sum(axis=0)).ravel()
    keep = np.sort(np.argsort(-totals, kind="stable")[:n])
    return cells[:, keep].copy()


@pytest.fixture(scope="module")
def cells(mirror):
    """The mirror's Luecken 2021 CITE-seq cells (RNA), their 300 genes with most counts."""
    return _top_genes(real_cells(mirror), 300)


@pytest.fixture(scope="module")
def spiked(cells):
    """3 + 3 donors; 30 monocyte genes spiked (15 x3, 15 x1/3); T cells doubled in cases."""
    genes = pick_genes(cells, MONO, n=30, min_mean=1.0, seed=1)
    fold = np.where(np.arange(30) % 2 == 0, 3.0, 1 / 3)
    adata, truth = make_study(
        cells,
        cell_types=[MONO, TCELL],
        spike={MONO: (genes, fold)},
        shift={TCELL: 2.0},
        donor_effect_sd=0.1,
        seed=0,
    )
    results, summary, table = compare_expression(adata, reference="healthy", alpha=ALPHA)
    return adata, truth, results, summary, table


@pytest.fixture(scope="module")
def donor_null(cells):
    """3 + 3 donors with a strong donor effect and no condition effect."""
    adata, _ = make_study(cells, cell_types=[MONO], donor_effect_sd=0.3, seed=2)
    return adata, compare_expression(adata, reference="healthy", alpha=ALPHA)


def _false_bound(n_called: int) -> int:
    # binomial slack: at FDR 0.05, the false calls among n_called should rarely exceed the
    # 99th percentile of Binomial(n_called, 0.05)
    return int(stats.binom.ppf(0.99, max(n_called, 1), ALPHA))


@pytest.mark.e2e
def test_spiked_genes_are_found(spiked):
    _, truth, results, summary, _ = spiked
    found = score(results, truth, alpha=ALPHA)
    assert found["sensitivity"] >= 0.7, f"sensitivity at fold change 3, 3+3 donors: {found}"
    mono = summary.set_index("group").loc[MONO]
    assert mono["tested"] and mono["design"] == "~ condition" and mono["genes_tested"] > 200
    calls = results[(results["group"] == MONO) & results["gene"].isin(truth["gene"])]
    up = truth.set_index("gene")["fold_change"] > 1
    signs = np.sign(calls.set_index("gene")["log2fc"]) == np.where(up[calls["gene"]], 1, -1)
    assert signs.all(), "every spiked gene changes in the spiked direction"
    shrunk, mle = calls["log2fc_shrunk"].abs(), calls["log2fc"].abs()
    assert (shrunk <= mle + 1e-6).mean() > 0.9, "apeGLM shrinks towards 0"


@pytest.mark.e2e
def test_false_discoveries_stay_within_the_fdr(spiked):
    _, truth, results, summary, _ = spiked
    found = score(results, truth, alpha=ALPHA)
    bound = _false_bound(found["n_called"])
    assert found["false"] <= bound, f"false calls over {found['n_called']}: {found}"
    # the composition shift alone (T cells doubled) changes no gene's expression
    shifted = summary.set_index("group").loc[TCELL]
    assert shifted["tested"] and shifted["n_significant"] <= 1, shifted.to_dict()


@pytest.mark.e2e
def test_donor_effect_alone_gives_no_significant_genes(donor_null):
    _, (results, summary, _) = donor_null
    # Complete null: BH should make any call in at most 5% of studies. With 3 + 3 donors
    # PyDESeq2 is somewhat liberal here (p < 0.05 for 3-10% of genes; 1-2 calls in 5 of 14
    # seeds of this study, none in this one), so at most 2 calls.
    assert summary["tested"].all()
    assert (results["padj"] < ALPHA).sum() <= 2, results.head().to_dict("records")


@pytest.mark.e2e
def test_paired_donors_are_blocked(cells):
    genes = pick_genes(cells, MONO, n=20, min_mean=1.0, seed=3)
    adata, truth = make_study(
        cells,
        cell_types=[MONO],
        n_donors_per_condition=3,
        paired=True,
        spike={MONO: (genes, np.where(np.arange(20) % 2 == 0, 2.5, 1 / 2.5))},
        donor_effect_sd=0.5,
        seed=4,
    )
    assert adata.obs.groupby("donor", observed=True)["condition"].nunique().eq(2).all()
    results, summary, _ = compare_expression(adata, reference="healthy", paired=True)
    assert summary.loc[0, "design"] == "~ donor + condition"
    found = score(results, truth, alpha=ALPHA)
    # a donor effect of sd 0.5 shared by both conditions of each donor makes no gene significant
    assert found["false"] <= _false_bound(found["n_called"]), found
    assert found["sensitivity"] >= 0.5, f"paired, fold change 2.5, 3 donors: {found}"


@pytest.mark.e2e
def test_results_are_deterministic(cells):
    genes = pick_genes(cells, MONO, n=10, min_mean=1.0, seed=7)
    adata, _ = make_study(
        _top_genes(cells, 100), cell_types=[MONO], spike={MONO: (genes, 3.0)}, seed=7
    )
    first = compare_expression(adata, reference="healthy", alpha=ALPHA)
    second = compare_expression(adata.copy(), reference="healthy", alpha=ALPHA)
    assert (first[1]["n_significant"] > 0).all()
    for a, b in zip(first, second, strict=True):
        assert a.to_csv(index=False) == b.to_csv(index=False)


def test_pseudo_donor_study_carries_the_truth(cells):
    genes = pick_genes(cells, MONO, n=10, min_mean=1.0, seed=8)
    adata, truth = make_study(
        cells, cell_types=[MONO, TCELL], spike={MONO: (genes, 4.0)}, shift={TCELL: 2.0}, seed=8
    )
    assert truth["gene"].tolist() == genes and (truth["fold_change"] == 4.0).all()
    obs = adata.obs
    assert set(obs["condition"].cat.categories) == {"healthy", "osteoporosis"}
    n_cells = obs.groupby(["condition", "cell_type"], observed=True).size()
    assert n_cells[("osteoporosis", TCELL)] == 2 * n_cells[("healthy", TCELL)] == 300
    mono = (obs["cell_type"] == MONO).to_numpy()
    case = (obs["condition"] == "osteoporosis").to_numpy()
    counts = adata.layers["counts"]
    assert sp.isspmatrix_csr(counts) and np.array_equal(counts.data, np.rint(counts.data))
    means = [np.asarray(counts[mono & c].mean(axis=0)).ravel() for c in (case, ~case)]
    ratio = pd.Series(means[0] / np.maximum(means[1], 1e-3), index=adata.var_names)
    expressed = pd.Series(means[1] >= 0.5, index=adata.var_names)
    assert ratio[genes].median() == pytest.approx(4.0, rel=0.25)
    assert ratio[expressed].drop(genes).median() == pytest.approx(1.0, abs=0.1)


def test_one_pseudo_donor_per_condition_is_not_tested(cells):
    adata, _ = make_study(cells, cell_types=[MONO], n_donors_per_condition=1, seed=5)
    results, summary, _ = compare_expression(adata, reference="healthy")
    assert results.empty and not summary["tested"].any()
    assert summary.loc[0, "reason"].startswith("1 sample in osteoporosis; 1 sample in healthy")


def test_single_condition_study_tests_nothing(cells):
    adata, _ = make_study(cells, cell_types=[MONO, TCELL], conditions=("healthy",), seed=6)
    results, summary, _ = compare_expression(adata)
    assert results.empty and not summary["tested"].any() and len(summary) == 2
    assert summary["reason"].str.startswith("single condition (healthy)").all()


@pytest.mark.e2e
def test_enrichment_finds_the_spiked_program(spiked):
    _, truth, results, _, _ = spiked
    up = truth.loc[truth["fold_change"] > 1, "gene"].tolist()
    spiked_genes = set(truth["gene"])
    tested = results.loc[results["group"] == MONO, "gene"]
    others = sorted(set(tested) - spiked_genes)[:40]
    table = de_enrichment(
        results, gene_sets={"spiked_up": up, "unspiked": others}, permutations=200, seed=0
    )
    assert list(table.columns) == list(ENRICHMENT_COLUMNS)
    row = table.set_index(["group", "term"]).loc[(MONO, "spiked_up")]
    assert row["nes"] > 0 and row["fdr"] < 0.05, row.to_dict()
    assert table.loc[table["term"] == "unspiked", "fdr"].min() > 0.05
    again = de_enrichment(
        results, gene_sets={"spiked_up": up, "unspiked": others}, permutations=200, seed=0
    )
    pd.testing.assert_frame_equal(table, again)


@pytest.mark.e2e
def test_figures_draw_the_results(spiked):
    _, truth, results, _, _ = spiked
    pb, _ = pseudobulk(spiked[0])
    marked = truth["gene"].tolist()[:3]
    fig = volcano(
        results, group=MONO, contrast="osteoporosis vs healthy", highlight=marked + ["NOTAGENE"]
    )
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert labels == set(marked)
    heat = top_gene_heatmap(pb, results, n=10)
    assert len(heat.axes) == 3  # two groups and the colour bar
    ticks = [t.get_text() for t in heat.axes[0].get_xticklabels()]
    assert ticks[0].startswith("healthy") and ticks[-1].startswith("osteoporosis")
    for figure in (fig, heat):
        figure.savefig(io.BytesIO(), format="png")
        plt.close(figure)


def test_a_cell_type_missing_from_one_condition_is_untested_saying_so():
    # the type has pseudobulks in healthy only: 0 samples in osteoporosis, not an error
    layout = _two_conditions(3, cells=15)
    layout |= {f"osteo{i}": (f"o_d{i}", "osteoporosis", {"mono": 15}) for i in range(3)}
    layout |= {f"healthy{i}": (f"h_d{i}", "healthy", {"mono": 15, "OC": 15}) for i in range(3)}
    pb, _ = pseudobulk(_cells(layout, n_genes=30), min_cells=10, min_counts=0)
    results, summary = differential_expression(pb, group="OC", reference="healthy")
    assert results.empty
    assert summary["reason"].tolist() == [
        "0 samples in osteoporosis: no test (needs 2 per condition)"
    ]
