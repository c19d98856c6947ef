import gzip

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from osteoimmune.errors import SignatureError
from osteoimmune.genes import (
    alias_columns,
    alias_map,
    alias_path,
    aliases_used,
    build_mouse,
    resolve_symbols,
)
from osteoimmune.panels import Panel, gene_positions, panel_coverage


@pytest.mark.parametrize(
    ("species", "renamed"),
    [
        ("human", {"CXCL8": "IL8", "WARS1": "WARS", "ATP5F1E": "ATP5E"}),
        ("mouse", {"Spi1": "Sfpi1", "Wars1": "Wars", "Atp5f1e": "Atp5e"}),
    ],
)
def test_shipped_tables_map_previous_symbols(species, renamed):
    aliases, current = alias_map(species)
    for new, old in renamed.items():
        assert aliases[old] == new and new in current and old not in current
    resolved = resolve_symbols(list(renamed), list(renamed.values()), species=species)
    assert [var for _, var, _ in resolved] == list(renamed.values())
    assert aliases_used(resolved) == "; ".join(f"{n}<-{o}" for n, o in renamed.items())


def test_tables_record_their_source_and_are_reproducible_gzip():
    for species, source in (("human", "NCBI Gene"), ("mouse", "MGI")):
        raw = alias_path(species).read_bytes()
        assert raw[4:8] == b"\0\0\0\0"  # gzip mtime 0: rebuilds are byte-identical
        lines = gzip.decompress(raw).decode().splitlines()[:10]
        header = " ".join(line for line in lines if line.startswith("#"))
        assert source in header and "Built by: python -m osteoimmune.genes" in header


def test_exact_symbol_wins_and_gene_given_by_old_symbol_finds_current():
    resolved = resolve_symbols(["CXCL8", "IL8", "CD14"], ["IL8", "CXCL8", "CD14"], species="human")
    assert resolved == [
        ("CXCL8", "CXCL8", "symbol"),
        ("IL8", "IL8", "symbol"),
        ("CD14", "CD14", "symbol"),
    ]
    assert resolve_symbols(["IL8"], ["CXCL8"], species="human") == [
        ("IL8", "CXCL8", "current: CXCL8")
    ]


def test_ambiguous_alias_is_not_used():
    # MAT1 is an alias of both MNAT1 and PEA15; EEF1B1 of EEF1B2 and EEF1B2P1.
    resolved = resolve_symbols(["MNAT1", "PEA15", "EEF1B2"], ["MAT1", "EEF1B1"], species="human")
    assert [var for _, var, _ in resolved] == [None, None, None]
    # Two var names that are aliases of the same gene: neither is used.
    assert alias_map("human")[0]["MDNCF"] == "CXCL8"
    assert resolve_symbols(["CXCL8"], ["IL8", "MDNCF"], species="human")[0][1] is None


def test_alias_that_is_a_current_symbol_is_not_used():
    # A2M and CD14 are listed as aliases of IGHA2 and NDUFA2 but are current symbols.
    resolved = resolve_symbols(["IGHA2", "NDUFA2"], ["A2M", "CD14"], species="human")
    assert [var for _, var, _ in resolved] == [None, None]
    assert alias_columns(["A2M", "CD14"], species="human") == {}


def test_unknown_species_is_an_error():
    with pytest.raises(SignatureError, match="No gene alias table for species 'rat'"):
        resolve_symbols(["Cd14"], ["Cd14", "X"], species="rat")


def test_build_mouse_from_mgi_entries(tmp_path):
    source = tmp_path / "mgi_entries.tsv"
    source.write_text(
        "ID\tsymbol\tsynonyms\tensembl\n"
        "98282\tSpi1\tSfpi1|PU1\tENSMUSG00000002111\n"
        "104630\tWars1\tWars\tENSMUSG00000021266\n"
        "1\tNA\t\t\n"
        "2\tPu1\tPu-1\t\n"
    )
    out = tmp_path / "aliases.tsv.gz"
    build_mouse(source, out, provenance="test")
    first = out.read_bytes()
    build_mouse(source, out, provenance="test")
    assert out.read_bytes() == first
    table = pd.read_csv(out, sep="\t", comment="#", keep_default_na=False)
    assert table.to_dict("list") == {
        "alias": ["PU1", "Pu-1", "Pu1", "Sfpi1", "Wars"],
        "symbol": ["Spi1", "Pu1", "Pu1", "Spi1", "Wars1"],
    }


def _old_symbol_adata() -> ad.AnnData:
    genes = ["IL8", "WARS", "CD14", "LYZ"] + [f"F{i}" for i in range(6)]
    x = np.ones((5, len(genes)), dtype=np.float32)
    x[:, 1] = 0  # WARS present, never detected
    adata = ad.AnnData(X=sparse.csr_matrix(x), var=pd.DataFrame(index=genes))
    adata.uns["osteoimmune"] = {"species": "human"}
    return adata


def test_panel_coverage_matches_previous_symbols():
    adata = _old_symbol_adata()
    assert alias_columns(adata.var_names, species="human") == {"CXCL8": 0, "WARS1": 1}
    positions = gene_positions(adata)  # species from uns['osteoimmune']
    assert positions["CXCL8"] == 0 and positions["WARS1"] == 1 and positions["IL8"] == 0
    assert "CXCL8" not in gene_positions(adata, aliases=False)
    panel = Panel("mono", "myeloid", "classical monocyte", None, ("CXCL8", "WARS1", "CD14"), ())
    table = panel_coverage(adata, {"mono": panel}, min_genes=2)
    row = table.loc["mono"]
    assert (row["n_present"], row["n_expressed"], row["used"]) == (3, 2, True)
    assert row["aliases_used"] == "CXCL8<-IL8; WARS1<-WARS" and row["missing"] == ""


def test_alias_positions_upper_cased_mouse():
    adata = _old_symbol_adata()
    adata.var_names = ["SFPI1", "WARS", "CD14", "LYZ2"] + [f"F{i}" for i in range(6)]
    positions = gene_positions(adata, case_insensitive=True, species="mouse")
    assert positions["SPI1"] == 0 and positions["WARS1"] == 1
