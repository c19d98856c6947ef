"""Cell-type composition per sample, and its change across conditions tested across donors.

:func:`sample_proportions` counts each sample's cells per cell type. :func:`composition_test`
is propeller [2]_ (speckle::propeller): the proportions per sample are transformed
(arcsine square root, or logit with a pseudo-count of 0.5), one linear model per cell type is
fitted with the design ``~ condition + covariates (+ donor)``, and limma's empirical-Bayes
moderated t [1]_ tests each condition against the reference, with Benjamini-Hochberg FDR across
the cell types of each contrast. The unit of replication is the sample, never the cell.

Why propeller and not scCODA: pertpy 1.0.3 (the newest for Python 3.11), installed on top of
this project's lock, adds 46 packages and 597 MB (jax, numpyro, flax, pyomo, ...), and
``import pertpy`` fails twice (``filelock`` is used but not declared; it imports
``multipletests`` from a statsmodels module that 0.15, our pin, no longer re-exports it from).
Made importable (``filelock`` added, statsmodels downgraded to 0.14.6), one scCODA run on 6
samples x 8 cell types took 126 s and 1.2 GB on two cores. propeller needs numpy and scipy only,
runs in milliseconds and is pinned here to speckle's own stored results.

Unassigned cells (annotation label :data:`UNASSIGNED`) are cells of the sample, so they count
in its total and have their own row in :func:`sample_proportions`; they are not a cell type,
so :func:`composition_test` reports them untested (a shift in them says the annotation worked
less well in one condition, not that biology changed) and leaves them out of the variance prior.

The limma part (:func:`trigamma_inverse`, :func:`fit_f_dist`, :func:`squeeze_var`,
:func:`ebayes`) mirrors limma's ``trigammaInverse``, ``fitFDist``, ``squeezeVar`` (legacy
method: one residual df shared by all cell types, as every cell type has the same design) and
the moderated t of ``eBayes`` (R/fitFDist.R, R/squeezeVar.R, R/ebayes.R of limma 3.x). Left
out: ``robust``, ``trend``, covariate-dependent priors and the B-statistic. propeller's own
default is ``robust=TRUE``; here it is the ordinary eBayes, as in speckle's test of
``propeller(robust=FALSE, transform="asin")``, whose stored values the tests reproduce.

References
----------
.. [1] Smyth GK (2004). Linear models and empirical Bayes methods for assessing differential
   expression in microarray experiments. Stat Appl Genet Mol Biol 3:3.
   doi:10.2202/1544-6115.1027
.. [2] Phipson B, Sim CB, Porrello ER, Hewitt AW, Powell J, Oshlack A (2022). propeller:
   testing for differences in cell type proportions in single cell data. Bioinformatics
   38(20):4720-4726. doi:10.1093/bioinformatics/btac582
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import special, stats  # noqa: E402

from osteoimmune.compare import benjamini_hochberg  # noqa: E402
from osteoimmune.errors import CompositionError  # noqa: E402
from osteoimmune.panels import UNASSIGNED  # noqa: E402

log = logging.getLogger(__name__)

SAMPLE, DONOR, CONDITION = "sample", "donor", "condition"
TRANSFORMS = {"asin": "arcsine square root", "logit": "logit, pseudo-count 0.5"}
PROPORTION_COLUMNS = ("n_cells", "total", "proportion")
RESULT_COLUMNS = (
    "condition",
    "reference",
    "n_samples",
    "n_samples_reference",
    "mean_proportion",
    "mean_proportion_reference",
    "log2_ratio",
    "t",
    "p_value",
    "fdr",
    "df_total",
    "design",
    "method",
    "tested",
    "reason",
)


# --- limma's empirical Bayes (mirrored, see the module docstring) -------------------------


class SqueezedVariance(NamedTuple):
    """Posterior variances and the prior of :func:`squeeze_var`."""

    var_post: np.ndarray
    var_prior: float
    df_prior: float


class ModeratedT(NamedTuple):
    """Moderated t-statistics of :func:`ebayes` (arrays shaped like the coefficients)."""

    t: np.ndarray
    p_value: np.ndarray
    df_total: float
    s2_post: np.ndarray
    s2_prior: float
    df_prior: float


def trigamma_inverse(x) -> np.ndarray:
    """Solve ``trigamma(y) = x`` for ``y`` (limma ``trigammaInverse``).

    Newton's method from ``0.5 + 1/x``, monotonically convergent; ``1/sqrt(x)`` above 1e7 and
    ``1/x`` below 1e-6, NaN for negative ``x``.

    Parameters
    ----------
    x
        Non-negative values (scalar or array).

    Returns
    -------
    numpy.ndarray
        ``y`` of the shape of ``x``.
    """
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.full(x.shape, np.nan)
    large, small = x > 1e7, (x >= 0) & (x < 1e-6)
    y[large] = 1 / np.sqrt(x[large])
    with np.errstate(divide="ignore"):
        y[small] = 1 / x[small]
    regular = (x >= 1e-6) & (x <= 1e7)
    target = x[regular]
    guess = 0.5 + 1 / target
    for _ in range(50):
        if not target.size:
            break
        tri = special.polygamma(1, guess)
        step = tri * (1 - tri / target) / special.polygamma(2, guess)
        guess = guess + step
        if np.max(-step / guess) < 1e-8:
            break
    y[regular] = guess
    return y


def fit_f_dist(x, *, df1: float) -> tuple[float, float]:
    """Moment estimates of a scaled F distribution's scale and df2 (limma ``fitFDist``).

    ``x`` are sample variances on ``df1`` degrees of freedom, modelled as ``scale * F(df1,
    df2)``; estimates come from the mean and variance of ``log(x)``.

    Parameters
    ----------
    x
        Sample variances; non-finite and negative values are ignored, zeros offset to 1e-5
        times the median.
    df1
        Their (common) residual degrees of freedom.

    Returns
    -------
    tuple of float
        ``(scale, df2)``: the prior variance and prior degrees of freedom; ``df2`` is inf when
        the variances vary no more than sampling explains (``scale`` then their mean).
    """
    x = np.asarray(x, dtype=float).ravel()
    x = x[np.isfinite(x) & (x > -1e-15)]
    if not (np.isfinite(df1) and df1 > 1e-15) or x.size == 0:
        return np.nan, np.nan
    if x.size == 1:
        return float(x[0]), 0.0
    x = np.maximum(x, 0)
    median = np.median(x)
    if median == 0:
        log.warning("More than half of the residual variances are zero: eBayes is unreliable.")
        median = 1.0
    x = np.maximum(x, 1e-5 * median)
    e = np.log(x) - special.digamma(df1 / 2) + np.log(df1 / 2)
    emean = e.mean()
    evar = np.sum((e - emean) ** 2) / (x.size - 1) - special.polygamma(1, df1 / 2)
    if evar > 0:
        df2 = float(2 * trigamma_inverse(evar)[0])
        return float(np.exp(emean + special.digamma(df2 / 2) - np.log(df2 / 2))), df2
    return float(x.mean()), np.inf


def squeeze_var(var, *, df: float) -> SqueezedVariance:
    """Empirical-Bayes posterior variances (limma ``squeezeVar``, equal df, not robust).

    Parameters
    ----------
    var
        Residual variances, one per cell type.
    df
        Their common residual degrees of freedom.

    Returns
    -------
    SqueezedVariance
        ``var_post = (df * var + df_prior * var_prior) / (df + df_prior)`` (``var_prior`` when
        ``df_prior`` is infinite), with the prior of :func:`fit_f_dist`.
    """
    var = np.asarray(var, dtype=float)
    if var.size == 0:
        msg = "No variances to squeeze: the model has no cell type to test."
        raise CompositionError(msg)
    if var.size == 1:
        return SqueezedVariance(var.copy(), float(var.ravel()[0]), 0.0)
    var_prior, df_prior = fit_f_dist(var, df1=df)
    if np.isnan(df_prior):
        msg = f"Could not estimate the prior df from {var.size} variances on {df} df."
        raise CompositionError(msg)
    if np.isinf(df_prior):
        return SqueezedVariance(np.full(var.shape, var_prior), var_prior, df_prior)
    var_post = (df * var + df_prior * var_prior) / (df + df_prior)
    return SqueezedVariance(var_post, var_prior, df_prior)


def ebayes(coefficients, stdev_unscaled, sigma2, *, df_residual: float) -> ModeratedT:
    """Moderated t-statistics and p-values (limma ``eBayes`` without B-statistics).

    Parameters
    ----------
    coefficients
        Estimates, cell types (rows) x coefficients (columns), or one per cell type.
    stdev_unscaled
        Unscaled standard errors, ``sqrt(diag((X'X)^-1))``, per coefficient (or like
        ``coefficients``).
    sigma2
        Residual variance per cell type.
    df_residual
        Residual degrees of freedom of every fit.

    Returns
    -------
    ModeratedT
        ``t = coefficient / stdev_unscaled / sqrt(s2_post)``, two-sided p-values on
        ``df_total = min(df_residual + df_prior, df_residual * n_cell_types)`` df.
    """
    if df_residual <= 0:
        msg = "No residual degrees of freedom in the linear model fits: nothing can be tested."
        raise CompositionError(msg)
    sigma2 = np.asarray(sigma2, dtype=float)
    squeezed = squeeze_var(sigma2, df=df_residual)
    coefficients = np.asarray(coefficients, dtype=float)
    post = squeezed.var_post.reshape(-1, *([1] * (coefficients.ndim - 1)))
    t = coefficients / np.asarray(stdev_unscaled, dtype=float) / np.sqrt(post)
    df_total = float(min(df_residual + squeezed.df_prior, df_residual * sigma2.size))
    p_value = 2 * stats.t.sf(np.abs(t), df_total)
    return ModeratedT(t, p_value, df_total, squeezed.var_post, *squeezed[1:])


# --- proportions per sample -----------------------------------------------------------------


def _levels(column: pd.Series) -> list[str]:
    # The categorical order (the samplesheet's) where there is one; otherwise sorted.
    present = set(column.astype(str))
    if isinstance(column.dtype, pd.CategoricalDtype):
        return [str(c) for c in column.cat.categories if str(c) in present]
    return sorted(present)


def _require(obs: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in obs.columns]
    if missing:
        msg = (
            f"Cell metadata has no column(s) {missing} for the composition analysis; the "
            "samplesheet gives sample, donor, condition and covariates, annotation the cell type."
        )
        raise CompositionError(msg)
    if obs.empty:
        msg = "Cell metadata has no cells; there are no proportions to compute."
        raise CompositionError(msg)
    for column in columns:
        n_missing = int(obs[column].isna().sum())
        if n_missing:
            msg = f"{n_missing} cells have no '{column}'; fill obs['{column}'] first."
            raise CompositionError(msg)


def _sample_table(obs: pd.DataFrame, *, sample_key: str, columns: list[str]) -> pd.DataFrame:
    """One row per sample (index, as str) with its donor, condition and covariates."""
    frame = obs[[sample_key, *columns]].copy()
    frame[sample_key] = frame[sample_key].astype(str)
    n_values = frame.groupby(sample_key, sort=False)[columns].nunique()
    mixed = n_values > 1
    if mixed.to_numpy().any():
        samples = list(n_values.index[mixed.any(axis=1)])
        msg = (
            f"Samples {samples[:5]} have more than one value of "
            f"{list(n_values.columns[mixed.any()])}; each sample must come from one donor and "
            "condition and have one value per covariate. Fix the samplesheet, or pass a finer "
            "sample_key."
        )
        raise CompositionError(msg)
    table = frame.groupby(sample_key, sort=False).first()
    table.index.name = SAMPLE
    return table.loc[_levels(obs[sample_key])]


def sample_proportions(
    obs: pd.DataFrame, *, group_key: str = "cell_type", sample_key: str = "sample"
) -> pd.DataFrame:
    """Cells of each group (cell type) per sample and their proportion of the sample.

    Unassigned cells count in the sample's total and form a group of their own, so the
    proportions of a sample sum to 1.

    Parameters
    ----------
    obs
        Cell metadata with ``sample_key``, ``donor``, ``condition`` and ``group_key``; every
        sample must have one donor and one condition.
    group_key
        The cell grouping (``cell_type``, ``cell_lineage``, ``leiden``, ...).
    sample_key
        The sample column.

    Returns
    -------
    pandas.DataFrame
        One row per sample x group (groups absent from a sample included, ``n_cells`` 0):
        ``sample``, ``donor``, ``condition`` (categorical, the data's order), ``group_key``,
        ``n_cells``, ``total`` (cells of the sample) and ``proportion``.
    """
    _require(obs, [sample_key, DONOR, CONDITION, group_key])
    samples = _sample_table(obs, sample_key=sample_key, columns=[DONOR, CONDITION])
    counts = pd.crosstab(obs[sample_key].astype(str), obs[group_key].astype(str))
    counts = counts.reindex(index=samples.index, columns=_levels(obs[group_key]))
    long = counts.stack().rename("n_cells").reset_index()
    long.columns = [SAMPLE, group_key, "n_cells"]
    long["total"] = long[SAMPLE].map(counts.sum(axis=1))
    long["proportion"] = long["n_cells"] / long["total"]
    long[DONOR] = long[SAMPLE].map(samples[DONOR].astype(str))
    conditions = _levels(obs[CONDITION])
    long[CONDITION] = pd.Categorical(
        long[SAMPLE].map(samples[CONDITION].astype(str)), categories=conditions
    )
    return long[[SAMPLE, DONOR, CONDITION, group_key, *PROPORTION_COLUMNS]]


def transform_proportions(counts: pd.DataFrame, *, transform: str = "asin") -> pd.DataFrame:
    """Variance-stabilised proportions (speckle ``getTransformedProps``).

    Parameters
    ----------
    counts
        Cells per sample (rows) and group (columns).
    transform
        ``"asin"``: ``arcsin(sqrt(p))``; ``"logit"``: ``log(p / (1 - p))`` of
        ``p = (n + 0.5) / sum(n + 0.5)``, so that zero counts stay finite.

    Returns
    -------
    pandas.DataFrame
        Transformed proportions shaped like ``counts``.
    """
    _check_options(transform=transform, min_samples=1)
    counts = counts.astype(float)
    if transform == "asin":
        return np.arcsin(np.sqrt(counts.div(counts.sum(axis=1), axis=0)))
    pseudo = (counts + 0.5).div((counts + 0.5).sum(axis=1), axis=0)
    return np.log(pseudo / (1 - pseudo))


# --- propeller --------------------------------------------------------------------------------


class _Fit(NamedTuple):
    t: pd.DataFrame  # cell types x non-reference conditions
    p_value: pd.DataFrame
    df_total: float
    design: str
    reason: str  # why nothing could be tested; empty when fitted


def _covariate_columns(values: pd.Series, name: str) -> dict[str, np.ndarray]:
    if pd.api.types.is_numeric_dtype(values) and not isinstance(values.dtype, pd.CategoricalDtype):
        return {name: values.to_numpy(dtype=float)}
    text = values.astype(str)
    return {f"{name}[{level}]": (text == level).to_numpy(float) for level in _levels(values)[1:]}


def _design(
    samples: pd.DataFrame, *, conditions: list[str], covariates: list[str], paired: bool
) -> tuple[pd.DataFrame, str]:
    """Design matrix: intercept, condition vs the reference (first), covariates, donor."""
    condition = samples[CONDITION].astype(str)
    columns = {"(Intercept)": np.ones(len(samples))}
    columns |= {f"condition[{c}]": (condition == c).to_numpy(float) for c in conditions[1:]}
    terms = ["condition"]
    for covariate in covariates:
        columns |= _covariate_columns(samples[covariate], covariate)
        terms.append(covariate)
    donors = samples[DONOR].astype(str)
    spanning = condition.groupby(donors).nunique().gt(1).any()
    if paired and spanning:
        columns |= {f"donor[{d}]": (donors == d).to_numpy(float) for d in sorted(set(donors))[1:]}
        terms.append("donor")
    formula = "~ " + " + ".join(terms)
    if paired and not spanning:
        formula += " (paired, but no donor is in two conditions)"
    return pd.DataFrame(columns, index=samples.index), formula


def _least_squares(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coefficients, unscaled standard errors sqrt(diag((X'X)^-1)) and residual variances."""
    q, r = np.linalg.qr(x)
    coefficients = np.linalg.solve(r, q.T @ y)
    r_inv = np.linalg.inv(r)
    residuals = y - x @ coefficients
    sigma2 = np.sum(residuals**2, axis=0) / (x.shape[0] - x.shape[1])
    return coefficients, np.sqrt(np.sum(r_inv**2, axis=1)), sigma2


def _fit(
    counts: pd.DataFrame,
    samples: pd.DataFrame,
    *,
    conditions: list[str],
    covariates: list[str],
    paired: bool,
    transform: str,
) -> _Fit:
    """Fit propeller's model to the samples of ``conditions`` (reference first)."""
    x, formula = _design(samples, conditions=conditions, covariates=covariates, paired=paired)
    counts = counts.loc[samples.index]
    # Transform with every group (unassigned too), then leave out what is not a cell type.
    values = transform_proportions(counts, transform=transform)
    groups = [g for g in counts.columns if g != UNASSIGNED and counts[g].sum() > 0]
    empty = pd.DataFrame(index=groups, columns=conditions[1:], dtype=float)
    n, p = x.shape
    if np.linalg.matrix_rank(x.to_numpy()) < p:
        reason = f"design {formula} is not of full rank: a covariate or donor is confounded"
        return _Fit(empty, empty, np.nan, formula, f"{reason} with condition")
    if n <= p:
        reason = f"no residual degrees of freedom ({n} samples, {p} coefficients)"
        return _Fit(empty, empty, np.nan, formula, reason)
    if not groups:
        reason = "no cell type has cells in the tested samples"
        return _Fit(empty, empty, np.nan, formula, reason)
    coefficients, unscaled, sigma2 = _least_squares(values[groups].to_numpy(), x.to_numpy())
    keep = slice(1, len(conditions))  # the condition coefficients follow the intercept
    moderated = ebayes(coefficients[keep].T, unscaled[keep], sigma2, df_residual=n - p)
    t = pd.DataFrame(moderated.t, index=groups, columns=conditions[1:])
    p_value = pd.DataFrame(moderated.p_value, index=groups, columns=conditions[1:])
    return _Fit(t, p_value, moderated.df_total, formula, "")


def _conditions(column: pd.Series, reference: str) -> list[str]:
    conditions = _levels(column)
    if reference not in conditions:
        msg = (
            f"Reference condition '{reference}' is not in the data (conditions: "
            f"{', '.join(conditions)}); set the reference to one of them."
        )
        raise CompositionError(msg)
    return [reference] + [c for c in conditions if c != reference]


def _reasons(
    groups: list[str], level: str, *, fit: _Fit | None, n_samples: pd.Series, min_samples: int
) -> list[str]:
    """Why each group is not tested in the contrast ``level`` vs the reference ('' if it is)."""
    reference = n_samples.index[0]
    for condition, label in ((level, "condition"), (reference, "reference")):
        if n_samples[condition] < min_samples:
            reason = (
                f"{n_samples[condition]} sample(s) of the {label} '{condition}', fewer than "
                f"min_samples={min_samples}"
            )
            return [reason] * len(groups)
    if fit.reason:
        return [fit.reason] * len(groups)
    untested = {UNASSIGNED: "unassigned cells count in the totals but are not a cell type"}
    return [
        "" if group in fit.t.index else untested.get(group, "no cells in the tested samples")
        for group in groups
    ]


def _contrast(
    props: pd.DataFrame,
    level: str,
    *,
    group_key: str,
    fit: _Fit | None,
    n_samples: pd.Series,
    min_samples: int,
) -> pd.DataFrame:
    """One row per group: ``level`` against the reference (the first of ``n_samples``)."""
    reference = n_samples.index[0]
    means = props.pivot_table(
        index=group_key, columns=CONDITION, values="proportion", aggfunc="mean", observed=True
    )
    groups = list(means.index)
    table = pd.DataFrame({group_key: groups, "condition": level, "reference": reference})
    table["n_samples"] = n_samples[level]
    table["n_samples_reference"] = n_samples[reference]
    table["mean_proportion"] = means[level].to_numpy()
    table["mean_proportion_reference"] = means[reference].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        table["log2_ratio"] = np.log2(table["mean_proportion"] / table["mean_proportion_reference"])
    reasons = _reasons(groups, level, fit=fit, n_samples=n_samples, min_samples=min_samples)
    table["tested"] = [not reason for reason in reasons]
    tested = table["tested"].to_numpy()
    for column in ("t", "p_value"):
        values = getattr(fit, column)[level].reindex(groups).to_numpy() if tested.any() else 0
        table[column] = np.where(tested, values, np.nan)
    table["fdr"] = benjamini_hochberg(table["p_value"])
    table["df_total"] = np.where(tested, fit.df_total if tested.any() else 0, np.nan)
    table["design"] = fit.design if fit else "not fitted"
    table["reason"] = reasons
    return table


def composition_test(
    obs: pd.DataFrame,
    *,
    group_key: str = "cell_type",
    reference: str,
    covariates: Sequence[str] = (),
    paired: bool = False,
    min_samples: int = 2,
    transform: str = "asin",
    sample_key: str = "sample",
) -> pd.DataFrame:
    """Test each cell type's proportion across conditions with propeller (across samples).

    Per sample proportions are transformed (:func:`transform_proportions`), one linear model
    per cell type is fitted with the design ``~ condition + covariates`` (``+ donor`` when
    ``paired`` and some donor has samples in more than one condition), and each condition's
    coefficient against ``reference`` gets limma's moderated t (:func:`ebayes`) and a
    Benjamini-Hochberg FDR across the cell types of that contrast.

    Parameters
    ----------
    obs
        Cell metadata: ``sample_key``, ``donor``, ``condition`` (categorical), ``group_key``
        and the covariates, one value of each per sample.
    group_key
        The cell grouping tested (``cell_type``, ``cell_lineage``, ...).
    reference
        The condition every other condition is compared with.
    covariates
        Sample-level columns added to the design: numeric ones as they are, others as
        factors (first level the baseline).
    paired
        Add donor to the design, so that conditions are compared within donors.
    min_samples
        A condition (or the reference) with fewer samples is not tested: its rows say why,
        and its samples stay out of the model.
    transform
        ``"asin"`` (arcsine square root) or ``"logit"``.
    sample_key
        The sample column.

    Returns
    -------
    pandas.DataFrame
        One row per group x non-reference condition: ``group_key`` and :data:`RESULT_COLUMNS`.
        ``mean_proportion(_reference)`` are plain means of the samples' proportions (not
        covariate-adjusted), ``log2_ratio`` their log2 ratio; ``t``, ``p_value``, ``fdr`` and
        ``df_total`` are NaN where ``tested`` is False, and ``reason`` then says why.
    """
    _check_options(transform=transform, min_samples=min_samples)
    covariates = list(covariates)
    _require(obs, [sample_key, DONOR, CONDITION, group_key, *covariates])
    props = sample_proportions(obs, group_key=group_key, sample_key=sample_key)
    samples = _sample_table(obs, sample_key=sample_key, columns=[DONOR, CONDITION, *covariates])
    conditions = _conditions(obs[CONDITION], reference)
    n_samples = samples[CONDITION].astype(str).value_counts().reindex(conditions)
    fitted = [c for c in conditions if n_samples[c] >= min_samples]
    _note_pairing(samples, paired=paired)
    fit = None
    if reference in fitted and len(fitted) > 1:
        counts = props.pivot(index=SAMPLE, columns=group_key, values="n_cells")
        chosen = samples[samples[CONDITION].astype(str).isin(fitted)]
        options = dict(covariates=covariates, paired=paired, transform=transform)
        fit = _fit(counts, chosen, conditions=fitted, **options)
    tables = [
        _contrast(
            props, level, group_key=group_key, fit=fit, n_samples=n_samples, min_samples=min_samples
        )
        for level in conditions[1:]
    ]
    if not tables:
        log.info("Only one condition (%s): no composition test.", reference)
        return pd.DataFrame(columns=[group_key, *RESULT_COLUMNS])
    table = pd.concat(tables, ignore_index=True)
    table["method"] = f"propeller ({TRANSFORMS[transform]}), limma eBayes moderated t, BH FDR"
    return table[[group_key, *RESULT_COLUMNS]]


def _check_options(*, transform: str, min_samples: int) -> None:
    if transform not in TRANSFORMS:
        msg = f"Unknown transform '{transform}'; choose one of {sorted(TRANSFORMS)}."
        raise CompositionError(msg)
    if min_samples < 1:
        msg = f"min_samples must be at least 1, got {min_samples}."
        raise CompositionError(msg)


def _note_pairing(samples: pd.DataFrame, *, paired: bool) -> None:
    spans = samples[CONDITION].astype(str).groupby(samples[DONOR].astype(str)).nunique()
    if not paired and (spans > 1).any():
        log.warning(
            "Donors %s have samples in more than one condition; paired=True would compare "
            "conditions within donors.",
            ", ".join(spans.index[spans > 1]),
        )


# --- figure -----------------------------------------------------------------------------------


def _panel_order(props: pd.DataFrame, results: pd.DataFrame | None, group_key: str) -> list:
    means = props.groupby(group_key, observed=True)["proportion"].mean()
    order = means.sort_values(ascending=False, kind="stable")
    if results is None or results.empty:
        return [str(g) for g in order.index]
    best = results.groupby(group_key, observed=True)["fdr"].min().reindex(order.index)
    return [str(g) for g in best.fillna(2.0).sort_values(kind="stable").index]


def _panel_title(group: str, results: pd.DataFrame | None, group_key: str) -> str:
    if results is None or results.empty:
        return group
    mine = results[results[group_key].astype(str) == group]
    lines = [
        f"{row.condition}: FDR {row.fdr:.2g}" if row.tested else f"{row.condition}: not tested"
        for row in mine.itertuples()
    ]
    return "\n".join([group, *lines[:3]])


def proportion_plot(
    props: pd.DataFrame,
    *,
    reference: str,
    group_key: str = "cell_type",
    results: pd.DataFrame | None = None,
    max_groups: int = 16,
    n_cols: int = 4,
) -> plt.Figure:
    """Proportion of every sample (one dot each) per condition, one panel per cell type.

    Parameters
    ----------
    props
        The table of :func:`sample_proportions`.
    reference
        The reference condition, drawn first.
    group_key
        The group column of ``props``.
    results
        The table of :func:`composition_test`: panels are then ordered by FDR and their
        titles carry it; otherwise panels follow the mean proportion.
    max_groups
        Draw at most this many panels.
    n_cols
        Panels per row.

    Returns
    -------
    matplotlib.figure.Figure
        A horizontal line marks each condition's mean proportion.
    """
    conditions = _conditions(props[CONDITION], reference)
    groups = _panel_order(props, results, group_key)[:max_groups]
    n_cols = max(min(n_cols, len(groups)), 1)
    n_rows = max(-(-len(groups) // n_cols), 1)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.3 * n_cols, 2.4 * n_rows), squeeze=False)
    for ax, group in zip(axes.flat, groups, strict=False):
        mine = props[props[group_key].astype(str) == group]
        for i, condition in enumerate(conditions):
            values = mine.loc[mine[CONDITION].astype(str) == condition, "proportion"]
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else 0.0
            ax.scatter(i + jitter, values, s=22, zorder=3)
            if len(values):
                ax.hlines(values.mean(), i - 0.25, i + 0.25, color="black")
        ax.set_xticks(range(len(conditions)), conditions, rotation=45, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(conditions) - 0.4)
        ax.set_title(_panel_title(group, results, group_key), fontsize=7)
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("proportion of sample", fontsize=7)
    fig.tight_layout()
    return fig
