"""Composition across conditions: limma's eBayes pieces, propeller, real cells with known truth.

The pseudo-donor samples are draws (with replacement) of the real annotated cells of the
Luecken 2021 BMMC CITE-seq starter (600 cells); every donor has its own cell-type mix (a
log-normal factor, sd 0.25, on each type's share, a typical between-donor variation), and in
the case donors one cell type (NK) is drawn exactly FACTOR times as often.
"""

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from scipy import optimize, special

from osteoimmune.composition import (
    RESULT_COLUMNS,
    CompositionError,
    composition_test,
    ebayes,
    fit_f_dist,
    proportion_plot,
    sample_proportions,
    squeeze_var,
    transform_proportions,
    trigamma_inverse,
)
from osteoimmune.errors import OsteoimmuneError

CITE = "luecken2021_bmmc_cite/openproblems_bmmc_cite_starter.output_rna.h5ad"
TARGET, FACTOR = "NK", 2.5
ALPHA = 0.05


# --- limma's eBayes pieces ---------------------------------------------------------------------


@pytest.mark.parametrize("x", [1e-8, 1e-6, 1e-3, 0.1, 1.0, 10.0, 1e4, 1e7])
def test_trigamma_inverse_solves_trigamma(x):
    y = trigamma_inverse(x)[0]
    assert special.polygamma(1, y) == pytest.approx(x, rel=1e-7)
    if 1e-6 <= x <= 1e7:  # Newton's range: the root found by bracketing, independently
        root = optimize.brentq(lambda v: special.polygamma(1, v) - x, 1e-6, 1e7, xtol=1e-14)
        assert y == pytest.approx(root, rel=1e-9)


def test_trigamma_inverse_out_of_range():
    assert np.isnan(trigamma_inverse(-1.0)[0])
    assert trigamma_inverse(1e9)[0] == pytest.approx(1 / np.sqrt(1e9))
    assert trigamma_inverse([0.5, 2.0]).shape == (2,)


def test_fit_f_dist_hand_computed():
    # x = 1, 2, 4 on df1 = 10: e = log x - digamma(5) + log 5, mean(e) = log 2 + 0.1033202
    # = 0.7964674; var(e) = (log 2)^2 = 0.4804530, minus trigamma(5) = 0.2213230 leaves
    # 0.2591301 = trigamma(df2 / 2), so df2 = 2 * 4.3377244 = 8.675449 and
    # s0^2 = exp(0.7964674 + digamma(4.3377244) - log(4.3377244)) = 1.967559.
    scale, df2 = fit_f_dist([1.0, 2.0, 4.0], df1=10)
    assert df2 == pytest.approx(8.675449, rel=1e-6)
    assert scale == pytest.approx(1.967559, rel=1e-6)
    assert special.polygamma(1, df2 / 2) == pytest.approx(np.log(2) ** 2 - 0.2213230, rel=1e-6)


def test_fit_f_dist_recovers_the_prior_of_simulated_variances():
    # sigma^2 ~ s0^2 * d0 / chi2(d0), then s^2 ~ sigma^2 * chi2(d) / d: the model eBayes assumes
    rng = np.random.default_rng(7)
    s0, d0, d = 0.3, 6.0, 4.0
    sigma2 = s0 * d0 / rng.chisquare(d0, 20000)
    s2 = sigma2 * rng.chisquare(d, 20000) / d
    scale, df2 = fit_f_dist(s2, df1=d)
    assert scale == pytest.approx(s0, rel=0.05)
    assert df2 == pytest.approx(d0, rel=0.15)


def test_fit_f_dist_equal_variances_give_infinite_prior_df():
    scale, df2 = fit_f_dist([2.0, 2.0, 2.0, 2.0], df1=3)
    assert np.isinf(df2) and scale == pytest.approx(2.0)
    assert fit_f_dist([1.5], df1=3) == (1.5, 0.0)


def test_squeeze_var_and_ebayes_hand_computed():
    squeezed = squeeze_var([1.0, 2.0, 4.0], df=10)
    # (10 * 1 + 8.675449 * 1.967559) / (10 + 8.675449)
    assert squeezed.var_post[0] == pytest.approx(1.449468, rel=1e-6)
    moderated = ebayes([1.0, 1.0, 1.0], 0.5, [1.0, 2.0, 4.0], df_residual=10)
    assert moderated.t[0] == pytest.approx(1 / 0.5 / np.sqrt(1.449468), rel=1e-6)
    assert moderated.df_total == pytest.approx(18.675449, rel=1e-6)
    assert moderated.p_value[0] == pytest.approx(0.1133658, rel=1e-5)


def test_ebayes_caps_df_at_pooled_and_needs_residual_df():
    moderated = ebayes([[1.0], [2.0], [0.5]], [0.5], [1.0, 1.0, 1.0], df_residual=2)
    assert moderated.df_total == 6  # prior df infinite: capped at 3 cell types x 2 df
    assert moderated.t.shape == (3, 1)
    with pytest.raises(CompositionError, match="No residual degrees of freedom"):
        ebayes([1.0], 1.0, [1.0], df_residual=0)


# --- propeller against speckle's stored results ------------------------------------------------


def _speckle_example() -> pd.DataFrame:
    """speckle's test data (tests/testthat/test-propeller.R): 4 samples, 3 clusters."""
    shares = {"s1": (0.5, 0.3, 0.2), "s2": (0.6, 0.3, 0.1), "s3": (0.3, 0.4, 0.3)}
    shares["s4"] = (0.4, 0.3, 0.3)
    cells = {"s1": 1000, "s2": 1500, "s3": 900, "s4": 1200}
    rows = [
        (sample, sample, "grp1" if sample in ("s1", "s2") else "grp2", cluster)
        for sample, share in shares.items()
        for cluster, fraction in zip(("c0", "c1", "c2"), share, strict=True)
        for _ in range(round(fraction * cells[sample]))
    ]
    obs = pd.DataFrame(rows, columns=["sample", "donor", "condition", "cell_type"])
    obs["condition"] = pd.Categorical(obs["condition"])
    return obs


def test_propeller_matches_speckle_reference():
    # speckle 1.x tests/testthat/_snaps/propeller/propeller_table.json: propeller(robust=FALSE,
    # trend=FALSE, transform="asin"), grp1 - grp2, rounded to 4 decimals. Ours is grp2 - grp1.
    expected = {"c0": (3.0818, 0.0216, 0.0449), "c1": (-0.7954, 0.4567, 0.4567)}
    expected["c2"] = (-2.8302, 0.0299, 0.0449)
    table = composition_test(_speckle_example(), reference="grp1").set_index("cell_type")
    for cluster, (t, p, fdr) in expected.items():
        assert -table.loc[cluster, "t"] == pytest.approx(t, abs=1e-4)
        assert table.loc[cluster, "p_value"] == pytest.approx(p, abs=1e-4)
        assert table.loc[cluster, "fdr"] == pytest.approx(fdr, abs=1e-4)
    assert table.loc["c0", "mean_proportion_reference"] == pytest.approx(0.55)
    assert table.loc["c2", "log2_ratio"] == pytest.approx(1.0)  # 0.30 / 0.15


def test_logit_matches_speckle_transformed_props():
    # speckle tests/testthat/_snaps/getTransformedProps/transformed_props.json (logit)
    obs = _speckle_example()
    logit = transform_proportions(pd.crosstab(obs["sample"], obs["cell_type"]), transform="logit")
    assert logit.loc["s1"].to_numpy() == pytest.approx([-0.001, -0.8471, -1.385], abs=1e-4)
    assert logit.loc["s2"].to_numpy() == pytest.approx([0.4044, -0.8471, -2.1946], abs=1e-4)


# --- real cells, known truth -------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_cells(mirror) -> pd.DataFrame:
    """Real annotated cells of the cell types with at least 20 cells (9 types, 403 cells)."""
    obs = ad.read_h5ad(mirror / CITE, backed="r").obs[["cell_type"]].copy()
    obs["cell_type"] = obs["cell_type"].astype(str)
    counts = obs["cell_type"].value_counts()
    return obs[obs["cell_type"].isin(counts.index[counts >= 20])]


def _donor_shares(cells: pd.DataFrame, rng) -> pd.Series:
    """The donor's own cell-type mix: each type's share times a log-normal factor (sd 0.25)."""
    shares = cells["cell_type"].value_counts(normalize=True).sort_index()
    shares = shares * np.exp(rng.normal(0, 0.25, len(shares)))
    return shares / shares.sum()


def _shift(shares: pd.Series, factor: float) -> pd.Series:
    """The target exactly ``factor`` times its share; the other types make up the rest."""
    rest = (1 - factor * shares[TARGET]) / (1 - shares[TARGET])
    return (shares * rest).where(shares.index != TARGET, shares * factor)


def pseudo_donors(
    cells: pd.DataFrame,
    *,
    n_donors: int = 4,
    factor: float = FACTOR,
    paired: bool = False,
    n_cells: int = 400,
    seed: int = 0,
) -> pd.DataFrame:
    """Samples of real cells drawn with replacement, ``n_donors`` per condition.

    Unpaired: control and case donors are different people; paired: every donor gives one
    sample of each condition, both from the donor's own mix.
    """
    rng = np.random.default_rng(seed)
    by_type = {t: np.flatnonzero(cells["cell_type"] == t) for t in sorted(set(cells["cell_type"]))}
    frames = []
    for d in range(n_donors if paired else 2 * n_donors):
        conditions = ("control", "case") if paired else ("control" if d < n_donors else "case",)
        shares = _donor_shares(cells, rng)
        for condition in conditions:
            drawn = _shift(shares, factor) if condition == "case" else shares
            counts = rng.multinomial(n_cells, drawn.to_numpy())
            idx = np.concatenate(
                [rng.choice(by_type[t], k) for t, k in zip(drawn.index, counts, strict=False)]
            )
            part = cells.iloc[idx].assign(sample=f"d{d}_{condition}", donor=f"d{d}")
            frames.append(part.assign(condition=condition))
    obs = pd.concat(frames, ignore_index=True)
    obs["condition"] = pd.Categorical(obs["condition"], categories=["control", "case"])
    return obs


def _called(table: pd.DataFrame) -> set[str]:
    return set(table.loc[table["fdr"] < ALPHA, "cell_type"])


@pytest.mark.parametrize("transform", ["asin", "logit"])
def test_shifted_cell_type_is_found(real_cells, transform):
    table = composition_test(pseudo_donors(real_cells), reference="control", transform=transform)
    assert list(table.columns) == ["cell_type", *RESULT_COLUMNS]
    assert len(table) == 9 and table["tested"].all()
    target = table.set_index("cell_type").loc[TARGET]
    assert target["fdr"] < ALPHA and target["t"] > 0
    assert 0.5 * np.log2(FACTOR) < target["log2_ratio"] < 1.5 * np.log2(FACTOR)
    # The 8 other types: at most the nominal 5% of them, rounded up (1), may be called.
    assert len(_called(table) - {TARGET}) <= int(np.ceil(ALPHA * 8))


def test_power_and_false_calls_over_twenty_experiments(real_cells):
    found, false_calls = 0, 0
    for seed in range(20):
        called = _called(
            composition_test(pseudo_donors(real_cells, seed=seed), reference="control")
        )
        found += TARGET in called
        false_calls += len(called - {TARGET})
    assert found >= 16  # x2.5 with 4 vs 4 donors: found in at least 80% of experiments
    # the other types shrink by ~13% (proportions sum to 1), yet stay under 5% called
    assert false_calls / (20 * 8) <= ALPHA


def test_no_shift_nothing_significant(real_cells):
    table = composition_test(pseudo_donors(real_cells, factor=1.0), reference="control")
    assert table["tested"].all()
    assert not _called(table)
    null_p = np.concatenate(
        [
            composition_test(pseudo_donors(real_cells, factor=1.0, seed=seed), reference="control")[
                "p_value"
            ]
            for seed in range(20)
        ]
    )
    # calibrated: nominal 5%, plus two binomial standard errors of 180 p-values
    assert np.mean(null_p < ALPHA) <= ALPHA + 2 * np.sqrt(ALPHA * (1 - ALPHA) / null_p.size)


def test_one_sample_per_condition_is_not_tested(real_cells):
    obs = pseudo_donors(real_cells, n_donors=1)
    table = composition_test(obs, reference="control")
    assert not table["tested"].any()
    assert table[["t", "p_value", "fdr"]].isna().all().all()
    assert table["reason"].str.contains("fewer than min_samples=2").all()
    assert table["mean_proportion"].notna().all()  # still described


def test_paired_design_includes_donor(real_cells):
    obs = pseudo_donors(real_cells, paired=True, n_donors=4)
    paired = composition_test(obs, reference="control", paired=True)
    unpaired = composition_test(obs, reference="control")
    assert (paired["design"] == "~ condition + donor").all()
    assert (unpaired["design"] == "~ condition").all()
    # residual df: 8 samples - (intercept + condition + 3 donors) = 3 per type, 27 pooled
    assert 3 < paired["df_total"].iloc[0] <= 27
    target = paired.set_index("cell_type").loc[TARGET]
    assert target["fdr"] < ALPHA
    assert target["t"] > unpaired.set_index("cell_type").loc[TARGET, "t"]


def test_deterministic_and_independent_of_cell_order(real_cells):
    obs = pseudo_donors(real_cells, seed=3)
    first = composition_test(obs, reference="control")
    pd.testing.assert_frame_equal(first, composition_test(obs, reference="control"))
    shuffled = obs.sample(frac=1.0, random_state=1).reset_index(drop=True)
    pd.testing.assert_frame_equal(first, composition_test(shuffled, reference="control"))


# --- proportions, designs, bad input (synthetic) -----------------------------------------------


def _obs(counts: dict[str, dict[str, int]], conditions: dict[str, str], **columns) -> pd.DataFrame:
    rows = [
        {"sample": s, "donor": s, "condition": conditions[s], "cell_type": t}
        for s, per_type in counts.items()
        for t, n in per_type.items()
        for _ in range(n)
    ]
    obs = pd.DataFrame(rows)
    for name, values in columns.items():
        obs[name] = obs["sample"].map(values)
    obs["condition"] = pd.Categorical(obs["condition"], categories=["ctrl", "case", "other"])
    return obs


COUNTS = {
    "a1": {"T": 50, "B": 30, "unassigned": 20},
    "a2": {"T": 60, "B": 25, "unassigned": 15},
    "b1": {"T": 30, "B": 60, "unassigned": 10},
    "b2": {"T": 25, "B": 50, "unassigned": 25},
}
CONDITIONS = {"a1": "ctrl", "a2": "ctrl", "b1": "case", "b2": "case"}


def test_sample_proportions_counts_unassigned_in_totals():
    props = sample_proportions(_obs(COUNTS, CONDITIONS))
    assert list(props.columns) == [
        "sample",
        "donor",
        "condition",
        "cell_type",
        "n_cells",
        "total",
        "proportion",
    ]
    assert (props["total"] == 100).all()
    assert props.groupby("sample")["proportion"].sum().to_numpy() == pytest.approx(1.0)
    row = props[(props["sample"] == "b2") & (props["cell_type"] == "unassigned")]
    assert row["proportion"].item() == pytest.approx(0.25)
    assert list(props["condition"].cat.categories) == ["ctrl", "case"]


def test_sample_proportions_include_absent_groups():
    counts = {**COUNTS, "a1": {"T": 50, "B": 50}}
    props = sample_proportions(_obs(counts, CONDITIONS))
    row = props[(props["sample"] == "a1") & (props["cell_type"] == "unassigned")]
    assert row["n_cells"].item() == 0 and row["proportion"].item() == 0


def test_unassigned_is_reported_not_tested():
    table = composition_test(_obs(COUNTS, CONDITIONS), reference="ctrl").set_index("cell_type")
    assert not table.loc["unassigned", "tested"]
    assert "not a cell type" in table.loc["unassigned", "reason"]
    assert table.loc[["T", "B"], "tested"].all()


def test_condition_below_min_samples_leaves_the_others_tested():
    counts = {**COUNTS, "c1": {"T": 40, "B": 40, "unassigned": 20}}
    table = composition_test(_obs(counts, {**CONDITIONS, "c1": "other"}), reference="ctrl")
    other = table[table["condition"] == "other"]
    assert not other["tested"].any()
    assert other["reason"].str.contains("1 sample\\(s\\) of the condition 'other'").all()
    assert table.loc[table["condition"] == "case", "tested"].sum() == 2


def test_covariates_enter_the_design():
    counts = {**COUNTS, "a3": {"T": 55, "B": 35, "unassigned": 10}}
    counts["b3"] = {"T": 20, "B": 70, "unassigned": 10}
    conditions = {**CONDITIONS, "a3": "ctrl", "b3": "case"}
    age = {"a1": 30, "a2": 50, "a3": 40, "b1": 35, "b2": 55, "b3": 45}
    table = composition_test(
        _obs(counts, conditions, age=age), reference="ctrl", covariates=["age"]
    )
    assert (table["design"] == "~ condition + age").all()
    assert table.loc[table["cell_type"] != "unassigned", "tested"].all()


def test_covariate_confounded_with_condition_is_not_tested():
    sex = {"a1": "f", "a2": "f", "b1": "m", "b2": "m"}
    table = composition_test(
        _obs(COUNTS, CONDITIONS, sex=sex), reference="ctrl", covariates=["sex"]
    )
    assert not table["tested"].any()
    assert table["reason"].str.contains("not of full rank").all()


def test_paired_without_shared_donors_says_so():
    table = composition_test(_obs(COUNTS, CONDITIONS), reference="ctrl", paired=True)
    assert table["design"].str.contains("no donor is in two conditions").all()
    assert table.loc[table["cell_type"] != "unassigned", "tested"].all()


@pytest.mark.parametrize(
    ("change", "kwargs", "match"),
    [
        ("drop_donor", {}, "no column"),
        ("none", {"reference": "absent"}, "Reference condition 'absent'"),
        ("mixed_sample", {}, "more than one value"),
        ("none", {"transform": "sqrt"}, "Unknown transform 'sqrt'"),
        ("none", {"min_samples": 0}, "min_samples must be at least 1"),
        ("nan_type", {}, "have no 'cell_type'"),
    ],
)
def test_bad_input_is_a_clear_error(change, kwargs, match):
    obs = _obs(COUNTS, CONDITIONS)
    if change == "drop_donor":
        obs = obs.drop(columns="donor")
    elif change == "mixed_sample":
        obs.loc[obs.index[:5], "donor"] = "other donor"
    elif change == "nan_type":
        obs.loc[obs.index[0], "cell_type"] = None
    with pytest.raises(CompositionError, match=match) as error:
        composition_test(obs, **{"reference": "ctrl", **kwargs})
    assert isinstance(error.value, OsteoimmuneError) and isinstance(error.value, ValueError)


def test_single_condition_gives_no_rows():
    conditions = dict.fromkeys(COUNTS, "ctrl")
    table = composition_test(_obs(COUNTS, conditions), reference="ctrl")
    assert table.empty and list(table.columns) == ["cell_type", *RESULT_COLUMNS]


def test_proportion_plot_draws_one_panel_per_type():
    obs = _obs(COUNTS, CONDITIONS)
    results = composition_test(obs, reference="ctrl")
    fig = proportion_plot(sample_proportions(obs), reference="ctrl", results=results)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 3
    dots = [c for c in panels[0].collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in dots) == 4  # one per sample
    assert any("FDR" in ax.get_title() for ax in panels)
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["ctrl", "case"]
    plt.close(fig)
