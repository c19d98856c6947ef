import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from compare_conditions import main as compare_rule
from scipy import stats

from osteoimmune.compare import (
    COMPARISON_COLUMNS,
    ComparisonError,
    compare_conditions,
    comparison_plot_data,
    descriptive_note,
    design_note,
    donor_aggregates,
    hedges_g,
)
from osteoimmune.errors import OsteoimmuneError

SCORES = ["score_shifted", "score_null"]
SHIFT = 1.5


def _simulate(
    *, donors_per_condition: int = 4, cells_per_type: int = 40, seed: int = 0
) -> pd.DataFrame:
    """Cells of two conditions; each donor has its own random offset on every score.

    ``score_shifted`` of monocytes is SHIFT higher in condition B; ``score_null`` has a large
    donor effect but no condition effect, so a cell-level test would call it significant.
    """
    rng = np.random.default_rng(seed)
    frames = []
    for condition in ("A", "B"):
        for d in range(donors_per_condition):
            donor = f"{condition}{d}"
            offset_shifted, offset_null = rng.normal(0, 0.3), rng.normal(0, 1.0)
            for cell_type, n in (("monocyte", cells_per_type), ("B cell", cells_per_type // 2)):
                shift = SHIFT if (condition == "B" and cell_type == "monocyte") else 0.0
                frames.append(
                    pd.DataFrame(
                        {
                            "donor": donor,
                            "condition": condition,
                            "sample": f"{donor}_s1",
                            "cell_type": cell_type,
                            "cell_lineage": "myeloid" if cell_type == "monocyte" else "lymphoid",
                            "score_shifted": rng.normal(offset_shifted + shift, 1.0, n),
                            "score_null": rng.normal(offset_null, 1.0, n),
                        }
                    )
                )
    obs = pd.concat(frames, ignore_index=True)
    obs["condition"] = pd.Categorical(obs["condition"], categories=["A", "B"])
    return obs


def _row(table: pd.DataFrame, cell_type: str, variable: str) -> pd.Series:
    hit = table[(table["cell_type"] == cell_type) & (table["variable"] == variable)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_aggregates_one_row_per_donor_and_cell_type():
    obs = _simulate()
    agg = donor_aggregates(obs, score_columns=SCORES, min_cells=10)
    assert len(agg) == 8 * 2
    assert agg.groupby("donor")["proportion"].sum().round(12).eq(1).all()
    mono = agg[(agg["donor"] == "B1") & (agg["cell_type"] == "monocyte")].iloc[0]
    cells = obs[(obs["donor"] == "B1") & (obs["cell_type"] == "monocyte")]
    assert mono["n_cells"] == 40
    assert mono["n_cells_donor"] == 60
    assert mono["proportion"] == pytest.approx(40 / 60)
    assert mono["score_shifted"] == pytest.approx(cells["score_shifted"].mean())
    assert mono["condition"] == "B"


def test_aggregates_default_score_columns_and_min_cells():
    obs = _simulate(cells_per_type=20)  # 20 monocytes and 10 B cells per donor
    obs["z_shifted"] = obs["score_shifted"] * 2
    agg = donor_aggregates(obs, min_cells=15)
    assert {"score_shifted", "score_null", "z_shifted"} <= set(agg.columns)
    b_cells = agg[agg["cell_type"] == "B cell"]
    assert not b_cells["scores_computed"].any()
    assert b_cells[["score_shifted", "z_shifted"]].isna().all().all()
    assert b_cells["proportion"].notna().all()
    assert agg.loc[agg["cell_type"] == "monocyte", "scores_computed"].all()


def test_cell_type_missing_in_a_donor_counts_as_zero():
    obs = _simulate()
    obs = obs[~((obs["donor"] == "A0") & (obs["cell_type"] == "B cell"))]
    agg = donor_aggregates(obs, score_columns=SCORES)
    row = agg[(agg["donor"] == "A0") & (agg["cell_type"] == "B cell")].iloc[0]
    assert row["n_cells"] == 0
    assert row["proportion"] == 0
    assert not row["scores_computed"]
    assert np.isnan(row["score_shifted"])


def test_shifted_score_found_across_donors():
    agg = donor_aggregates(_simulate(), score_columns=SCORES)
    table = compare_conditions(agg)
    assert list(table.columns) == ["cell_type", *COMPARISON_COLUMNS]
    assert len(table) == 2 * 3  # cell types x (proportion + two scores)
    hit = _row(table, "monocyte", "score_shifted")
    assert (hit["condition_a"], hit["condition_b"]) == ("A", "B")
    assert (hit["n_donors_a"], hit["n_donors_b"]) == (4, 4)
    assert hit["difference"] == pytest.approx(hit["mean_b"] - hit["mean_a"])
    assert 0.5 * SHIFT < hit["difference"] < 1.5 * SHIFT
    assert hit["effect_size"] > 1
    assert hit["test"] == "Welch t-test across donors"
    assert hit["p_value"] < 0.05
    assert hit["fdr"] < 0.05
    assert hit["p_mannwhitney"] == pytest.approx(2 / 70)  # all B donors above all A donors
    assert not hit["descriptive_only"]
    assert _row(table, "B cell", "score_shifted")["p_value"] > 0.05


def test_null_score_with_donor_effect_is_not_significant():
    obs = _simulate()
    agg = donor_aggregates(obs, score_columns=SCORES)
    null = _row(compare_conditions(agg), "monocyte", "score_null")
    assert null["p_value"] > 0.05
    assert null["fdr"] > 0.05
    # The same data tested per cell would be "significant": donors, not cells, are replicates.
    mono = obs[obs["cell_type"] == "monocyte"]
    by_cell = stats.ttest_ind(
        mono.loc[mono["condition"] == "B", "score_null"],
        mono.loc[mono["condition"] == "A", "score_null"],
        equal_var=False,
    )
    assert by_cell.pvalue < 0.05


def test_duplicating_cells_does_not_change_the_test():
    obs = _simulate()
    table = compare_conditions(donor_aggregates(obs, score_columns=SCORES))
    tenfold = pd.concat([obs] * 10, ignore_index=True)
    table10 = compare_conditions(donor_aggregates(tenfold, score_columns=SCORES))
    pd.testing.assert_series_equal(table["p_value"], table10["p_value"], rtol=1e-9)
    pd.testing.assert_series_equal(table["difference"], table10["difference"], rtol=1e-9)


def test_one_huge_donor_per_condition_is_descriptive():
    obs = _simulate(donors_per_condition=1, cells_per_type=5000)
    table = compare_conditions(donor_aggregates(obs, score_columns=SCORES))
    assert table["descriptive_only"].all()
    assert table["p_value"].isna().all()
    assert table["fdr"].isna().all()
    assert (table["note"] == descriptive_note(3)).all()
    assert (table["note"] == "fewer than 3 donors per group: numbers are descriptive").all()
    # The numbers are still there, to be shown as descriptive.
    assert _row(table, "monocyte", "score_shifted")["difference"] > 1
    agg = donor_aggregates(obs, score_columns=SCORES)
    assert "descriptive" in design_note(agg)


def test_too_few_donors_for_one_variable_only():
    obs = _simulate()
    # Two A donors with few monocytes: no score mean for them, the proportion still counts.
    drop = obs["donor"].isin(["A0", "A1"]) & (obs["cell_type"] == "monocyte")
    obs = obs[~drop | (obs.groupby(["donor", "cell_type"]).cumcount() < 5)]
    table = compare_conditions(donor_aggregates(obs, score_columns=SCORES, min_cells=10))
    score = _row(table, "monocyte", "score_shifted")
    assert score["n_donors_a"] == 2
    assert score["descriptive_only"] and np.isnan(score["p_value"])
    proportion = _row(table, "monocyte", "proportion")
    assert proportion["n_donors_a"] == 4
    assert not proportion["descriptive_only"]


def test_reference_sets_direction():
    agg = donor_aggregates(_simulate(), score_columns=SCORES)
    table = compare_conditions(agg, reference="B")
    hit = _row(table, "monocyte", "score_shifted")
    assert (hit["condition_a"], hit["condition_b"]) == ("B", "A")
    assert hit["difference"] < 0
    with pytest.raises(ComparisonError, match="Reference condition 'C'"):
        compare_conditions(agg, reference="C")


def test_one_condition_gives_empty_table_and_note():
    obs = _simulate()
    obs = obs[obs["condition"] == "A"]
    agg = donor_aggregates(obs, score_columns=SCORES)
    table = compare_conditions(agg)
    assert table.empty
    assert list(table.columns) == ["cell_type", *COMPARISON_COLUMNS]
    assert design_note(agg) == "One condition only, A (4 donors): there is nothing to compare."


def test_three_conditions_use_kruskal_wallis():
    obs = _simulate()
    extra = _simulate(seed=5)
    extra = extra[extra["condition"] == "B"].assign(condition="C")
    extra["donor"] = "C" + extra["donor"].str[1:]
    obs = pd.concat([obs.astype({"condition": str}), extra], ignore_index=True)
    table = compare_conditions(donor_aggregates(obs, score_columns=SCORES))
    hit = _row(table, "monocyte", "score_shifted")
    assert hit["test"] == "Kruskal-Wallis across donors"
    assert hit["p_value"] < 0.05
    assert hit["effect_size_measure"] == "epsilon squared"
    assert "C: 4 donors" in hit["note"]
    scores = table[table["variable"] != "proportion"]
    assert scores["fdr"].notna().all()
    # Every simulated donor has the same cell-type mix: nothing to test, and it says so.
    proportions = table[table["variable"] == "proportion"]
    assert proportions["note"].str.startswith("the same value in every donor").all()


def test_donor_in_two_conditions_is_descriptive():
    obs = _simulate()
    obs.loc[obs["donor"] == "B0", "donor"] = "A0"
    agg = donor_aggregates(obs, score_columns=SCORES)
    table = compare_conditions(agg)
    assert table["descriptive_only"].all()
    assert table["p_value"].isna().all()
    assert table["note"].str.contains("A0 are in more than one condition").all()
    assert "more than one condition" in design_note(agg)


def test_plot_data_is_long_per_donor():
    agg = donor_aggregates(_simulate(), score_columns=SCORES)
    data = comparison_plot_data(agg, variables=["score_shifted"])
    assert list(data.columns) == ["donor", "condition", "cell_type", "n_cells", "variable", "value"]
    assert len(data) == 8 * 2
    assert set(data["variable"]) == {"score_shifted"}
    with pytest.raises(ComparisonError, match="not value columns"):
        comparison_plot_data(agg, variables=["score_missing"])


def test_hedges_g_matches_hand_computation():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0, 5.0])
    # Pooled SD 1, difference 2, correction 1 - 3 / (4 * 6 - 9) = 0.8.
    assert hedges_g(a, b) == pytest.approx(1.6)
    assert np.isnan(hedges_g(a[:1], b))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda o: o.drop(columns="donor"), "no column"),
        (lambda o: o.assign(donor=o["donor"].where(o.index > 0)), "1 cells have no 'donor'"),
        (lambda o: o.iloc[:0], "no cells"),
        (lambda o: o.assign(score_shifted="x"), "not a numeric column"),
    ],
)
def test_bad_input_is_a_clear_error(change, match):
    with pytest.raises(ComparisonError, match=match) as err:
        donor_aggregates(change(_simulate()), score_columns=SCORES)
    assert isinstance(err.value, OsteoimmuneError)


def test_min_cells_must_be_positive():
    with pytest.raises(ComparisonError, match="min_cells"):
        donor_aggregates(_simulate(), score_columns=SCORES, min_cells=0)


def test_rule_writes_donor_tables_with_a_donor_level_p_value(tmp_path):
    """The workflow's compare_conditions step on a synthetic two-condition, 4+4-donor dataset."""
    obs = _simulate().rename(columns={"score_shifted": "z_shifted", "score_null": "z_null"})
    obs.index = [f"cell{i}" for i in range(len(obs))]
    adata = ad.AnnData(X=sp.csr_matrix((len(obs), 3), dtype=np.float32), obs=obs)
    adata.write_h5ad(tmp_path / "scored.h5ad")
    out = {k: tmp_path / f"{k}.tsv" for k in ("aggregates", "comparison", "note")}
    params = {"values": "z", "group_key": "cell_type", "min_cells": 10, "min_donors": 3}
    compare_rule(
        h5ad=tmp_path / "scored.h5ad",
        params=params,
        reference="B",
        aggregates_out=out["aggregates"],
        comparison_out=out["comparison"],
        note_out=out["note"],
    )
    table = pd.read_csv(out["comparison"], sep="\t")
    hit = _row(table, "monocyte", "z_shifted")
    # reference B: the shift shows as A minus B, negative
    assert (hit["condition_a"], hit["condition_b"]) == ("B", "A")
    assert hit["difference"] < -0.5 * SHIFT and hit["p_value"] < 0.05
    assert _row(table, "monocyte", "z_null")["fdr"] > 0.05
    assert len(pd.read_csv(out["aggregates"], sep="\t")) == 8 * 2
    assert out["note"].read_text().startswith("2 conditions: A (4 donors), B (4 donors).")
