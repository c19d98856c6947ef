"""Per-cell gene-signature scores: gene coverage of each set, scanpy module scores, group means.

The caller gives log-normalised expression in ``adata.X``. Sets with too few of their genes in
the dataset are not scored; the coverage table says which and why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from osteoimmune.calibration import calibrate
from osteoimmune.errors import InputError, SignatureError
from osteoimmune.genes import aliases_used, resolve_symbols
from osteoimmune.kernels.score_genes import mean_scores
from osteoimmune.ranks import method_agreement
from osteoimmune.signatures import SignatureLibrary

SCORE_PREFIX = "score_"
Z_PREFIX = "z_"
COVERAGE_COLUMNS = (
    "n_genes",
    "n_present",
    "n_expressed",
    "fraction_present",
    "fraction_expressed",
    "missing",
    "aliases_used",
    "scored",
    "reason",
)


def default_score_sets(library: SignatureLibrary, species: str) -> list[str]:
    """Return the sets scored by default: every ``use: score`` set with genes for ``species``.

    That is macrophage polarization (M1/M2), trained immunity and the osteoimmune programs
    (osteoclast, osteoblast lineage, LEPR+ niche, complement, NET machinery, NK cytotoxicity,
    DC maturation).
    """
    return list(library.names(use=("score",), species=species))


def _resolve_sets(
    library: SignatureLibrary, species: str, sets: str | list[str] | None
) -> list[str]:
    if sets is None:
        return default_score_sets(library, species)
    names = list(dict.fromkeys([sets] if isinstance(sets, str) else sets))
    for name in names:
        library.genes(name, species)  # unknown names and species raise with suggestions
        if library.sets[name]["use"] == "reference_only":
            msg = (
                f"Signature set '{name}' is curated as reference_only (mechanistic context, "
                "not a score); drop it from the sets to score."
            )
            raise SignatureError(msg)
    return names


def match_symbols(
    genes, universe, *, case_insensitive: bool = False, species: str | None = None
) -> list[str | None]:
    """Each gene as spelled in ``universe`` (None when absent), in the order of ``genes``.

    ``case_insensitive`` matches on upper case; when two names of ``universe`` differ only by
    case, the first one is used. With ``species``, a gene missing by its symbol is found by a
    previous or alias symbol (see :func:`osteoimmune.genes.resolve_symbols`).
    """
    resolved = resolve_symbols(genes, universe, species=species, case_insensitive=case_insensitive)
    return [var for _, var, _ in resolved]


def _split(resolved) -> tuple[list[str], list[str]]:
    present = list(dict.fromkeys(var for _, var, _ in resolved if var is not None))
    return present, [gene for gene, var, _ in resolved if var is None]


def gene_coverage(
    adata: AnnData,
    genes: list[str],
    *,
    case_insensitive: bool = False,
    species: str | None = None,
) -> tuple[list[str], list[str]]:
    """Split a gene set into the genes present in ``adata.var_names`` and those missing.

    Parameters
    ----------
    adata
        The dataset.
    genes
        Gene symbols of the set.
    case_insensitive
        Match symbols on upper case (for datasets that store mouse symbols upper-cased).
        If two var_names differ only by case, the first one is used.
    species
        ``human`` or ``mouse``: also match previous and alias symbols (IL8 for CXCL8);
        None for exact symbols only.

    Returns
    -------
    tuple of list
        The dataset's own var_names for the present genes (in set order) and the set's
        genes that are missing.
    """
    return _split(
        resolve_symbols(genes, adata.var_names, species=species, case_insensitive=case_insensitive)
    )


def _expressed(adata: AnnData, var_names: list[str]) -> set[str]:
    """Return the var_names among ``var_names`` with a nonzero value in any cell of X."""
    if not var_names:
        return set()
    x = adata.X[:, adata.var_names.get_indexer(var_names)]
    # `!= 0` on a sparse matrix stays sparse, so the matrix is never densified.
    nonzero = (x != 0).sum(axis=0) if sparse.issparse(x) else (np.asarray(x) != 0).sum(axis=0)
    counts = np.asarray(nonzero).ravel()
    return {var for var, n in zip(var_names, counts, strict=True) if n > 0}


def _reason(
    n_genes: int, n_present: int, n_expressed: int, min_coverage: float, min_expressed: int
) -> str:
    if n_present == 0:
        return "no gene of the set is in the dataset"
    if n_present / n_genes < min_coverage:
        return (
            f"{n_present / n_genes:.0%} of genes present ({n_present}/{n_genes}), "
            f"below the {min_coverage:.0%} threshold"
        )
    if n_expressed == 0:
        return f"none of the {n_present} present genes is expressed in any cell"
    if n_expressed < min_expressed:
        return (
            f"{n_expressed} of the {n_present} present genes expressed in any cell, "
            f"below the minimum of {min_expressed} (signatures.min_expressed_genes)"
        )
    return ""


def _check_input(adata: AnnData, min_coverage: float, min_expressed: int = 1) -> None:
    if adata.X is None:
        msg = "The AnnData has no X; score on log-normalised expression in X."
        raise SignatureError(msg)
    if not adata.var_names.is_unique:
        msg = "The AnnData's var_names are not unique; call adata.var_names_make_unique() first."
        raise SignatureError(msg)
    if not 0 < min_coverage <= 1:
        msg = f"min_coverage must be in (0, 1], got {min_coverage}."
        raise SignatureError(msg)
    if min_expressed < 1:
        msg = f"min_expressed_genes must be at least 1, got {min_expressed}."
        raise SignatureError(msg)


def coverage_table(
    adata: AnnData,
    library: SignatureLibrary,
    *,
    species: str,
    sets: str | list[str] | None,
    case_insensitive: bool = False,
    min_coverage: float = 0.5,
    min_expressed_genes: int = 3,
) -> pd.DataFrame:
    """Tabulate how much of each gene set the dataset covers.

    Parameters
    ----------
    adata
        The dataset (log-normalised or counts; only zero / nonzero matters here).
    library
        The signature library.
    species
        ``human`` or ``mouse``: which gene list of each set to use.
    sets
        Set names; None for :func:`default_score_sets`.
    case_insensitive
        Match gene symbols ignoring case (see :func:`gene_coverage`).
    min_coverage
        Minimum fraction of a set's genes present in the dataset for it to be scored.
    min_expressed_genes
        Minimum number of a set's genes expressed in some cell for it to be scored: fewer
        make the score one gene's readout, and its null calibration degenerate.

    Returns
    -------
    pandas.DataFrame
        One row per set (index ``set``): ``n_genes``, ``n_present``, ``n_expressed`` (present
        genes nonzero in at least one cell), ``fraction_present``, ``fraction_expressed`` (both
        of ``n_genes``), ``missing`` (comma-joined), ``aliases_used`` (genes found by a
        previous or alias symbol, e.g. ``CXCL8<-IL8; WARS1<-WARS``), ``scored`` and
        ``reason`` (empty if scored).
    """
    _check_input(adata, min_coverage, min_expressed_genes)
    names = _resolve_sets(library, species, sets)
    resolved = {
        name: resolve_symbols(
            library.genes(name, species),
            adata.var_names,
            species=species,
            case_insensitive=case_insensitive,
        )
        for name in names
    }
    coverage = {name: _split(found) for name, found in resolved.items()}
    expressed = _expressed(adata, list(dict.fromkeys(g for p, _ in coverage.values() for g in p)))
    rows = []
    for name, (present, missing) in coverage.items():
        n_genes, n_present = len(present) + len(missing), len(present)
        n_expressed = sum(g in expressed for g in present)
        reason = _reason(n_genes, n_present, n_expressed, min_coverage, min_expressed_genes)
        rows.append(
            (
                n_genes,
                n_present,
                n_expressed,
                n_present / n_genes,
                n_expressed / n_genes,
                ",".join(missing),
                aliases_used(resolved[name]),
                not reason,
                reason,
            )
        )
    table = pd.DataFrame(rows, columns=list(COVERAGE_COLUMNS), index=pd.Index(names, name="set"))
    return table.astype({"n_genes": int, "n_present": int, "n_expressed": int, "scored": bool})


def _control_params(n_vars: int, *, n_bins: int, ctrl_size: int) -> tuple[int, int]:
    # scanpy puts round(n_vars / (n_bins - 1)) genes in each expression bin and breaks when that
    # rounds to zero, so small gene panels get fewer bins (about 10 genes per bin).
    n_bins = max(2, min(n_bins, n_vars // 10))
    ctrl_size = max(1, min(ctrl_size, n_vars // n_bins))
    return n_bins, ctrl_size


def _coverage_for_uns(table: pd.DataFrame) -> dict[str, list]:
    # Plain Python values only, so the table writes to h5ad.
    out: dict[str, list] = {"set": [str(name) for name in table.index]}
    for column in table.columns:
        out[column] = [v.item() if isinstance(v, np.generic) else v for v in table[column]]
    return out


def score_signatures(
    adata: AnnData,
    library: SignatureLibrary,
    *,
    species: str,
    sets: str | list[str] | None = None,
    min_coverage: float = 0.5,
    min_expressed_genes: int = 3,
    use_raw: bool = False,
    seed: int = 0,
    case_insensitive: bool = False,
    n_bins: int = 25,
    ctrl_size: int = 50,
    implementation: str = "osteoimmune",
) -> pd.DataFrame:
    """Score each covered gene set per cell as :func:`scanpy.tl.score_genes` does.

    Adds ``obs['score_<set>']`` for every set with at least ``min_coverage`` of its genes
    present and ``min_expressed_genes`` of them expressed, and ``uns['signature_coverage']``
    (the coverage table as a dict of lists). Sets below the thresholds get no column; a stale
    column from an earlier run is removed.

    Parameters
    ----------
    adata
        The dataset with log-normalised expression in X; modified in place.
    library
        The signature library.
    species
        ``human`` or ``mouse``.
    sets
        Set names; None for :func:`default_score_sets`.
    min_coverage
        Minimum fraction of a set's genes present in the dataset.
    min_expressed_genes
        Minimum number of a set's genes expressed in some cell (see :func:`coverage_table`).
    use_raw
        Must be False: scores use X, which the caller has normalised.
    seed
        Seed for the random choice of control genes.
    case_insensitive
        Match gene symbols ignoring case (see :func:`gene_coverage`).
    n_bins, ctrl_size
        Expression bins and control genes per bin for scanpy; reduced for small gene panels.
    implementation
        ``osteoimmune``: all sets in one pass
        (:func:`osteoimmune.kernels.score_genes.mean_scores`, scanpy's control genes and
        scores up to float32 rounding, ~1e-7); ``scanpy``: ``sc.tl.score_genes`` set by set.

    Returns
    -------
    pandas.DataFrame
        The coverage table of :func:`coverage_table`.
    """
    if use_raw:
        msg = "use_raw=True is not supported: normalise and log-transform X, then score X."
        raise SignatureError(msg)
    table = coverage_table(
        adata,
        library,
        species=species,
        sets=sets,
        case_insensitive=case_insensitive,
        min_coverage=min_coverage,
        min_expressed_genes=min_expressed_genes,
    )
    n_bins, ctrl_size = _control_params(adata.n_vars, n_bins=n_bins, ctrl_size=ctrl_size)
    sets = {}
    for name in table.index:
        column = f"{SCORE_PREFIX}{name}"
        if column in adata.obs:
            del adata.obs[column]
        if table.at[name, "scored"]:
            sets[name], _ = gene_coverage(
                adata,
                library.genes(name, species),
                case_insensitive=case_insensitive,
                species=species,
            )
    if sets:
        # every set in one pass over the matrix; scanpy's score_genes (ctrl_as_ref=False, the
        # scanpy 2.0 default: a set's own genes are never its controls) reads the whole
        # matrix once per set
        scores = mean_scores(
            adata,
            sets,
            n_bins=n_bins,
            ctrl_size=ctrl_size,
            seed=seed,
            implementation=implementation,
        )
        for name in sets:
            adata.obs[f"{SCORE_PREFIX}{name}"] = scores[name].to_numpy()
    adata.uns["signature_coverage"] = _coverage_for_uns(table)
    return table


def calibrated_scores(
    adata: AnnData,
    library: SignatureLibrary,
    *,
    species: str,
    coverage: pd.DataFrame,
    seed: int = 0,
    n_null: int = 100,
    case_insensitive: bool = False,
    n_bins: int = 25,
    ctrl_size: int = 50,
) -> pd.DataFrame:
    """Null-calibrated z-scores and a rank-based second method for the scored sets (in place).

    For every set scored by :func:`score_signatures` (``coverage['scored']``): ``n_null``
    random gene sets matched in size and expression bin give each cell a z-score
    (``obs['z_<set>']``) and an empirical p (``obsm['signature_p']``) for the primary score;
    UCell scores (``obsm['signature_ucell']``) are the second method.

    Returns
    -------
    pandas.DataFrame
        Per set: Spearman correlation of the primary score with UCell (method agreement).
    """
    sets = {
        name: gene_coverage(
            adata, library.genes(name, species), case_insensitive=case_insensitive, species=species
        )[0]
        for name in coverage.index[coverage["scored"].astype(bool)]
    }
    for column in [c for c in adata.obs.columns if str(c).startswith(Z_PREFIX)]:
        del adata.obs[column]
    if not sets:
        return pd.DataFrame(columns=["spearman", "n_cells"]).rename_axis("set")
    n_bins, ctrl_size = _control_params(adata.n_vars, n_bins=n_bins, ctrl_size=ctrl_size)
    mean = calibrate(
        adata, sets, method="mean", n_null=n_null, n_bins=n_bins, ctrl_size=ctrl_size, seed=seed
    )
    ucell = calibrate(adata, sets, method="ucell", n_null=n_null, n_bins=n_bins, seed=seed)
    for name in sets:
        adata.obs[f"{Z_PREFIX}{name}"] = mean.z[name].to_numpy()
    adata.obsm["signature_p"] = mean.p
    adata.obsm["signature_ucell"] = ucell.score
    adata.obsm["signature_ucell_z"] = ucell.z
    primary = adata.obs[[f"{SCORE_PREFIX}{name}" for name in sets]]
    primary.columns = list(sets)
    return method_agreement(primary, ucell.score)


def scores_by_group(adata: AnnData, *, groupby: str, prefix: str = SCORE_PREFIX) -> pd.DataFrame:
    """Mean of every ``<prefix>*`` column of ``adata.obs`` per group.

    Parameters
    ----------
    adata
        A dataset scored by :func:`score_signatures`.
    groupby
        The obs column to group cells by (e.g. a cluster or cell-type column).
    prefix
        ``score_`` for the scores, ``z_`` for the calibrated z-scores.

    Returns
    -------
    pandas.DataFrame
        One row per group: ``n_cells``, then one column per set (``score_`` prefix removed);
        only ``n_cells`` when no set was scored (e.g. a gene panel too small for every set).
    """
    if groupby not in adata.obs:
        msg = f"Column '{groupby}' is not in obs; available: {', '.join(map(str, adata.obs))}."
        raise InputError(msg)
    columns = [c for c in adata.obs.columns if str(c).startswith(prefix)]
    grouped = adata.obs.groupby(groupby, observed=True)
    means = grouped[columns].mean()
    means.columns = [c.removeprefix(prefix) for c in columns]
    means.insert(0, "n_cells", grouped.size())
    return means


GROUPINGS = ("leiden", "cell_lineage", "cell_type", "author_cell_type")


def add_user_sets(library: SignatureLibrary, user_sets: list[dict], *, species: str) -> list[str]:
    """Add users' YAML / GMT set files (``signatures.user_sets``) to ``library``.

    Returns the added names that have genes for ``species`` (scored with the defaults).
    """
    added = [
        name
        for extra in user_sets
        for name in library.add_sets(Path(extra["path"]), species=extra.get("species"))
    ]
    return [name for name in added if library.sets[name]["genes"].get(species)]


def group_means(adata: AnnData, *, groupings=GROUPINGS) -> pd.DataFrame:
    """Mean score and mean z per group for every grouping present in obs (long format).

    Columns: group, n_cells, one per set, grouping, value (``score`` or ``z``).
    """
    tables = [
        scores_by_group(adata, groupby=key, prefix=prefix)
        .rename_axis("group")
        .reset_index()
        .assign(grouping=key, value=value)
        for key in groupings
        if key in adata.obs
        for prefix, value in ((SCORE_PREFIX, "score"), (Z_PREFIX, "z"))
    ]
    return pd.concat(tables, ignore_index=True)
