"""Donor-level comparison of conditions: per-donor aggregates, tests across donors, FDR.

Cells of one donor share its genotype, age, sample handling and sequencing run, so they are
not independent replicates of a condition. Every test here therefore runs on one value per
donor (the donor's mean score or cell-type proportion), never on cells, and with fewer than
``min_donors`` donors in a group the numbers are reported as descriptive, without p-values.

The unit of :func:`donor_aggregates` is a donor within a condition; all samples of that donor
and condition are pooled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from osteoimmune.errors import ComparisonError

log = logging.getLogger(__name__)

DONOR, CONDITION = "donor", "condition"
SCORE_PREFIXES = ("score_", "z_")
MIN_DONORS = 3
WELCH = "Welch t-test across donors"
KRUSKAL = "Kruskal-Wallis across donors"
COMPARISON_COLUMNS = (
    "variable",
    "condition_a",
    "condition_b",
    "n_donors_a",
    "n_donors_b",
    "mean_a",
    "mean_b",
    "difference",
    "effect_size",
    "effect_size_measure",
    "test",
    "statistic",
    "p_value",
    "p_mannwhitney",
    "fdr",
    "descriptive_only",
    "note",
)


def descriptive_note(min_donors: int = MIN_DONORS) -> str:
    """The note on comparisons with too few donors to test."""
    return f"fewer than {min_donors} donors per group: numbers are descriptive"


def _check_obs(obs: pd.DataFrame, *, score_columns: Sequence[str] | None, group_key: str) -> list:
    missing = [c for c in (DONOR, CONDITION, group_key) if c not in obs.columns]
    if missing:
        msg = (
            f"Cell metadata has no column(s) {missing} for the donor-level comparison; "
            "the reader sets donor and condition, annotation sets the cell type."
        )
        raise ComparisonError(msg)
    if obs.empty:
        msg = "Cell metadata has no cells; there is nothing to aggregate per donor."
        raise ComparisonError(msg)
    for col in (DONOR, CONDITION, group_key):
        n_missing = int(obs[col].isna().sum())
        if n_missing:
            msg = f"{n_missing} cells have no '{col}'; fill obs['{col}'] before comparing donors."
            raise ComparisonError(msg)
    if score_columns is None:
        score_columns = [c for c in obs.columns if c.startswith(SCORE_PREFIXES)]
    for col in score_columns:
        if col not in obs.columns or not pd.api.types.is_numeric_dtype(obs[col]):
            msg = f"Score column '{col}' is not a numeric column of the cell metadata."
            raise ComparisonError(msg)
    return list(score_columns)


def _ordered_values(column: pd.Series) -> list[str]:
    # Keep the categorical order (the dataset's own order of conditions); otherwise sort.
    present = set(column.astype(str))
    if isinstance(column.dtype, pd.CategoricalDtype):
        return [str(c) for c in column.cat.categories if str(c) in present]
    return sorted(present)


def donor_aggregates(
    obs: pd.DataFrame,
    *,
    score_columns: Sequence[str] | None = None,
    group_key: str = "cell_type",
    min_cells: int = 10,
) -> pd.DataFrame:
    """Aggregate cells per donor, condition and cell type: counts, proportions, mean scores.

    Parameters
    ----------
    obs
        Cell metadata with columns ``donor``, ``condition``, ``group_key`` and the scores.
    score_columns
        Numeric per-cell columns to average; None takes every ``score_*`` and ``z_*`` column.
    group_key
        The cell grouping (``cell_type``, ``cell_lineage``, ``leiden``, ...).
    min_cells
        Score means need at least this many cells of the donor and group; below it they are
        NaN and ``scores_computed`` is False (the proportion is always given).

    Returns
    -------
    pandas.DataFrame
        One row per donor x condition x group present in the data, including groups with no
        cells in that donor (``n_cells`` 0, proportion 0). Columns ``donor``, ``condition``
        (categorical, conditions in order), ``group_key``, ``n_cells``, ``n_cells_donor``,
        ``proportion``, ``scores_computed`` and one column of donor means per score.
    """
    if min_cells < 1:
        msg = f"min_cells must be at least 1, got {min_cells}."
        raise ComparisonError(msg)
    scores = _check_obs(obs, score_columns=score_columns, group_key=group_key)
    keys = [DONOR, CONDITION, group_key]
    cells = obs[keys + scores].copy()
    cells[keys] = cells[keys].astype(str)
    counts = pd.crosstab([cells[DONOR], cells[CONDITION]], cells[group_key])
    table = counts.stack().rename("n_cells").reset_index()
    table["n_cells_donor"] = table.groupby([DONOR, CONDITION])["n_cells"].transform("sum")
    table["proportion"] = table["n_cells"] / table["n_cells_donor"]
    table["scores_computed"] = table["n_cells"] >= min_cells
    means = cells.groupby(keys)[scores].mean().reset_index()
    table = table.merge(means, on=keys, how="left")
    table.loc[~table["scores_computed"], scores] = np.nan
    order = _ordered_values(obs[CONDITION])
    table[CONDITION] = pd.Categorical(table[CONDITION], categories=order)
    return table.sort_values(keys, kind="stable").reset_index(drop=True)


def comparison_plot_data(
    aggregates: pd.DataFrame,
    *,
    group_key: str = "cell_type",
    variables: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Donor values in long form, one row per donor x group x variable, for plots and tests.

    Parameters
    ----------
    aggregates
        The table of :func:`donor_aggregates`.
    group_key
        Its group column.
    variables
        ``proportion`` and/or score columns; None takes the proportion and every score.

    Returns
    -------
    pandas.DataFrame
        Columns ``donor``, ``condition``, ``group_key``, ``n_cells``, ``variable``, ``value``;
        rows without a value (too few cells for a score mean) are left out.
    """
    fixed = [DONOR, CONDITION, group_key, "n_cells", "n_cells_donor", "scores_computed"]
    if variables is None:
        variables = [c for c in aggregates.columns if c not in fixed]
    unknown = [v for v in variables if v not in aggregates.columns or v in fixed]
    if unknown:
        msg = f"Variables {unknown} are not value columns of the donor aggregates."
        raise ComparisonError(msg)
    long = aggregates.melt(
        id_vars=[DONOR, CONDITION, group_key, "n_cells"],
        value_vars=list(variables),
        var_name="variable",
        value_name="value",
    )
    return long.dropna(subset=["value"]).reset_index(drop=True)


def hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    """Hedges' g of ``b`` minus ``a`` (pooled SD, small-sample corrected); NaN if undefined."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return np.nan
    pooled = ((na - 1) * np.var(a, ddof=1) + (nb - 1) * np.var(b, ddof=1)) / (na + nb - 2)
    if pooled <= 0:
        return np.nan
    correction = 1 - 3 / (4 * (na + nb) - 9)
    return float((np.mean(b) - np.mean(a)) / np.sqrt(pooled) * correction)


def _two_groups(a: np.ndarray, b: np.ndarray, *, testable: bool, note: str) -> dict:
    row = {
        "n_donors_a": len(a),
        "n_donors_b": len(b),
        "mean_a": float(np.mean(a)) if len(a) else np.nan,
        "mean_b": float(np.mean(b)) if len(b) else np.nan,
        "effect_size": hedges_g(a, b),
        "effect_size_measure": "Hedges' g",
        "test": "none (descriptive)",
        "statistic": np.nan,
        "p_value": np.nan,
        "p_mannwhitney": np.nan,
        "descriptive_only": True,
        "note": note,
    }
    row["difference"] = row["mean_b"] - row["mean_a"]
    if testable and np.ptp(np.concatenate([a, b])) == 0:
        row["note"] = "the same value in every donor: nothing to test"
    elif testable:
        welch = stats.ttest_ind(b, a, equal_var=False)
        mwu = stats.mannwhitneyu(b, a, alternative="two-sided")
        row.update(test=WELCH, statistic=float(welch.statistic), p_value=float(welch.pvalue))
        row.update(p_mannwhitney=float(mwu.pvalue), descriptive_only=False)
    return row


def _several_groups(values: list[np.ndarray], names: list[str], *, testable: bool, note: str):
    summary = "; ".join(
        f"{name}: {len(v)} donors, mean {np.mean(v):.4g}" if len(v) else f"{name}: 0 donors"
        for name, v in zip(names, values, strict=True)
    )
    means = [np.mean(v) for v in values if len(v)]
    row = {
        # with several conditions: the range of the condition means
        "difference": float(np.max(means) - np.min(means)) if means else np.nan,
        "effect_size_measure": "epsilon squared",
        "test": "none (descriptive)",
        "descriptive_only": True,
        "note": f"{note}; {summary}" if note else summary,
    }
    pooled = np.concatenate(values)
    if testable and np.ptp(pooled) == 0:
        row["note"] = f"the same value in every donor: nothing to test; {summary}"
    elif testable:
        result = stats.kruskal(*values)
        epsilon = result.statistic / (len(pooled) - 1)
        row.update(test=KRUSKAL, statistic=float(result.statistic), p_value=float(result.pvalue))
        row.update(effect_size=float(epsilon), descriptive_only=False)
    return row


def _shared_donors(aggregates: pd.DataFrame) -> list[str]:
    per_donor = aggregates.groupby(DONOR, observed=True)[CONDITION].nunique()
    return sorted(per_donor.index[per_donor > 1].astype(str))


def _conditions(aggregates: pd.DataFrame, reference: str | None) -> list[str]:
    conditions = _ordered_values(aggregates[CONDITION])
    if reference is None:
        return conditions
    if reference not in conditions:
        msg = (
            f"Reference condition '{reference}' is not in the data (conditions: "
            f"{', '.join(conditions)}); set the reference to one of them."
        )
        raise ComparisonError(msg)
    return [reference] + [c for c in conditions if c != reference]


def _compare_one(sub: pd.DataFrame, conditions: list[str], *, min_donors: int, note: str):
    values = [sub.loc[sub[CONDITION] == c, "value"].to_numpy(float) for c in conditions]
    testable = not note and min(len(v) for v in values) >= min_donors
    if not testable and not note:
        note = descriptive_note(min_donors)
    if len(conditions) == 2:
        row = _two_groups(values[0], values[1], testable=testable, note=note)
        return {"condition_a": conditions[0], "condition_b": conditions[1], **row}
    return _several_groups(values, conditions, testable=testable, note=note)


def benjamini_hochberg(p_values: pd.Series) -> pd.Series:
    """Benjamini-Hochberg adjusted p-values over the non-missing ``p_values``; NaN stays NaN."""
    adjusted = pd.Series(np.nan, index=p_values.index, dtype=float)
    tested = p_values.notna()
    if tested.any():
        adjusted[tested] = stats.false_discovery_control(p_values[tested].to_numpy(float))
    return adjusted


def compare_conditions(
    aggregates: pd.DataFrame,
    *,
    reference: str | None = None,
    group_key: str = "cell_type",
    min_donors: int = MIN_DONORS,
) -> pd.DataFrame:
    """Compare conditions across donors for every group x variable (proportion, mean scores).

    Two conditions: difference of donor means (``condition_b`` minus ``condition_a``), Hedges'
    g, Welch's t-test across donors (``p_value``) and, as a rank-based check, the Mann-Whitney
    U test (``p_mannwhitney``). More conditions: Kruskal-Wallis across donors with epsilon
    squared as effect size, ``difference`` the range (largest minus smallest) of the
    condition means; the per-condition donor counts and means are in ``note``.
    ``fdr`` is Benjamini-Hochberg over all ``p_value`` of the table.

    Parameters
    ----------
    aggregates
        The table of :func:`donor_aggregates`.
    reference
        The condition to compare against (``condition_a``); None takes the first condition.
    group_key
        The group column of ``aggregates``.
    min_donors
        Fewer donors with a value in any condition and the row is descriptive only: no test,
        ``p_value`` NaN, ``descriptive_only`` True and a note saying so. Donors found in more
        than one condition make every row descriptive (the unpaired tests do not apply).

    Returns
    -------
    pandas.DataFrame
        One row per group x variable with ``group_key`` and :data:`COMPARISON_COLUMNS`; no rows
        when the data have a single condition (see :func:`design_note`).
    """
    columns = [group_key, *COMPARISON_COLUMNS]
    conditions = _conditions(aggregates, reference)
    if len(conditions) < 2:
        log.info("Only one condition (%s): no donor-level comparison.", ", ".join(conditions))
        return pd.DataFrame(columns=columns)
    shared = _shared_donors(aggregates)
    note = ""
    if shared:
        note = (
            f"donors {', '.join(shared)} are in more than one condition; the unpaired tests "
            "do not apply: numbers are descriptive"
        )
    long = comparison_plot_data(aggregates, group_key=group_key)
    rows = [
        {
            group_key: group,
            "variable": variable,
            **_compare_one(sub, conditions, min_donors=min_donors, note=note),
        }
        for (group, variable), sub in long.groupby([group_key, "variable"], sort=False)
    ]
    table = pd.DataFrame(rows).reindex(columns=columns)
    table["fdr"] = benjamini_hochberg(table["p_value"])
    return table


def design_note(aggregates: pd.DataFrame, *, min_donors: int = MIN_DONORS) -> str:
    """One sentence on the design: conditions, donors per condition, and what can be tested.

    Parameters
    ----------
    aggregates
        The table of :func:`donor_aggregates`.
    min_donors
        As in :func:`compare_conditions`.
    """
    units = aggregates[[DONOR, CONDITION]].drop_duplicates()
    counts = units[CONDITION].value_counts()
    conditions = _ordered_values(aggregates[CONDITION])
    listed = ", ".join(f"{c} ({counts[c]} donor{'s' * (counts[c] != 1)})" for c in conditions)
    if len(conditions) < 2:
        return f"One condition only, {listed}: there is nothing to compare."
    text = f"{len(conditions)} conditions: {listed}."
    shared = _shared_donors(aggregates)
    if shared:
        donors = ", ".join(shared)
        text += f" Donors in more than one condition ({donors}): numbers are descriptive."
    elif counts[conditions].min() < min_donors:
        text += f" {descriptive_note(min_donors).capitalize()}."
    return text
