import socket

import anndata as ad
import gseapy
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from enrichment import main as enrichment_rule

from osteoimmune.enrichment import (
    ORA_COLUMNS,
    PRERANK_COLUMNS,
    EnrichmentError,
    gene_set_dict,
    overrepresentation,
    prerank_by_group,
    top_markers,
)
from osteoimmune.errors import OsteoimmuneError
from osteoimmune.signatures import load_library

N_GENES = 300
GENES = [f"Gene{i:03d}" for i in range(N_GENES)]
UP_IN_A = GENES[:15]
UP_IN_B = GENES[100:115]
NULL = GENES[200:230]
SETS = {"up_in_A": UP_IN_A, "up_in_B": UP_IN_B, "null": NULL, "absent": ["Xyz1", "Xyz2"]}


def _markers(*, seed: int = 0, upper: bool = False) -> pd.DataFrame:
    """A full Wilcoxon-like table: every gene ranked in groups A and B, one set boosted in each."""
    rng = np.random.default_rng(seed)
    frames = []
    for group, boosted in (("A", UP_IN_A), ("B", UP_IN_B)):
        score = rng.normal(0, 1, N_GENES)
        score[[GENES.index(g) for g in boosted]] += 5
        frames.append(
            pd.DataFrame(
                {
                    "cluster": group,
                    "gene": [g.upper() for g in GENES] if upper else GENES,
                    "score": score,
                    "logfoldchange": score / 2,
                    "pval_adj": np.where(score > 2.5, 1e-4, 0.5),
                }
            )
        )
    table = pd.concat(frames, ignore_index=True)
    table["rank"] = table.groupby("cluster")["score"].rank(ascending=False).astype(int)
    return table


def _hit(table: pd.DataFrame, group: str, term: str) -> pd.Series:
    rows = table[(table["group"] == group) & (table["term"] == term)]
    assert len(rows) == 1
    return rows.iloc[0]


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_offline_guard_blocks_gseapys_online_path(offline):
    # A library name instead of a dict makes gseapy ask Enrichr: the guard must stop that,
    # or the offline tests below would prove nothing.
    with pytest.raises(AssertionError, match="network access attempted"):
        gseapy.enrich(gene_list=["A", "B"], gene_sets="KEGG_2016", outdir=None, no_plot=True)


def test_prerank_finds_the_set_at_the_top_of_its_group(offline):
    table = prerank_by_group(_markers(), SETS, group_col="cluster", permutations=100, seed=0)
    assert list(table.columns) == list(PRERANK_COLUMNS)
    assert set(table["term"]) == {"up_in_A", "up_in_B", "null"}  # 'absent' has no genes
    a = _hit(table, "A", "up_in_A")
    assert a["nes"] > 1
    assert a["es"] > 0.5
    assert a["pval"] < 0.05
    assert a["fdr"] < 0.05
    assert a["n_genes"] == 15
    assert a["n_ranked"] == N_GENES
    assert set(a["lead_genes"].split(";")) <= set(UP_IN_A)
    assert len(a["lead_genes"].split(";")) >= 10
    b = _hit(table, "B", "up_in_A")
    assert b["pval"] > 0.05 or b["nes"] < 0
    assert _hit(table, "B", "up_in_B")["pval"] < 0.05
    assert _hit(table, "A", "null")["pval"] > 0.05


def test_prerank_is_deterministic():
    run = {"group_col": "cluster", "permutations": 100, "seed": 3}
    first = prerank_by_group(_markers(), SETS, **run)
    pd.testing.assert_frame_equal(first, prerank_by_group(_markers(), SETS, **run))


def test_prerank_case_insensitive_matches_upper_cased_symbols():
    upper = _markers(upper=True)
    table = prerank_by_group(
        upper, SETS, group_col="cluster", permutations=100, case_insensitive=True
    )
    hit = _hit(table, "A", "up_in_A")
    assert hit["pval"] < 0.05
    assert hit["lead_genes"].split(";")[0].isupper()  # spelled as in the dataset
    exact = prerank_by_group(upper, SETS, group_col="cluster", permutations=100)
    assert exact.empty
    assert list(exact.columns) == list(PRERANK_COLUMNS)


def test_prerank_skips_groups_without_testable_sets():
    markers = _markers()
    # Group C ranks only 8 genes: no set has 5 of its genes there.
    short = markers[markers["cluster"] == "A"].head(8).assign(cluster="C")
    table = prerank_by_group(
        pd.concat([markers, short]), SETS, group_col="cluster", permutations=100
    )
    assert set(table["group"]) == {"A", "B"}


def test_overrepresentation_finds_the_set_of_the_top_markers(offline):
    table = overrepresentation(_markers(), SETS, group_col="cluster", background=GENES, top_n=20)
    assert list(table.columns) == list(ORA_COLUMNS)
    a = _hit(table, "A", "up_in_A")
    assert a["n_overlap"] >= 12
    assert a["set_size"] == 15
    assert a["overlap"] == f"{a['n_overlap']}/15"
    assert a["pval"] < 1e-10
    assert a["fdr"] < 1e-8
    assert a["odds_ratio"] > 10
    assert set(a["genes"].split(";")) <= set(UP_IN_A)
    genes = a["genes"].split(";")
    assert genes == sorted(genes)  # a stable order (gseapy's varies between runs)
    assert table[table["group"] == "A"].iloc[0]["term"] == "up_in_A"
    in_b = table[(table["group"] == "B") & (table["term"] == "up_in_A")]
    assert in_b.empty or in_b.iloc[0]["pval"] > 0.05


def test_overrepresentation_fdr_counts_sets_without_hits():
    table = overrepresentation(_markers(), SETS, group_col="cluster", background=GENES, top_n=20)
    # Three sets have genes in the background; each group's best p is adjusted over three.
    for _, rows in table.groupby("group"):
        best = rows.iloc[0]
        assert best["fdr"] == pytest.approx(min(1.0, best["pval"] * 3))


def test_overrepresentation_case_insensitive():
    upper = _markers(upper=True)
    background = [g.upper() for g in GENES]
    table = overrepresentation(
        upper, SETS, group_col="cluster", background=background, top_n=100, case_insensitive=True
    )
    assert _hit(table, "A", "up_in_A")["pval"] < 1e-10


def test_overrepresentation_empty_overlap_gives_empty_table(offline):
    sets = {"elsewhere": GENES[250:270]}  # never among the top markers
    table = overrepresentation(_markers(), sets, group_col="cluster", background=GENES, top_n=10)
    assert table.empty
    assert list(table.columns) == list(ORA_COLUMNS)
    none_pass = overrepresentation(
        _markers(), SETS, group_col="cluster", background=GENES, top_n=100, max_padj=1e-9
    )
    assert none_pass.empty


def test_top_markers_filters_and_orders():
    top = top_markers(_markers(), group_col="cluster", top_n=5)
    assert set(top) == {"A", "B"}
    assert len(top["A"]) == 5
    assert set(top["A"]) <= set(UP_IN_A)
    markers = _markers()
    a = markers[markers["cluster"] == "A"].set_index("gene")["score"]
    assert list(a[top["A"]]) == sorted(a[top["A"]], reverse=True)


def test_gene_set_dict_from_the_library():
    library = load_library()
    sets = gene_set_dict(library, species="mouse")
    assert sets
    assert set(sets) == set(library.names(use=None, species="mouse"))
    name = next(iter(sets))
    assert sets[name] == library.genes(name, "mouse")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: prerank_by_group(m, SETS, group_col="group"), r"no column\(s\) \['group'\]"),
        (lambda m: prerank_by_group(m, {}, group_col="cluster"), "non-empty mapping"),
        (
            lambda m: prerank_by_group(m, SETS, group_col="cluster", permutations=0),
            "at least 1 permutation",
        ),
        (
            lambda m: prerank_by_group(m, SETS, group_col="cluster", min_size=10, max_size=5),
            "min_size <= max_size",
        ),
        (
            lambda m: overrepresentation(m, SETS, group_col="cluster", background=[], top_n=100),
            "background is empty",
        ),
        (
            lambda m: overrepresentation(
                m, SETS, group_col="cluster", background=["Other"], top_n=100
            ),
            "None of the marker genes",
        ),
    ],
)
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(EnrichmentError, match=match) as err:
        call(_markers())
    assert isinstance(err.value, OsteoimmuneError)


def test_rule_ranks_cell_types_and_finds_the_raised_set(tmp_path, offline):
    """The workflow's enrichment step: prerank per cell type, ORA of Leiden markers, GMT."""
    library = load_library()
    raised = library.genes("macrophage_M1_classical_core", "mouse")
    genes = list(
        dict.fromkeys(
            g
            for name in library.names(use=None, species="mouse")
            for g in library.genes(name, "mouse")
        )
    )
    genes += [f"Filler{i}" for i in range(300)]
    rng = np.random.default_rng(0)
    n = 120
    counts = rng.poisson(1.0, size=(n, len(genes))).astype(np.float32)
    macrophage = np.arange(n) < 60
    idx = [genes.index(g) for g in raised]
    counts[np.ix_(macrophage, idx)] += rng.poisson(4.0, size=(60, len(idx)))
    adata = ad.AnnData(X=sp.csr_matrix(np.log1p(counts)))
    adata.var_names, adata.obs_names = genes, [f"c{i}" for i in range(n)]
    adata.obs["cell_type"] = np.where(macrophage, "macrophage", "B cell")
    adata.obs.loc[adata.obs_names[-5:], "cell_type"] = "unassigned"
    adata.uns["osteoimmune"] = {"species": "mouse", "gene_symbol_case": "as_is"}
    adata.write_h5ad(tmp_path / "scored.h5ad")
    leiden_markers = pd.DataFrame(
        {
            "cluster": "0",
            "rank": range(1, len(raised) + 1),
            "gene": raised,
            "score": 10.0,
            "pval_adj": 1e-6,
        }
    )
    leiden_markers.to_csv(tmp_path / "markers.tsv", sep="\t", index=False)
    out = {k: tmp_path / f"{k}.tsv" for k in ("prerank", "ora", "gmt")}
    params = {
        "group_key": "cell_type",
        "min_cells": 10,
        "min_size": 5,
        "max_size": 500,
        "permutations": 200,
        "max_cells_per_group": 40,  # both types ranked on 40 of their 55-60 cells
        "top_n": 25,
        "max_padj": 0.05,
    }
    enrichment_rule(
        # one file with the matrices and the annotations serves as both
        matrices=tmp_path / "scored.h5ad",
        h5ad=tmp_path / "scored.h5ad",
        leiden_markers=tmp_path / "markers.tsv",
        params=params,
        user_sets=[],
        seed=0,
        threads=1,
        out=out,
    )
    prerank = pd.read_csv(out["prerank"], sep="\t")
    assert set(prerank["cell_type"]) == {"macrophage", "B cell"}  # never `unassigned`
    mine = prerank[prerank["cell_type"] == "macrophage"].set_index("term")
    # the raised set, or one sharing its genes (the other M1 sets), leads the ranking
    assert "macrophage_M1_classical_core" in mine.index[:3]
    hit = mine.loc["macrophage_M1_classical_core"]
    assert hit["nes"] > 0 and hit["fdr"] < 0.05
    assert (
        prerank[prerank["cell_type"] == "B cell"]
        .set_index("term")
        .loc["macrophage_M1_classical_core", "nes"]
        < 0
    )
    ora = pd.read_csv(out["ora"], sep="\t", dtype={"leiden": str}).set_index("term")
    hit = ora.loc["macrophage_M1_classical_core"]
    assert hit["leiden"] == "0" and hit["n_overlap"] == len(raised) and hit["fdr"] < 0.05
    gmt = out["gmt"].read_text().splitlines()
    assert len(gmt) == len(library.names(use=None, species="mouse"))
    assert any(line.startswith("macrophage_M1_classical_core\t") for line in gmt)
