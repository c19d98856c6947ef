import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse
from sklearn.metrics import roc_auc_score

from osteoimmune.errors import InputError, SignatureError
from osteoimmune.scoring import (
    add_user_sets,
    calibrated_scores,
    coverage_table,
    default_score_sets,
    gene_coverage,
    score_signatures,
    scores_by_group,
)
from osteoimmune.signatures import SignatureLibrary, load_library

M1 = "macrophage_M1_classical_core"
M2A = "macrophage_M2a_alternative_core"
N_CELLS, N_GENES, N_BOOSTED = 200, 300, 60


@pytest.fixture(scope="module")
def library() -> SignatureLibrary:
    return load_library()


def _make_adata(library: SignatureLibrary, *, seed: int = 1, n_genes: int = N_GENES) -> ad.AnnData:
    """Poisson counts over real mouse symbols (all M1 genes, half of M2a) plus filler genes."""
    m1 = library.genes(M1, "mouse")
    m2a = library.genes(M2A, "mouse")[: len(library.genes(M2A, "mouse")) // 2 + 1]
    named = list(dict.fromkeys(m1 + m2a))
    genes = named + [f"Gene{i:03d}" for i in range(n_genes - len(named))]
    rng = np.random.default_rng(seed)
    lam = rng.uniform(0.2, 3.0, size=len(genes))
    counts = rng.poisson(lam, size=(N_CELLS, len(genes))).astype(np.float32)
    m1_idx = [genes.index(g) for g in m1]
    counts[:N_BOOSTED, m1_idx] += rng.poisson(6.0, size=(N_BOOSTED, len(m1_idx)))
    group = np.where(np.arange(N_CELLS) < N_BOOSTED, "boosted", "rest")
    adata = ad.AnnData(
        X=sparse.csr_matrix(counts),
        obs=pd.DataFrame({"group": pd.Categorical(group)}, index=[f"c{i}" for i in range(N_CELLS)]),
        var=pd.DataFrame(index=genes),
    )
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def _hand_library() -> SignatureLibrary:
    library = SignatureLibrary(sets={}, references={})
    library.add_sets(
        {
            "full": {"description": "all present", "genes": {"human": ["A", "B", "C", "D"]}},
            "half": {"description": "half present", "genes": {"human": ["A", "B", "X1", "X2"]}},
            "low": {"description": "1 of 5", "genes": {"human": ["C", "Y1", "Y2", "Y3", "Y4"]}},
        }
    )
    return library


def _hand_adata() -> ad.AnnData:
    rng = np.random.default_rng(0)
    genes = ["A", "B", "C", "D"] + [f"G{i}" for i in range(36)]
    x = rng.poisson(2.0, size=(30, len(genes))).astype(np.float32)
    x[:, genes.index("D")] = 0  # present but never expressed
    return ad.AnnData(X=sparse.csr_matrix(x), var=pd.DataFrame(index=genes))


def test_boosted_cells_score_higher(library):
    adata = _make_adata(library)
    table = score_signatures(adata, library, species="mouse", sets=[M1], seed=0)
    assert table.at[M1, "scored"]
    score = adata.obs[f"score_{M1}"].to_numpy()
    boosted = adata.obs["group"].to_numpy() == "boosted"
    assert score[boosted].mean() - score[~boosted].mean() > 0.5
    assert roc_auc_score(boosted, score) > 0.9


def test_coverage_table_counts():
    table = coverage_table(
        _hand_adata(), _hand_library(), species="human", sets=["full", "half", "low"]
    )
    assert list(table.index) == ["full", "half", "low"]
    assert table.loc["full", ["n_genes", "n_present", "n_expressed"]].tolist() == [4, 4, 3]
    assert table.loc["half", ["n_genes", "n_present", "n_expressed"]].tolist() == [4, 2, 2]
    assert table.loc["low", ["n_genes", "n_present", "n_expressed"]].tolist() == [5, 1, 1]
    assert table.at["full", "fraction_expressed"] == pytest.approx(0.75)
    assert table.at["half", "fraction_present"] == pytest.approx(0.5)
    assert table.at["half", "missing"] == "X1,X2"
    assert table.at["full", "missing"] == ""
    # half: 2 genes expressed, below the default minimum of 3 expressed genes
    assert table["scored"].tolist() == [True, False, False]
    assert table.at["half", "reason"] == (
        "2 of the 2 present genes expressed in any cell, below the minimum of 3 "
        "(signatures.min_expressed_genes)"
    )
    assert table.at["low", "reason"] == "20% of genes present (1/5), below the 50% threshold"
    assert table["aliases_used"].tolist() == ["", "", ""]
    lower = coverage_table(
        _hand_adata(), _hand_library(), species="human", sets=["half"], min_expressed_genes=2
    )
    assert lower.at["half", "scored"] and lower.at["half", "reason"] == ""


def test_expressed_counts_ignore_explicit_zeros():
    adata = _hand_adata()
    x = adata.X.toarray()
    x[0, 3] = 1.0
    x = sparse.csr_matrix(x)
    x.data[x.indices == 3] = 0.0  # gene D: one stored entry, but zero
    assert x.getnnz(axis=0)[3] == 1
    adata.X = x
    table = coverage_table(adata, _hand_library(), species="human", sets=["full"])
    assert table.at["full", "n_expressed"] == 3


def test_set_below_threshold_is_not_scored(tmp_path):
    adata = _hand_adata()
    adata.obs["score_low"] = 1.0  # stale column from an earlier run
    table = score_signatures(
        adata,
        _hand_library(),
        species="human",
        sets=["full", "half", "low"],
        min_expressed_genes=2,
    )
    assert "score_full" in adata.obs and "score_half" in adata.obs
    assert "score_low" not in adata.obs
    assert not table.at["low", "scored"]
    assert "below the 50% threshold" in table.at["low", "reason"]
    uns = adata.uns["signature_coverage"]
    assert uns["set"] == ["full", "half", "low"] and uns["scored"] == [True, True, False]
    adata.write_h5ad(tmp_path / "scored.h5ad")
    back = ad.read_h5ad(tmp_path / "scored.h5ad").uns["signature_coverage"]
    assert list(back["reason"]) == table["reason"].tolist()
    assert list(back["n_present"]) == [4, 2, 1]


def test_case_insensitive_matching(library):
    adata = _make_adata(library)
    adata.var_names = [g.upper() for g in adata.var_names]
    present, missing = gene_coverage(adata, library.genes(M1, "mouse"))
    assert present == [] and len(missing) == len(library.genes(M1, "mouse"))
    present, missing = gene_coverage(adata, library.genes(M1, "mouse"), case_insensitive=True)
    assert present == [g.upper() for g in library.genes(M1, "mouse")] and missing == []
    table = score_signatures(adata, library, species="mouse", sets=[M1], case_insensitive=True)
    assert table.at[M1, "n_present"] == len(library.genes(M1, "mouse"))
    assert f"score_{M1}" in adata.obs


def test_same_seed_same_scores(library):
    # Enough genes that scanpy samples control genes from each bin, so the seed matters.
    first, second, other = (_make_adata(library, n_genes=2000) for _ in range(3))
    score_signatures(first, library, species="mouse", seed=7)
    score_signatures(second, library, species="mouse", seed=7)
    score_signatures(other, library, species="mouse", seed=8)
    columns = [c for c in first.obs if c.startswith("score_")]
    assert columns
    pd.testing.assert_frame_equal(first.obs[columns], second.obs[columns])
    assert not np.allclose(first.obs[f"score_{M1}"], other.obs[f"score_{M1}"])


def test_default_sets_are_every_score_set(library):
    names = default_score_sets(library, "mouse")
    assert M1 in names and M2A in names and "trained_immunity_core6_zhang2022" in names
    for program in (
        "osteoclast_differentiation_core",
        "osteoblast_lineage_core",
        "bm_stromal_LEPR_CAR_niche",
        "neutrophil_NET_machinery",
        "NK_cytotoxicity",
        "DC_maturation_mregDC",
        "complement_anaphylatoxin_and_C3_receptors",
    ):
        assert program in names
    assert all(library.sets[n]["use"] == "score" for n in names)
    assert "complement_components_and_regulators" not in names  # per_gene
    assert "trained_immunity_central_HSPC_axis" not in names  # reference_only


def test_calibrated_scores_add_z_p_and_a_second_method(library):
    adata = _make_adata(library)
    table = score_signatures(adata, library, species="mouse", seed=3)
    agreement = calibrated_scores(
        adata, library, species="mouse", coverage=table, seed=3, n_null=100
    )
    scored = list(table.index[table["scored"]])
    assert scored and list(agreement.index) == scored
    for name in scored:
        assert f"z_{name}" in adata.obs
    assert list(adata.obsm["signature_p"].columns) == scored
    p = adata.obsm["signature_p"].to_numpy()
    assert ((p > 0) & (p <= 1)).all()
    # the boosted M1 genes: calibrated z high where the score is high, and the methods agree
    top = adata.obs[f"score_{M1}"].rank(ascending=False) <= 10
    assert adata.obs.loc[top, f"z_{M1}"].mean() > 2
    assert agreement.loc[M1, "spearman"] > 0.5


def test_default_sets_on_tiny_dataset(library):
    adata = _make_adata(library, n_genes=40)
    table = score_signatures(adata, library, species="mouse")
    assert list(table.index) == default_score_sets(library, "mouse")
    assert table.at[M1, "scored"] and f"score_{M1}" in adata.obs
    assert np.isfinite(adata.obs[f"score_{M1}"]).all()
    assert not table["scored"].all()


def test_unknown_set_name_lists_close_matches(library):
    with pytest.raises(SignatureError, match=f"did you mean {M1}"):
        score_signatures(
            _make_adata(library), library, species="mouse", sets=["macrophage_M1_clasical_core"]
        )


def test_reference_only_set_is_refused(library):
    with pytest.raises(SignatureError, match="reference_only"):
        coverage_table(
            _make_adata(library),
            library,
            species="mouse",
            sets=["trained_immunity_central_HSPC_axis"],
        )


def test_a_set_without_control_genes_is_named():
    """A set holding every gene of the panel has no controls: the error names it."""
    x = np.random.default_rng(0).poisson(2.0, size=(30, 4)).astype(np.float32)
    panel = ad.AnnData(X=sparse.csr_matrix(x), var=pd.DataFrame(index=["A", "B", "C", "D"]))
    with pytest.raises(SignatureError, match="'full'.*No control genes"):
        score_signatures(panel, _hand_library(), species="human", sets=["full"])


def test_scores_by_group_means(library):
    adata = _make_adata(library)
    score_signatures(adata, library, species="mouse", sets=[M1, M2A])
    table = scores_by_group(adata, groupby="group")
    assert list(table.columns) == ["n_cells", M1, M2A]
    assert table.loc["boosted", "n_cells"] == N_BOOSTED
    assert table.loc["rest", "n_cells"] == N_CELLS - N_BOOSTED
    boosted = adata.obs["group"] == "boosted"
    expected = adata.obs.loc[boosted, f"score_{M1}"].mean()
    assert table.loc["boosted", M1] == pytest.approx(expected)
    with pytest.raises(InputError, match="'cluster' is not in obs"):
        scores_by_group(adata, groupby="cluster")


def test_user_sets_from_gmt_and_yaml_files_are_added(tmp_path):
    library = load_library()
    (tmp_path / "mine.gmt").write_text("MY_M1\tmy note\tNos2\tIl1b\tTnf\n")
    (tmp_path / "mine.yaml").write_text(
        "sets:\n  my_human_set:\n    description: human only\n    genes: {human: [CD14]}\n"
    )
    added = add_user_sets(
        library,
        [
            {"path": str(tmp_path / "mine.gmt"), "species": "mouse"},
            {"path": str(tmp_path / "mine.yaml")},
        ],
        species="mouse",
    )
    assert added == ["MY_M1"]  # the human-only YAML set has no mouse genes
    assert library.genes("MY_M1", "mouse") == ["Nos2", "Il1b", "Tnf"]
    assert "my_human_set" in library.sets


def test_set_with_one_expressed_gene_is_not_scored():
    adata = _hand_adata()
    adata.obs["score_one"] = 1.0  # stale column from an earlier run
    library = _hand_library()
    library.add_sets({"one": {"description": "1 expressed", "genes": {"human": ["A", "D"]}}})
    table = score_signatures(adata, library, species="human", sets=["full", "one"])
    assert table.at["one", "n_present"] == 2 and table.at["one", "n_expressed"] == 1
    assert not table.at["one", "scored"]
    assert "below the minimum of 3" in table.at["one", "reason"]
    assert "score_one" not in adata.obs
    calibrated_scores(adata, library, species="human", coverage=table, n_null=100, n_bins=4)
    assert "z_one" not in adata.obs
    assert np.isfinite(adata.obs["z_full"]).all()


def test_min_expressed_genes_must_be_positive():
    with pytest.raises(SignatureError, match="min_expressed_genes must be at least 1"):
        coverage_table(
            _hand_adata(), _hand_library(), species="human", sets=["full"], min_expressed_genes=0
        )


OLD_HUMAN = {"CXCL8": "IL8", "WARS1": "WARS", "ATP5F1E": "ATP5E"}
OLD_MOUSE = {"Spi1": "Sfpi1", "Wars1": "Wars", "Atp5f1e": "Atp5e"}


def _old_symbol_adata(old: dict[str, str], *, n_filler: int = 200) -> ad.AnnData:
    """Counts whose var_names use previous symbols; the renamed genes are up in 20 cells."""
    rng = np.random.default_rng(2)
    genes = list(old.values()) + ["CD14", "LYZ", "S100A8"] + [f"F{i:03d}" for i in range(n_filler)]
    counts = rng.poisson(rng.uniform(0.2, 6.0, len(genes)), size=(60, len(genes)))
    counts = counts.astype(np.float32)
    counts[:20, : len(old)] += rng.poisson(4.0, size=(20, len(old)))
    adata = ad.AnnData(X=sparse.csr_matrix(counts), var=pd.DataFrame(index=genes))
    sc.pp.log1p(adata)
    return adata


@pytest.mark.parametrize(
    ("species", "old", "extra"),
    [("human", OLD_HUMAN, ["CD14", "LYZ"]), ("mouse", OLD_MOUSE, ["Cd14", "Lyz2"])],
)
def test_previous_symbols_are_matched(species, old, extra):
    adata = _old_symbol_adata(old)
    if species == "mouse":
        adata.var_names = [*old.values(), "Cd14", "Lyz2", "S100a8", *adata.var_names[6:]]
    library = SignatureLibrary(sets={}, references={})
    library.add_sets({"renamed": {"description": "new symbols", "genes": {species: list(old)}}})
    table = score_signatures(adata, library, species=species, sets=["renamed"])
    assert table.at["renamed", "n_present"] == 3 and table.at["renamed", "scored"]
    assert table.at["renamed", "aliases_used"] == "; ".join(f"{n}<-{o}" for n, o in old.items())
    assert table.at["renamed", "missing"] == ""
    score = adata.obs["score_renamed"].to_numpy()
    assert roc_auc_score(np.arange(60) < 20, score) > 0.95  # scored with the renamed genes
    agreement = calibrated_scores(adata, library, species=species, coverage=table, n_null=100)
    z = adata.obs["z_renamed"].to_numpy()
    assert np.isfinite(z).all() and roc_auc_score(np.arange(60) < 20, z) > 0.95
    assert agreement.at["renamed", "spearman"] > 0.5
    present, _ = gene_coverage(adata, list(old) + extra, species=species)
    assert present == [*old.values(), *extra]
    # Without species only exact symbols match.
    assert gene_coverage(adata, list(old), species=None) == ([], list(old))


def test_upper_cased_mouse_previous_symbols():
    adata = _old_symbol_adata({k: v.upper() for k, v in OLD_MOUSE.items()})
    present, missing = gene_coverage(adata, list(OLD_MOUSE), species="mouse", case_insensitive=True)
    assert present == ["SFPI1", "WARS", "ATP5E"] and missing == []


def test_exact_symbol_wins_over_alias():
    adata = _old_symbol_adata(OLD_HUMAN)
    adata.var_names = ["IL8", "CXCL8", *adata.var_names[2:]]
    library = SignatureLibrary(sets={}, references={})
    library.add_sets({"s": {"description": "d", "genes": {"human": ["CXCL8", "CD14", "LYZ"]}}})
    table = coverage_table(adata, library, species="human", sets=["s"])
    assert table.at["s", "aliases_used"] == ""
    assert gene_coverage(adata, ["CXCL8"], species="human")[0] == ["CXCL8"]


def test_one_pass_scores_equal_scanpy_score_genes(library):
    """All sets scored in one pass give sc.tl.score_genes's scores, set by set."""
    sets = default_score_sets(library, "mouse")
    adata, upstream = _make_adata(library), _make_adata(library)
    table = score_signatures(adata, library, species="mouse", sets=sets, seed=0)
    score_signatures(upstream, library, species="mouse", sets=sets, seed=0, implementation="scanpy")
    scored = [f"score_{name}" for name in table.index[table["scored"].astype(bool)]]
    assert len(scored) >= 2
    np.testing.assert_allclose(adata.obs[scored], upstream.obs[scored], atol=1e-5)
