"""Offline gene-set enrichment with gseapy: prerank GSEA per group and marker over-representation.

Gene sets are passed to gseapy as a dict (see :func:`gene_set_dict`), never as an Enrichr
library name, so no step downloads anything. Genes are matched to the sets here, exactly or
ignoring letter case, and handed to gseapy under neutral ids: gseapy otherwise guesses the
letter case of symbols and may upper-case the ranking on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import gseapy
import numpy as np
import pandas as pd

from osteoimmune.errors import EnrichmentError
from osteoimmune.scoring import match_symbols
from osteoimmune.signatures import SignatureLibrary

log = logging.getLogger(__name__)

PRERANK_COLUMNS = ("group", "term", "es", "nes", "pval", "fdr", "n_genes", "n_ranked", "lead_genes")
ORA_COLUMNS = (
    "group",
    "term",
    "overlap",
    "n_overlap",
    "set_size",
    "n_query",
    "pval",
    "fdr",
    "odds_ratio",
    "genes",
)


def gene_set_dict(
    library: SignatureLibrary, *, species: str, use: str | tuple[str, ...] | None = None
) -> dict[str, list[str]]:
    """Return the library's sets with genes for ``species`` as ``{set name: genes}``.

    Parameters
    ----------
    library
        The signature library (:func:`osteoimmune.signatures.load_library`).
    species
        ``human`` or ``mouse``.
    use
        Only sets with this ``use`` (None: every set with a gene list for the species).
    """
    return {name: library.genes(name, species) for name in library.names(use=use, species=species)}


def _check_table(table: pd.DataFrame, columns: Sequence[str], *, what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        msg = (
            f"{what} has no column(s) {missing} (columns: {', '.join(map(str, table.columns))}); "
            "pass a rank_genes_groups-style table or name its columns."
        )
        raise EnrichmentError(msg)


def _check_gene_sets(gene_sets: Mapping[str, Iterable[str]]) -> None:
    if not isinstance(gene_sets, Mapping) or not gene_sets:
        msg = (
            "Gene sets must be a non-empty mapping {set name: genes}; build one offline with "
            "gene_set_dict(load_library(), species=...)."
        )
        raise EnrichmentError(msg)


def _check_prerank_options(*, min_size: int, max_size: int, permutations: int) -> None:
    if not 1 <= min_size <= max_size:
        msg = f"Prerank gene-set sizes need 1 <= min_size <= max_size, got {min_size}, {max_size}."
        raise EnrichmentError(msg)
    if permutations < 1:
        msg = f"Prerank needs at least 1 permutation for its p-values, got {permutations}."
        raise EnrichmentError(msg)


def _match_sets(
    gene_sets: Mapping[str, Iterable[str]],
    universe: Sequence[str],
    *,
    case_insensitive: bool,
    species: str | None = None,
) -> dict[str, list[str]]:
    """Each set's genes as spelled in ``universe``, keeping only genes found there.

    With ``species``, a gene missing by its symbol is found by a previous or alias symbol.
    """
    sets = {term: [str(g) for g in genes] for term, genes in gene_sets.items()}
    # one lookup over the universe for all sets, then split back per set
    found = iter(
        match_symbols(
            [g for genes in sets.values() for g in genes],
            universe,
            case_insensitive=case_insensitive,
            species=species,
        )
    )
    matched = {}
    for term, genes in sets.items():
        spelled = [next(found) for _ in genes]
        matched[term] = list(dict.fromkeys(g for g in spelled if g is not None))
    return matched


def _ranking(group_table: pd.DataFrame, *, gene_col: str, score_col: str) -> pd.Series:
    """Scores by gene, best first; ties broken by gene name so the order is reproducible."""
    table = group_table[[gene_col, score_col]].dropna()
    table = table.assign(**{gene_col: table[gene_col].astype(str)})
    table = table.sort_values([score_col, gene_col], ascending=[False, True], kind="stable")
    table = table.drop_duplicates(gene_col)
    return pd.Series(table[score_col].to_numpy(float), index=table[gene_col].to_numpy())


def _neutral_ids(genes: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    # Upper-case letters and digits: gseapy sees them as upper-case symbols, not Entrez ids.
    to_id = {gene: f"G{i:07d}" for i, gene in enumerate(genes)}
    return to_id, {v: k for k, v in to_id.items()}


def _decode(joined: object, from_id: Mapping[str, str], *, sort: bool = False) -> str:
    if not isinstance(joined, str) or not joined:
        return ""
    genes = [from_id[g] for g in joined.split(";")]
    return ";".join(sorted(genes) if sort else genes)


def _prerank_one(ranking: pd.Series, sets: dict[str, list[str]], **options) -> pd.DataFrame:
    to_id, from_id = _neutral_ids(list(ranking.index))
    rnk = pd.Series(ranking.to_numpy(), index=[to_id[g] for g in ranking.index], name="score")
    encoded = {term: [to_id[g] for g in genes] for term, genes in sets.items()}
    result = gseapy.prerank(
        rnk=rnk,
        gene_sets=encoded,
        outdir=None,
        no_plot=True,
        ascending=None,  # already sorted, ties in a fixed order
        verbose=False,
        **options,
    ).res2d
    table = pd.DataFrame(
        {
            "term": result["Term"].astype(str),
            "es": result["ES"].astype(float),
            "nes": result["NES"].astype(float),
            "pval": result["NOM p-val"].astype(float),
            "fdr": result["FDR q-val"].astype(float),
        }
    )
    table["n_genes"] = [len(sets[t]) for t in table["term"]]
    table["n_ranked"] = len(ranking)
    table["lead_genes"] = [_decode(g, from_id) for g in result["Lead_genes"]]
    return table


def prerank_by_group(
    markers: pd.DataFrame,
    gene_sets: Mapping[str, Iterable[str]],
    *,
    group_col: str,
    gene_col: str = "gene",
    score_col: str = "score",
    min_size: int = 5,
    max_size: int = 500,
    permutations: int = 1000,
    seed: int = 0,
    threads: int = 1,
    case_insensitive: bool = False,
    species: str | None = None,
) -> pd.DataFrame:
    """Prerank GSEA per group, genes ranked by their marker statistic (highest first).

    The ranking should hold every tested gene of a group (e.g. scanpy's rank_genes_groups
    with ``n_genes`` = all genes), not only its top markers: on a truncated list the
    enrichment score only compares the top markers with each other.

    Parameters
    ----------
    markers
        One row per group x gene, with ``group_col``, ``gene_col`` and ``score_col``.
    gene_sets
        ``{set name: genes}``, e.g. from :func:`gene_set_dict`.
    group_col, gene_col, score_col
        Column names of ``markers``.
    min_size, max_size
        Sets with fewer or more of their genes in a group's ranking are not tested.
    permutations
        Gene-set permutations per group for the p-values; gseapy reports p = 0 when no
        permutation reached the observed score, i.e. p < 1 / permutations.
    seed, threads
        Random seed and worker threads of gseapy; the same seed gives the same table.
    case_insensitive
        Match gene symbols ignoring letter case (e.g. mouse sets on upper-cased symbols).
    species
        ``human`` or ``mouse``: set genes missing by symbol are found by previous or alias
        symbols (:mod:`osteoimmune.genes`); None matches symbols only.

    Returns
    -------
    pandas.DataFrame
        :data:`PRERANK_COLUMNS`: ``es``, ``nes``, nominal ``pval`` and gseapy's ``fdr``
        (within the group), ``n_genes`` of the set in the ranking, ``n_ranked`` genes in the
        ranking, ``lead_genes`` (leading edge, ``;``-joined, as spelled in ``markers``).
        Groups where no set has ``min_size`` genes are left out (and logged); no rows when
        no group can be tested.
    """
    _check_table(markers, [group_col, gene_col, score_col], what="The marker table")
    _check_gene_sets(gene_sets)
    _check_prerank_options(min_size=min_size, max_size=max_size, permutations=permutations)
    options = dict(
        min_size=min_size,
        max_size=max_size,
        permutation_num=permutations,
        seed=seed,
        threads=threads,
    )
    tables = []
    for group, group_table in markers.groupby(group_col, sort=True, observed=True):
        ranking = _ranking(group_table, gene_col=gene_col, score_col=score_col)
        matched = _match_sets(
            gene_sets, ranking.index, case_insensitive=case_insensitive, species=species
        )
        # gseapy also needs each set to be smaller than the ranking.
        sizes = range(min_size, min(max_size, len(ranking) - 1) + 1)
        sets = {t: g for t, g in matched.items() if len(g) in sizes}
        if not sets:
            log.info(
                "Prerank: group %s skipped, no gene set has %d-%d genes among its %d ranked.",
                group,
                min_size,
                max_size,
                len(ranking),
            )
            continue
        tables.append(_prerank_one(ranking, sets, **options).assign(group=str(group)))
    if not tables:
        return pd.DataFrame(columns=PRERANK_COLUMNS)
    table = pd.concat(tables, ignore_index=True)[list(PRERANK_COLUMNS)]
    return table.sort_values(["group", "pval", "term"], kind="stable").reset_index(drop=True)


def top_markers(
    markers: pd.DataFrame,
    *,
    group_col: str,
    top_n: int,
    gene_col: str = "gene",
    score_col: str = "score",
    padj_col: str = "pval_adj",
    max_padj: float = 0.05,
) -> dict[str, list[str]]:
    """Each group's up-regulated markers: positive score, adjusted p <= ``max_padj``, top n.

    Returns
    -------
    dict
        Group (as text) -> genes, best first; groups with no such marker map to [].
    """
    _check_table(markers, [group_col, gene_col, score_col, padj_col], what="The marker table")
    passed = markers[(markers[score_col] > 0) & (markers[padj_col] <= max_padj)]
    top = {}
    for group in sorted(markers[group_col].dropna().unique(), key=str):
        rows = passed[passed[group_col] == group]
        rows = rows.sort_values([score_col, gene_col], ascending=[False, True], kind="stable")
        top[str(group)] = list(dict.fromkeys(rows[gene_col].astype(str)))[:top_n]
    return top


def _benjamini_hochberg(p_values: np.ndarray, n_tests: int) -> np.ndarray:
    """BH over ``n_tests`` tests of which ``p_values`` are given; the others have p = 1."""
    if not len(p_values):
        return np.array([], dtype=float)
    order = np.argsort(p_values, kind="stable")
    ranked = p_values[order] * n_tests / np.arange(1, len(p_values) + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1)
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out


def _enrich_one(
    query: list[str],
    ids: tuple[dict[str, str], dict[str, str]],
    encoded: dict[str, list[str]],
) -> pd.DataFrame:
    # ids: the background's neutral ids (_neutral_ids); encoded: the sets in them
    to_id, from_id = ids
    result = gseapy.enrich(
        gene_list=[to_id[g] for g in query],
        gene_sets=encoded,
        background=list(from_id),
        outdir=None,
        no_plot=True,
        verbose=False,
    ).results
    # gseapy returns an empty list, not a table, when no set shares a gene with the query.
    if not isinstance(result, pd.DataFrame) or result.empty:
        return pd.DataFrame(columns=ORA_COLUMNS)
    overlap = result["Overlap"].str.split("/", expand=True).astype(int)
    pvals = result["P-value"].to_numpy(float)
    return pd.DataFrame(
        {
            "term": result["Term"].astype(str),
            "overlap": result["Overlap"],
            "n_overlap": overlap[0],
            "set_size": overlap[1],
            "n_query": len(query),
            "pval": pvals,
            # Over every set with genes in the background; sets without a hit have p = 1.
            "fdr": _benjamini_hochberg(pvals, len(encoded)),
            "odds_ratio": result["Odds Ratio"].astype(float),
            # gseapy lists the overlap in set order, which varies between runs: sorted
            "genes": [_decode(g, from_id, sort=True) for g in result["Genes"]],
        }
    )


def overrepresentation(
    markers: pd.DataFrame,
    gene_sets: Mapping[str, Iterable[str]],
    *,
    group_col: str,
    background: Iterable[str],
    top_n: int,
    max_padj: float = 0.05,
    gene_col: str = "gene",
    score_col: str = "score",
    padj_col: str = "pval_adj",
    case_insensitive: bool = False,
    species: str | None = None,
) -> pd.DataFrame:
    """Over-representation of each group's top markers in the gene sets (hypergeometric test).

    Parameters
    ----------
    markers
        One row per group x gene with ``group_col``, ``gene_col``, ``score_col``, ``padj_col``.
    gene_sets
        ``{set name: genes}``, e.g. from :func:`gene_set_dict`.
    group_col
        The group column of ``markers``.
    background
        Every gene that could have been a marker: the dataset's genes (``adata.var_names``).
        Set genes outside it are not counted.
    top_n, max_padj
        The query of a group: up to ``top_n`` genes with positive score and adjusted p at
        most ``max_padj`` (see :func:`top_markers`); the workflow's are config
        ``enrichment.top_n`` and ``enrichment.max_padj``.
    gene_col, score_col, padj_col
        Column names of ``markers``.
    case_insensitive
        Match gene symbols ignoring letter case.
    species
        ``human`` or ``mouse``: set genes missing by symbol are found by previous or alias
        symbols (:mod:`osteoimmune.genes`); None matches symbols only.

    Returns
    -------
    pandas.DataFrame
        :data:`ORA_COLUMNS`, one row per group x set sharing at least one gene with the
        query: ``overlap`` (``k/m``, m = set genes in the background), hypergeometric
        ``pval``, Benjamini-Hochberg ``fdr`` within the group over every set with genes in
        the background, gseapy's ``odds_ratio`` and the shared ``genes``. No rows when no
        query gene is in any set.
    """
    _check_gene_sets(gene_sets)
    universe = list(dict.fromkeys(str(g) for g in background))
    if not universe:
        msg = "The enrichment background is empty; pass the dataset's genes (adata.var_names)."
        raise EnrichmentError(msg)
    queries = top_markers(
        markers,
        group_col=group_col,
        gene_col=gene_col,
        score_col=score_col,
        padj_col=padj_col,
        top_n=top_n,
        max_padj=max_padj,
    )
    found = _match_sets(queries, universe, case_insensitive=case_insensitive)
    n_missing = sum(len(queries[g]) - len(found[g]) for g in queries)
    if n_missing and not any(found.values()):
        msg = (
            "None of the marker genes is in the enrichment background; pass the dataset's "
            "genes (adata.var_names) as background, or set case_insensitive=True."
        )
        raise EnrichmentError(msg)
    if n_missing:
        log.warning("ORA: %d marker genes are not in the background; left out.", n_missing)
    matched = _match_sets(gene_sets, universe, case_insensitive=case_insensitive, species=species)
    sets = {term: genes for term, genes in matched.items() if genes}
    # the background's ids and the sets in them, made once for all groups
    ids = _neutral_ids(universe)
    encoded = {term: [ids[0][g] for g in genes] for term, genes in sets.items()}
    tables = [
        _enrich_one(query, ids, encoded).assign(group=group)
        for group, query in found.items()
        if query and sets
    ]
    tables = [t for t in tables if not t.empty]
    if not tables:
        return pd.DataFrame(columns=ORA_COLUMNS)
    table = pd.concat(tables, ignore_index=True)[list(ORA_COLUMNS)]
    return table.sort_values(["group", "pval", "term"], kind="stable").reset_index(drop=True)
