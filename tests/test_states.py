import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from osteoimmune.errors import OsteoimmuneError
from osteoimmune.signatures import load_library
from osteoimmune.states import (
    GATE_TYPES,
    LR_SOURCE_SETS,
    SPEC_SOURCE,
    STATES,
    StateError,
    call_polarization,
    gate_mask,
    gene_table,
    lr_pairs,
    per_gene_genes,
    polarization,
    state_table,
)

M1, M2 = "macrophage_M1_classical_core", "macrophage_M2a_alternative_core"


@pytest.fixture(scope="module")
def library():
    return load_library()


def _adata(expression: dict[str, list[float]], cell_types: list[str], **obs) -> ad.AnnData:
    """CSR float32 cells x genes from per-gene values; obs cell_type (categorical) and extras."""
    matrix = np.column_stack([np.asarray(v, dtype=np.float32) for v in expression.values()])
    frame = pd.DataFrame(
        {"cell_type": pd.Categorical(cell_types), **obs},
        index=[f"c{i}" for i in range(len(cell_types))],
    )
    return ad.AnnData(
        X=sparse.csr_matrix(matrix), obs=frame, var=pd.DataFrame(index=list(expression))
    )


# --- gate and polarization states -------------------------------------------------------------


def test_gate_mask_keeps_monocytes_and_macrophages():
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(["classical monocyte", "cDC2", "macrophage", None,
                                      "non-classical monocyte", "osteoblast lineage"])}
    )  # fmt: skip
    assert gate_mask(obs).tolist() == [True, False, True, False, True, False]
    assert gate_mask(obs, cell_types=["cDC2"]).tolist() == [False, True] + [False] * 4
    assert GATE_TYPES == ("classical monocyte", "non-classical monocyte", "macrophage")
    with pytest.raises(StateError, match="no column 'cell_type'"):
        gate_mask(pd.DataFrame({"leiden": ["0"]}))


def test_macrophage_states_are_in_the_macrophage_gate():
    # The M1/M2 gate names "macrophage" (config); its states (lipid-associated, osteoclast-like
    # or erythroblastic-island macrophages) are macrophages and are gated with it.
    types = [
        "lipid-associated macrophage",
        "erythroblastic-island macrophage",
        "osteal macrophage",
        "osteoclast",
        "mregDC",
        "CD8 T",
    ]
    obs = pd.DataFrame({"cell_type": pd.Categorical(types)})
    assert gate_mask(obs).tolist() == [True, True, True, False, False, False]
    assert gate_mask(obs, cell_types=["classical monocyte"]).tolist() == [False] * 6


def _calibrated():
    cells = [f"c{i}" for i in range(7)]
    z = pd.DataFrame(
        {M1: [3.0, -1.0, 2.5, 0.1, 4.0, 2.0, 0.0], M2: [0.5, 2.0, 3.0, 0.2, 0.0, 1.0, np.inf]},
        index=cells,
    )
    p = pd.DataFrame(
        {
            M1: [0.01, 0.60, 0.02, 0.40, 0.01, 0.05, 0.50],
            M2: [0.30, 0.01, 0.03, 0.70, np.nan, 0.20, 0.01],
        },
        index=cells,
    )
    gate = np.array([True, True, True, True, True, True, False])
    return z, p, gate


def test_polarization_states_by_hand():
    z, p, gate = _calibrated()
    got = polarization(z, p, gate=gate, m1=M1, m2=M2)
    assert list(got.columns) == ["polarization_index", "polarization_state"]
    assert got.index.equals(z.index)
    state = got["polarization_state"]
    assert isinstance(state.dtype, pd.CategoricalDtype)
    assert list(state.cat.categories) == ["M1-like", "M2-like", "mixed", "unpolarized"]
    # c4: M2 p is NaN -> no call; c5: p == alpha is not significant; c6: outside the gate.
    expected = ["M1-like", "M2-like", "mixed", "unpolarized", None, "unpolarized", None]
    assert [None if pd.isna(s) else s for s in state] == expected
    np.testing.assert_allclose(
        got["polarization_index"].to_numpy(), [2.5, -3.0, -0.5, -0.1, 4.0, 1.0, np.nan]
    )


def _calibrated_adata(cell_types: list[str]) -> ad.AnnData:
    """The cells of :func:`_calibrated` as calibrated_scores leaves them: obs z_<set>, obsm p."""
    z, p, _ = _calibrated()
    adata = ad.AnnData(obs=pd.DataFrame({"cell_type": pd.Categorical(cell_types)}, index=z.index))
    for name in z:
        adata.obs[f"z_{name}"] = z[name]
    adata.obsm["signature_p"] = p
    return adata


def test_call_polarization_gates_annotated_types_and_records_the_call():
    types = ["classical monocyte", "macrophage", "non-classical monocyte", "cDC2"]
    adata = _calibrated_adata([*types, "osteal macrophage", "macrophage", "CD8 T"])
    record = call_polarization(adata, scored=[M1, M2], m1=["not_scored", M1], m2=M2, alpha=0.05)
    assert record == {
        "m1": M1,
        "m2": M2,
        "gated_cells": 5,
        "gate": "annotated classical monocyte, non-classical monocyte, macrophage",
    }
    assert adata.uns["osteoimmune"]["polarization"] == record
    z, p, _ = _calibrated()
    gate = np.array([True, True, True, False, True, True, False])
    expected = polarization(z, p, gate=gate, m1=M1, m2=M2)
    pd.testing.assert_frame_equal(adata.obs[list(expected.columns)], expected)


def test_call_polarization_by_design_gates_every_cell():
    adata = _calibrated_adata(["cDC2"] * 7)
    record = call_polarization(
        adata, scored=[M1, M2], m1=M1, m2=M2, alpha=0.05, by_design="sorted macrophages"
    )
    assert record["gated_cells"] == 7
    assert record["gate"] == "all cells, by design: sorted macrophages"
    assert adata.obs["polarization_state"].iloc[-1] == "M2-like"  # outside the annotated gate


def test_call_polarization_without_a_scored_set_calls_nothing():
    adata = _calibrated_adata(["macrophage"] * 7)
    assert call_polarization(adata, scored=[M1], m1=M1, m2=M2, alpha=0.05) is None
    assert "polarization_state" not in adata.obs and "osteoimmune" not in adata.uns


def test_per_gene_genes_are_the_rankl_opg_axis_and_cytokines(library):
    genes = per_gene_genes(library, species="mouse")
    assert genes == sorted(genes) and len(genes) == len(set(genes))
    assert {"Tnfsf11", "Tnfrsf11b", "Tnfrsf11a", "Il1b", "Tnf", "Il10"} <= set(genes)


def test_polarization_alpha_changes_calls():
    z, p, gate = _calibrated()
    got = polarization(z, p, gate=gate, m1=M1, m2=M2, alpha=0.5)
    assert got["polarization_state"].iloc[3] == "M1-like"  # p 0.40 < 0.5, p 0.70 not
    assert got["polarization_state"].iloc[5] == "mixed"  # p 0.05 and 0.20 both < 0.5


def test_polarization_missing_set_is_a_clear_error():
    z, p, gate = _calibrated()
    with pytest.raises(StateError, match=r"no set 'M2_missing'.*coverage") as err:
        polarization(z, p, gate=gate, m1=M1, m2="M2_missing")
    assert isinstance(err.value, OsteoimmuneError)
    with pytest.raises(StateError, match="p-values have no set"):
        polarization(z, p.drop(columns=M1), gate=gate, m1=M1, m2=M2)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"gate": np.ones(3, dtype=bool)}, "one value per cell"),
        ({"gate": np.ones(7)}, "boolean"),
        ({"alpha": 0.0}, "alpha"),
    ],
)
def test_polarization_bad_input(change, match):
    z, p, gate = _calibrated()
    kwargs = {"gate": gate, "m1": M1, "m2": M2, **change}
    with pytest.raises(StateError, match=match):
        polarization(z, p, **kwargs)


def test_polarization_needs_aligned_cells():
    z, p, gate = _calibrated()
    with pytest.raises(StateError, match="same cells"):
        polarization(z, p.iloc[::-1], gate=gate, m1=M1, m2=M2)


def test_state_table_by_hand():
    z, p, gate = _calibrated()
    obs = polarization(z, p, gate=gate, m1=M1, m2=M2)
    obs["sample"] = ["s2", "s2", "s1", "s1", "s1", "s3", "s3"]
    table = state_table(obs)
    assert list(table.columns) == [
        "sample", "state", "n_cells", "n_gated", "fraction", "mean_polarization_index",
    ]  # fmt: skip
    assert table["sample"].tolist() == ["s1"] * 4 + ["s2"] * 4 + ["s3"] * 4
    assert table["state"].astype(str).tolist() == list(STATES) * 3
    # s1: c2 mixed, c3 unpolarized (c4 gated but without a call); s2: M1 + M2; s3: c5 only.
    assert table["n_cells"].tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    assert table["n_gated"].tolist() == [2] * 4 + [2] * 4 + [1] * 4
    np.testing.assert_allclose(table["fraction"], [0, 0, 0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0, 0, 1.0])
    means = table.groupby("sample")["mean_polarization_index"].first()
    np.testing.assert_allclose(means.to_numpy(), [(-0.5 - 0.1) / 2, (2.5 - 3.0) / 2, 1.0])


def test_state_table_group_without_gated_cells():
    z, p, gate = _calibrated()
    obs = polarization(z, p, gate=gate, m1=M1, m2=M2)
    obs["sample"] = ["a"] * 6 + ["b"]  # b holds only the ungated cell
    table = state_table(obs)
    b = table[table["sample"] == "b"]
    assert b["n_cells"].tolist() == [0, 0, 0, 0]
    assert b["n_gated"].tolist() == [0] * 4
    assert b["fraction"].isna().all() and b["mean_polarization_index"].isna().all()


def test_state_table_errors():
    with pytest.raises(StateError, match="'polarization_state'"):
        state_table(pd.DataFrame({"sample": ["a"], "polarization_index": [1.0]}))
    bad = pd.DataFrame({"sample": ["a"], "polarization_index": [1.0], "polarization_state": ["M3"]})
    with pytest.raises(StateError, match="Unknown polarization states"):
        state_table(bad)


# --- per-gene tables --------------------------------------------------------------------------


def _gene_adata() -> ad.AnnData:
    types = ["macrophage"] * 4 + ["osteoblast lineage"] * 3 + ["cDC2"] * 1 + ["unassigned"] * 3
    return _adata(
        {
            "TNFSF11": [0, 0, 0, 0, 2, 1, 0, 5, 9, 9, 9],
            "TNFRSF11B": [1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0],
        },
        types,
    )


def test_gene_table_values_by_hand():
    table = gene_table(_gene_adata(), ["TNFRSF11B", "TNFSF11", "TNFRSF11B"], min_cells=3)
    assert list(table.columns) == ["cell_type", "gene", "n_cells", "mean", "fraction", "present"]
    # cDC2 (1 cell) is under min_cells; unassigned is excluded; genes in the order given, once.
    assert table["cell_type"].tolist() == ["macrophage", "osteoblast lineage"] * 2
    assert table["gene"].tolist() == ["TNFRSF11B"] * 2 + ["TNFSF11"] * 2
    assert table["n_cells"].tolist() == [4, 3, 4, 3]
    np.testing.assert_allclose(table["mean"], [1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(table["fraction"], [0.5, 0.0, 0.0, 2 / 3])
    assert table["present"].all()


def test_gene_table_absent_genes_and_group_options():
    adata = _gene_adata()
    table = gene_table(adata, ["TNFSF11", "LGR4"], min_cells=1, exclude=())
    absent = table[table["gene"] == "LGR4"]
    assert len(absent) == 4 and not absent["present"].any()
    assert absent["mean"].isna().all() and absent["fraction"].isna().all()
    # Groups in the order of the categories (here alphabetical), not of first appearance.
    groups = ["cDC2", "macrophage", "osteoblast lineage", "unassigned"]
    assert absent["cell_type"].tolist() == groups
    assert absent["n_cells"].tolist() == [1, 4, 3, 3]
    unassigned = table[(table["gene"] == "TNFSF11") & (table["cell_type"] == "unassigned")]
    assert unassigned["mean"].item() == pytest.approx(9.0)
    none_kept = gene_table(adata, ["TNFSF11"], min_cells=5, exclude=())
    assert none_kept.empty and list(none_kept.columns)[0] == "cell_type"


def test_gene_table_errors():
    with pytest.raises(StateError, match="no column 'sample'"):
        gene_table(_gene_adata(), ["TNFSF11"], groupby="sample")
    with pytest.raises(StateError, match="min_cells"):
        gene_table(_gene_adata(), ["TNFSF11"], min_cells=0)


def test_gene_table_case_insensitive_for_upper_cased_mouse_symbols(library):
    adata = _adata({"TNFSF11": [1, 1, 0], "IL6RA": [2, 0, 0]}, ["macrophage"] * 3)
    genes = ["Tnfsf11", "Il6ra"]
    exact = gene_table(adata, genes, min_cells=1)
    assert not exact["present"].any()
    folded = gene_table(adata, genes, min_cells=1, case_insensitive=True)
    assert folded["present"].all()
    assert folded["gene"].tolist() == genes  # reported as asked, not as stored
    np.testing.assert_allclose(folded["mean"], [2 / 3, 2 / 3])
    np.testing.assert_allclose(folded["fraction"], [2 / 3, 1 / 3])
    axis = library.genes("osteoimmune_RANKL_OPG_axis", "mouse")
    assert gene_table(adata, axis, min_cells=1, case_insensitive=True)["present"].sum() == 1


def test_gene_table_dense_matrix_gives_the_same_values():
    adata = _gene_adata()
    dense = adata.copy()
    dense.X = adata.X.toarray()
    genes = ["TNFSF11", "TNFRSF11B"]
    pd.testing.assert_frame_equal(gene_table(dense, genes), gene_table(adata, genes, min_cells=10))
    pd.testing.assert_frame_equal(
        gene_table(dense, genes, min_cells=1), gene_table(adata, genes, min_cells=1)
    )


def test_sparse_matrix_is_never_densified(monkeypatch):
    n_cells, n_genes = 400, 30_000
    rng = np.random.default_rng(0)
    matrix = sparse.random(
        n_cells, n_genes, density=0.001, format="csr", dtype=np.float32, random_state=rng
    )
    names = [f"G{i}" for i in range(n_genes)]
    names[:3] = ["TNFSF11", "TNFRSF11A", "CSF1R"]
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(["macrophage", "osteoblast lineage"] * (n_cells // 2))},
        index=[f"c{i}" for i in range(n_cells)],
    )
    adata = ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=names))

    def guard(original):
        def call(self, *args, **kwargs):
            if self.shape[1] == n_genes:
                raise AssertionError("the cells x genes matrix was densified")
            return original(self, *args, **kwargs)

        return call

    for cls in (sparse.csr_matrix, sparse.csc_matrix, sparse.coo_matrix):
        for name in ("toarray", "todense"):
            monkeypatch.setattr(cls, name, guard(getattr(cls, name)))
    table = gene_table(adata, ["TNFSF11", "CSF1R"])
    assert adata.X is matrix and sparse.isspmatrix_csr(adata.X)
    col = matrix[:, [0]].tocoo()
    macrophage = col.data[col.row % 2 == 0].sum() / (n_cells // 2)
    assert table["mean"].iloc[0] == pytest.approx(macrophage)


# --- ligand-receptor panel --------------------------------------------------------------------


def test_lr_pairs_sources_follow_library_membership(library):
    for species in ("human", "mouse"):
        pairs = lr_pairs(species=species, library=library)
        members = {n: set(library.genes(n, species)) for n in LR_SOURCE_SETS}
        for row in pairs.itertuples():
            cited = [n for n in LR_SOURCE_SETS if n in row.source]
            for name in cited:  # every set named holds one of the pair's genes
                assert members[name] & {row.ligand, row.receptor}
            if not cited:
                assert row.source == SPEC_SOURCE and row.citation == ""
    human = lr_pairs(species="human", library=library).set_index(["ligand", "receptor"])
    rank = human.loc[("TNFSF11", "TNFRSF11A")]
    assert rank["source"] == "osteoimmune_RANKL_OPG_axis (TNFSF11, TNFRSF11A)"
    assert rank["citation"] == library.citation("osteoimmune_RANKL_OPG_axis")
    assert human.loc[("CXCL12", "CXCR4"), "source"] == SPEC_SOURCE
    il1 = human.loc[("IL1B", "IL1R1"), "source"]
    assert il1.startswith("osteoclastogenic_inflammatory_cytokines (IL1B)")
    assert il1.endswith(f"IL1R1: {SPEC_SOURCE}")
    assert "osteoimmune_coupling_semaphorin_ephrin" in human.loc[("EFNB2", "EPHB4"), "source"]


def test_lr_pairs_unknown_species():
    with pytest.raises(StateError, match="Unknown species 'rat'"):
        lr_pairs(species="rat")


def test_first_scored_takes_the_first_available_set():
    from osteoimmune.states import first_scored

    assert first_scored(["a", "b"], {"b", "c"}) == "b"
    assert first_scored("c", {"b", "c"}) == "c"
    assert first_scored(["x"], {"b"}) is None
