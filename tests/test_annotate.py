"""Marker-panel annotation: panels, coverage, scores, lineage and type calls, agreement."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from conftest import REPO
from scipy import sparse
from scipy.stats import rankdata

from osteoimmune.agreement import (
    agreement_table,
    agreement_tables,
    check_label_map,
    composition_table,
    confusion_table,
    map_author_labels,
    protein_check,
)
from osteoimmune.annotate import (
    UNCOMMITTED,
    annotate_cells,
    background_scores,
    marker_evidence,
    score_panels,
    t_subtype_evidence,
    tissue_flags,
)
from osteoimmune.errors import InputError, SignatureError
from osteoimmune.panels import (
    BONE_TYPES,
    CELL_TYPES,
    FAMILIES,
    LINEAGES,
    PANEL_SPECS,
    REFERENCES,
    SUPPLEMENT,
    SUPPLEMENT_SOURCES,
    build_panels,
    lineage_specific,
    panel_coverage,
    supplement_source,
)
from osteoimmune.registry import load_registry
from osteoimmune.signatures import load_library

GROUPS = {
    "T": ["CD3D", "CD3E", "CD3G", "CD2", "TRAC", "TRBC1", "CD247", "LCK", "IL7R", "CD28"],
    "mono": ["CD14", "LYZ", "S100A8", "S100A9", "VCAN", "FCN1", "CTSS", "MNDA"],
    "ery": ["HBB", "HBA1", "HBA2", "GYPA", "ALAS2", "SLC4A1", "AHSP"],
    "B": ["MS4A1", "BANK1", "CD22", "FCRLA", "TCL1A", "CR2", "CD79A"],
    "none": [f"FILLER{i:03d}" for i in range(8)],
}
EXPECTED = {
    "T": ("lymphoid", "T cell"),
    "mono": ("myeloid", "classical monocyte"),
    "ery": ("erythroid", "erythrocyte"),
    "B": ("lymphoid", "mature B"),
    "none": ("unassigned", "unassigned"),
}


@pytest.fixture(scope="module")
def library():
    return load_library()


@pytest.fixture(scope="module")
def human(library):
    return build_panels(library, "human")


def make_adata(groups=GROUPS, *, n_cells=60, n_filler=150, seed=0, background=0.3):
    """Poisson counts: each group of cells expresses its genes highly; log-normalised X."""
    genes = list(dict.fromkeys(g for genes in groups.values() for g in genes))
    genes += [f"GENE{i:03d}" for i in range(n_filler)]
    rng = np.random.default_rng(seed)
    blocks = []
    for markers in groups.values():
        rates = np.full(len(genes), background)
        rates[[genes.index(g) for g in markers]] = 6.0
        blocks.append(rng.poisson(rates, size=(n_cells, len(genes))))
    counts = sparse.csr_matrix(np.vstack(blocks).astype(np.float32))
    adata = ad.AnnData(X=counts.copy(), layers={"counts": counts})
    adata.var_names = genes
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    adata.obs["group"] = np.repeat(list(groups), n_cells)
    adata.obs["leiden"] = pd.Categorical(np.repeat([str(i) for i in range(len(groups))], n_cells))
    adata.obs["sample"] = np.tile(["s1", "s2"], adata.n_obs // 2)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=10, random_state=0)
    sc.pp.neighbors(adata, n_neighbors=10, random_state=0)
    return adata


@pytest.fixture(scope="module")
def annotated(human):
    adata = make_adata()
    coverage, clusters = annotate_cells(adata, human)
    return adata, coverage, clusters


def test_groups_get_their_lineage_and_type(annotated):
    adata, _, _ = annotated
    calls = adata.obs.groupby("group", observed=True)[["cell_lineage", "cell_type"]].agg(
        lambda v: v.astype(str).value_counts().idxmax()
    )
    for group, (lineage, cell_type) in EXPECTED.items():
        assert tuple(calls.loc[group]) == (lineage, cell_type), group
    agree = adata.obs["cell_lineage"].astype(str) == adata.obs["group"].map(
        {g: e[0] for g, e in EXPECTED.items()}
    )
    assert agree.mean() > 0.95


def test_outputs_are_stored_with_margins_and_scores(annotated):
    adata, coverage, clusters = annotated
    assert set(adata.obs["cell_lineage"].cat.categories) == {*LINEAGES, "unassigned"}
    assert isinstance(adata.obsm["panel_scores"], pd.DataFrame)
    assert list(adata.obsm["panel_scores"].columns) == list(coverage.index[coverage["used"]])
    margin = adata.obs["annotation_margin"]
    assigned = adata.obs["cell_lineage"] != "unassigned"
    assert margin[assigned].notna().all() and margin[~assigned].isna().all()
    assert (margin[assigned] > 0).mean() > 0.95
    assert clusters.loc["4", "cell_lineage"] == "unassigned"
    assert adata.uns["annotation"]["params"]["min_margin"] == 0.1
    assert sparse.issparse(adata.X)


def test_annotated_anndata_writes_to_h5ad(annotated, tmp_path):
    adata, _, _ = annotated
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert back.obs["cell_type"].tolist() == adata.obs["cell_type"].tolist()


def test_subtypes_refine_t_cells_only_when_their_genes_are_there(human):
    groups = {
        "CD4": [*GROUPS["T"], "CD4", "CD40LG", "ZBTB7B"],
        "CD8": [*GROUPS["T"], "CD8A", "CD8B"],
        "mono": GROUPS["mono"],
    }
    # Background rate 0.1: CD4 / CD40LG are detected in ~18% of the CD8 T cells, as in real
    # data (at 0.3 they are in 55%, and the subtype rule rightly keeps "T cell").
    adata = make_adata(groups, background=0.1)
    annotate_cells(adata, human)
    calls = adata.obs.groupby("group", observed=True)["cell_type"].agg(
        lambda v: v.astype(str).value_counts().idxmax()
    )
    assert calls["CD4"] == "CD4 T" and calls["CD8"] == "CD8 T"


def t_cells_with_proteins(*, seed=0):
    """T cells whose RNA holds no CD4 / CD8 gene; CD4 and CD8 protein split them in halves."""
    adata = make_adata({"T": GROUPS["T"], "mono": GROUPS["mono"]}, seed=seed)
    rng = np.random.default_rng(seed)
    cd4 = np.r_[np.tile([True, False], 30), np.zeros(60, bool)]
    cd8 = np.r_[np.tile([False, True], 30), np.zeros(60, bool)]
    adata.obsm["protein"] = pd.DataFrame(
        {
            "CD4": rng.poisson(np.where(cd4, 200, 5)),
            "CD8": rng.poisson(np.where(cd8, 200, 5)),
            "CD14": rng.poisson(np.where(adata.obs["group"] == "mono", 300, 5)),
        },
        index=adata.obs_names,
    )
    adata.obs["truth"] = np.select([cd4, cd8], ["CD4 T", "CD8 T"], "classical monocyte")
    return adata


def test_surface_proteins_split_t_cells_where_rna_cannot(human):
    adata = t_cells_with_proteins()
    annotate_cells(adata, human)
    assert set(adata.obs.loc[adata.obs["group"] == "T", "cell_type"]) == {"T cell"}
    markers = {"T_CD4": ["CD4"], "T_CD8": ["cd8"]}
    coverage, _ = annotate_cells(adata, human, protein_markers=markers)
    # CD4 and CD8 T cells are neighbours in the RNA graph: proteins are not smoothed over it
    assert (adata.obs["cell_type"].astype(str) == adata.obs["truth"]).mean() > 0.95
    assert coverage.at["T_CD8", "proteins"] == "CD8" and coverage.at["T_CD8", "used"]
    assert coverage.at["T_CD8", "n_present"] == 0 and not coverage.at["T_CD8", "complete"]
    assert coverage.at["monocyte_classical", "proteins"] == ""


def test_protein_markers_without_proteins_change_nothing_and_unknown_panels_fail(human):
    plain, with_markers = make_adata(), make_adata()
    annotate_cells(plain, human)
    annotate_cells(with_markers, human, protein_markers={"T_CD4": ["CD4"]})
    pd.testing.assert_series_equal(plain.obs["cell_type"], with_markers.obs["cell_type"])
    with pytest.raises(SignatureError, match=r"unknown panels \['Treg'\]"):
        annotate_cells(t_cells_with_proteins(), human, protein_markers={"Treg": ["CD25"]})


def test_same_input_gives_identical_annotation(human):
    first, second = make_adata(), make_adata()
    annotate_cells(first, human)
    annotate_cells(second, human)
    pd.testing.assert_frame_equal(first.obs, second.obs)
    pd.testing.assert_frame_equal(first.obsm["panel_scores"], second.obsm["panel_scores"])


def test_one_population_gets_its_lineage_against_the_cells_own_background(human):
    # One population: z-scores across cells show no contrast, so no lineage wins across cells
    adata = make_adata({"mono": GROUPS["mono"]}, n_cells=80)
    adata.obs["leiden"] = pd.Categorical(np.tile(["0", "1"], 40))
    _, clusters = annotate_cells(adata, human)
    assert set(adata.obs["cell_lineage"]) == {"myeloid"}
    assert set(clusters["lineage_basis"]) == {"within cells"}
    assert (clusters["background_margin"] >= 0.5).all()
    assert (clusters["lineage_margin"] < 0.1).all()
    # ... but only where the panel genes stand above the cell's other genes
    both = make_adata({"none": GROUPS["none"], "mono": GROUPS["mono"]}, n_cells=80)
    fillers = both[both.obs["group"] == "none"].copy()  # monocyte genes at background level
    _, clusters = annotate_cells(fillers, human)
    assert set(clusters["cell_lineage"]) == {"unassigned"}
    assert (clusters["background_score"] < 0.5).all()


def test_progenitor_sort_calls_clusters_without_a_lineage_hspc(human, annotated):
    # Every cell sorted as a progenitor: a cluster primed toward no lineage is an uncommitted
    # progenitor (hspc), typed among the hspc panels; the other clusters keep their calls.
    groups = {**GROUPS, "gmp": ["MPO", "ELANE", "AZU1", "PRTN3", "MS4A3", "CEBPE"]}
    plain = make_adata(groups)
    _, plain_clusters = annotate_cells(plain, human)
    adata = make_adata(groups)
    _, clusters = annotate_cells(adata, human, progenitor_sort=True)
    none, gmp = "4", "5"  # the clusters of the groups "none" and "gmp"
    assert plain_clusters.at[none, "cell_lineage"] == "unassigned"
    assert clusters.at[none, "cell_lineage"] == "hspc"
    assert clusters.at[none, "lineage_basis"] == UNCOMMITTED
    others = clusters.index.difference([none, gmp])
    pd.testing.assert_frame_equal(clusters.loc[others], plain_clusters.loc[others])
    cells = adata.obs["group"] == "none"
    assert (adata.obs.loc[cells, "cell_lineage"] == "hspc").all()
    assert (adata.obs.loc[cells, "cell_type"] == "unassigned").all()  # no HSC or GMP gene
    # no lead for hspc: the call rests on the sort, not on hspc genes
    assert not (adata.obs.loc[cells, "annotation_margin"] >= 0.1).any()
    gmp_cells = adata.obs["group"] == "gmp"
    assert (adata.obs.loc[gmp_cells, "cell_lineage"] == "hspc").mean() > 0.95
    assert (adata.obs.loc[gmp_cells, "cell_type"] == "GMP").mean() > 0.95
    assert adata.uns["annotation"]["params"]["progenitor_sort"] is True


def test_a_lineage_resting_on_one_gene_is_not_called(human):
    # The dataset holds one lymphoid gene (NKG7): with the default min_lineage_genes of 2
    # no cluster is called lymphoid on it, and the coverage table says why.
    groups = {"mono": GROUPS["mono"], "ery": GROUPS["ery"], "nk": ["NKG7"]}
    adata = make_adata(groups)
    coverage, clusters = annotate_cells(adata, human)
    assert clusters.at["2", "cell_lineage"] == "unassigned"
    assert "lymphoid" not in set(adata.obs["cell_lineage"])
    assert list(clusters.loc[["0", "1"], "cell_lineage"]) == ["myeloid", "erythroid"]
    assert not coverage.at["NK", "used_for_lineage"]
    assert coverage.at["NK", "reason"] == (
        "not used for lineage calls: 1 lymphoid-specific gene(s) expressed (min_lineage_genes 2)"
    )
    assert adata.uns["annotation"]["params"]["min_lineage_genes"] == 2
    one = make_adata(groups)
    _, clusters = annotate_cells(one, human, min_lineage_genes=1)
    assert clusters.at["2", "cell_lineage"] == "lymphoid"


def test_clusters_named_across_cells_keep_their_lineage(annotated):
    _, _, clusters = annotated
    named = clusters["cell_lineage"] != "unassigned"
    assert set(clusters.loc[named, "lineage_basis"]) == {"across cells"}
    assert clusters.loc[named, "background_score"].isna().all()


def test_background_scores_rank_genes_within_each_cell(human):
    adata = make_adata()
    coverage = panel_coverage(adata, human)
    scores = background_scores(adata, human, coverage, shrink=1.0)
    dense = adata.X.toarray()
    ranks = np.apply_along_axis(rankdata, 1, dense)
    z = (ranks - ranks.mean(axis=1, keepdims=True)) / ranks.std(axis=1, keepdims=True)
    columns = [adata.var_names.get_loc(g) for g in coverage.at["T", "present"].split(",")]
    expected = z[:, columns].sum(axis=1) / (len(columns) + 1.0)
    np.testing.assert_allclose(scores["T"], expected, rtol=1e-4, atol=1e-4)
    # a cell's score does not depend on the other cells, nor on the chunking
    alone = background_scores(adata[:7], human, coverage, chunk_size=3)
    pd.testing.assert_frame_equal(alone, scores.iloc[:7])
    assert sparse.issparse(adata.X)


def test_sparse_and_dense_input_give_the_same_scores(human):
    adata = make_adata()
    coverage = panel_coverage(adata, human)
    on_sparse = score_panels(adata, human, coverage)
    dense = adata.copy()
    dense.X = dense.X.toarray()
    np.testing.assert_allclose(score_panels(dense, human, coverage), on_sparse, atol=1e-5)
    assert sparse.issparse(adata.X)


def test_scores_are_shrunk_z_scores(human):
    adata = make_adata()
    coverage = panel_coverage(adata, human)
    scores = score_panels(adata, human, coverage, shrink=0.0)
    genes = coverage.at["erythroblast", "present"].split(",")
    x = adata[:, genes].X.toarray()
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    np.testing.assert_allclose(scores["erythroblast"], z.mean(axis=1), atol=1e-4)
    shrunk = score_panels(adata, human, coverage, shrink=1.0)["erythroblast"]
    np.testing.assert_allclose(shrunk, z.sum(axis=1) / (len(genes) + 1), atol=1e-4)


def test_coverage_reports_partial_and_unusable_panels(human):
    adata = make_adata()
    coverage = panel_coverage(adata, human, min_genes=2, min_coverage=0.5)
    ery = coverage.loc["erythroblast"]
    assert ery["used"] and not ery["complete"] and ery["n_present"] == 7
    assert ery["fraction_present"] == pytest.approx(7 / ery["n_genes"])
    assert ery["fraction_present"] < 0.5
    assert coverage.at["monocyte_classical", "complete"]
    assert not coverage.at["osteoblast", "used"]
    assert "below the minimum of 2" in coverage.at["osteoblast", "reason"]
    assert "CD14" in coverage.at["monocyte_classical", "present"].split(",")


def test_genes_shared_between_lineages_do_not_count_for_the_lineage(human):
    specific = lineage_specific(human)
    assert "CD34" in human["HSC_MPP"].genes and "CD34" in human["B_progenitor"].genes
    assert "CD34" not in specific["HSC_MPP"].genes
    assert "CD34" not in specific["B_progenitor"].genes
    assert set(specific["erythroid_lineage"].genes) >= set(specific["erythroblast"].genes)


def test_mouse_symbols_in_a_human_dataset_are_an_error(human):
    adata = make_adata()
    adata.var_names = [g.capitalize() if g.isupper() else g for g in adata.var_names]
    with pytest.raises(SignatureError, match="other species"):
        panel_coverage(adata, human)


def test_upper_cased_mouse_symbols_match_case_insensitively(library):
    adata = make_adata(
        {
            "mono": ["LY6C2", "CCR2", "LYZ2", "MS4A4C", "F13A1", "PLAC8"],
            "ery": ["HBA-A1", "HBB-BS", "ALAS2", "GYPA", "SLC4A1"],
        }
    )
    mouse = build_panels(library, "mouse")
    with pytest.raises(SignatureError, match="gene_symbol_case"):
        panel_coverage(adata, mouse)
    coverage = panel_coverage(adata, mouse, case_insensitive=True)
    assert coverage.at["monocyte_classical", "n_present"] == 6


def test_ensembl_ids_map_through_a_symbol_column_or_fail(human):
    adata = make_adata()
    symbols = list(adata.var_names)
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    with pytest.raises(SignatureError, match="Ensembl"):
        panel_coverage(adata, human)
    adata.var["gene_symbol"] = symbols
    assert panel_coverage(adata, human).at["monocyte_classical", "n_present"] == 8


def test_no_usable_panel_is_an_error(human):
    adata = make_adata({"a": ["FILLER001"], "b": ["FILLER002"]})
    with pytest.raises(SignatureError, match="No marker panel"):
        panel_coverage(adata, human)


def test_missing_clusters_or_graph_are_errors(human):
    adata = make_adata()
    with pytest.raises(InputError, match="'clusters' is not in obs"):
        annotate_cells(adata, human, cluster_key="clusters")
    del adata.obsp["connectivities"]
    with pytest.raises(InputError, match="neighbour graph"):
        annotate_cells(adata, human)


def test_extra_panels_replace_or_add_panels(library):
    extra = {
        "human": {
            "chondrocyte": ["SOX9", "COL2A1"],
            "adipocyte_like": {"genes": ["ADIPOQ", "PLIN1"], "lineage": "stromal"},
        }
    }
    panels = build_panels(library, "human", extra_panels=extra)
    assert panels["chondrocyte"].genes == ("SOX9", "COL2A1")
    assert panels["chondrocyte"].sources == ("config",)
    assert panels["adipocyte_like"].lineage == "stromal"
    assert panels["adipocyte_like"].cell_type is None


@pytest.mark.parametrize(
    ("entry", "pattern"),
    [
        ({"genes": ["A"], "lineage": "bone"}, "needs 'lineage'"),
        ({"genes": ["A"], "lineage": "stromal", "cell_type": "NK"}, "not a type of lineage"),
        ({"genes": "A"}, "list of gene symbols"),
    ],
)
def test_bad_extra_panels_are_named(library, entry, pattern):
    with pytest.raises(SignatureError, match=rf"'new_panel'.*{pattern}"):
        build_panels(library, "human", extra_panels={"human": {"new_panel": entry}})


def test_every_supplement_panel_cites_its_sources(library):
    for species, supplement in SUPPLEMENT.items():
        panels = build_panels(library, species)
        for name in supplement:
            *keys, note = SUPPLEMENT_SOURCES[name]
            assert any(keys) or note.startswith("canonical"), name
            assert all(k in REFERENCES for k in keys if k), name
            cited = [s for s in panels[name].sources if s.startswith("osteoimmune.panels")]
            assert cited == [supplement_source(name)]
            assert "curated here" not in cited[0]


def test_panel_specs_use_the_vocabulary():
    for lineage, cell_type, parent in PANEL_SPECS.values():
        assert lineage in LINEAGES
        assert cell_type is None or CELL_TYPES[cell_type] == lineage
        assert parent is None or CELL_TYPES[parent] == lineage


# --------------------------------------------------------------------- evidence rules

LAM = ["TREM2", "APOE", "LPL", "SPP1", "GPNMB", "FABP4", "FABP5", "CD9", "LGALS3", "LIPA"]
OSTEOCLAST = ["CTSK", "ACP5", "DCSTAMP", "OCSTAMP", "NFATC1", "ATP6V0D2", "CALCR", "OSCAR"]
MREGDC = ["LAMP3", "CCR7", "FSCN1", "CCL22", "CCL17", "IDO1", "CD274", "CD40", "IL4I1"]


def majority(adata, column="cell_type"):
    return adata.obs.groupby("group", observed=True)[column].agg(
        lambda v: v.astype(str).value_counts().idxmax()
    )


def test_osteoclast_like_macrophages_are_not_osteoclasts(human):
    # Lipid-associated macrophages with ACP5, DCSTAMP and MMP9 high (the case seen in a
    # non-bone sample) lack the resorption program: they are osteoclast-like macrophages.
    groups = {
        "lam": [*LAM, "ACP5", "DCSTAMP", "MMP9", "CD68", "C1QA", "C1QB"],
        "osteoclast": [*OSTEOCLAST, "MMP9", "TNFRSF11A", "CD68"],
        "T": GROUPS["T"],
        "mono": GROUPS["mono"],
    }
    adata = make_adata(groups)
    annotate_cells(adata, human)
    calls = majority(adata)
    assert calls["lam"] == "lipid-associated macrophage"
    assert calls["osteoclast"] == "osteoclast"
    assert (adata.obs.loc[adata.obs["group"] == "lam", "cell_type"] != "osteoclast").all()
    assert FAMILIES["lipid-associated macrophage"] == "macrophage"


def test_osteoclast_needs_its_core_genes(human):
    # ACP5 and MMP9 alone (no CTSK, DCSTAMP, OCSTAMP, NFATC1...) do not make an osteoclast.
    groups = {"weak": ["ACP5", "MMP9", "CD68", "CSF1R"], "T": GROUPS["T"]}
    adata = make_adata(groups)
    coverage, _ = annotate_cells(adata, human)
    assert "osteoclast" not in set(adata.obs["cell_type"].astype(str))
    assert not coverage.at["osteoclast", "used"]
    assert "core genes" in coverage.at["osteoclast", "reason"]


def test_mature_regulatory_dcs_are_myeloid_never_t_cells(human):
    groups = {
        "mregdc": [*MREGDC, "CD74", "HLA-DRA"],
        "T": [*GROUPS["T"], "CCR7"],
        "mono": GROUPS["mono"],
    }
    adata = make_adata(groups)
    annotate_cells(adata, human)
    cells = adata.obs["group"] == "mregdc"
    assert (adata.obs.loc[cells, "cell_type"] == "mregDC").mean() > 0.9
    assert (adata.obs.loc[cells, "cell_lineage"] == "myeloid").all()
    assert majority(adata)["T"] == "T cell"


def test_basophils_and_mast_cells_are_reachable_and_distinct(human):
    groups = {
        "baso": ["CLC", "HDC", "MS4A2", "GATA2", "ENPP3", "CPA3"],
        "mast": ["TPSAB1", "TPSB2", "CMA1", "KIT", "HPGDS", "CPA3"],
        "T": GROUPS["T"],
    }
    adata = make_adata(groups)
    annotate_cells(adata, human)
    calls = majority(adata)
    assert (calls["baso"], calls["mast"]) == ("basophil", "mast cell")


def test_cd4_cd8_calls_need_their_genes_in_the_cluster():
    # Rule fixed before measuring: a subtype needs its genes detected in >= 25% of the
    # cluster's T cells and >= 2x the other subtype's. The case seen: CD8A in 14% and CD4 in
    # 17% of 76 cells called CD8 T -> T cell; a clear CD8 cluster keeps its call.
    n = 100
    rng = np.random.default_rng(0)
    cd8 = np.r_[rng.random(n) < 0.14, rng.random(n) < 0.8]
    cd4 = np.r_[rng.random(n) < 0.17, rng.random(n) < 0.05]
    x = sparse.csr_matrix(np.column_stack([cd8, cd4, np.ones(2 * n)]).astype(np.float32))
    adata = ad.AnnData(X=x)
    adata.var_names = ["CD8A", "CD4", "CD3E"]
    adata.obs_names = [f"c{i}" for i in range(2 * n)]
    clusters = pd.Series(np.repeat(["a", "b"], n), index=adata.obs_names)
    calls = pd.Series("CD8 T", index=adata.obs_names, dtype=object)
    out = t_subtype_evidence(adata, calls, clusters)
    assert set(out[:n]) == {"T cell"} and set(out[n:]) == {"CD8 T"}
    # types called with surface proteins keep their calls
    kept = t_subtype_evidence(adata, calls, clusters, protein_types={"CD8 T"})
    pd.testing.assert_series_equal(kept, calls)


def test_tissue_flags_bone_types_outside_bone():
    types = pd.Series(["osteoclast"] * 32 + ["macrophage"] * 68)
    assert tissue_flags(types, tissue="bone-marrow mononuclear cells") == {}
    assert tissue_flags(types, tissue="femoral head (bone and bone-marrow cells)") == {}
    flags = tissue_flags(types, tissue="lung")
    assert list(flags) == ["osteoclast"]
    assert "32 cells (32%)" in flags["osteoclast"] and "'lung'" in flags["osteoclast"]
    cultured = tissue_flags(types, tissue="bone-marrow-derived dendritic cells")
    assert "culture" in cultured["osteoclast"]
    assert tissue_flags(pd.Series(["macrophage"]), tissue="peripheral blood") == {}
    assert set(BONE_TYPES) <= set(CELL_TYPES)
    # the registry's tissues: only the cultured ones are not bone
    registry = load_registry(REPO / "config" / "datasets.yaml")
    not_bone = {
        name
        for name, entry in registry.items()
        if tissue_flags(pd.Series(["osteoclast"]), tissue=entry["tissue"])
    }
    assert not_bone == {"shalek2014_bmdc_lps", "weinreb2020_larry_bm_culture"}


def test_marker_evidence_names_detected_genes_and_flags_unsupported_cells(annotated, human):
    adata, _, _ = annotated
    table, supported = marker_evidence(adata, human, adata.obs["cell_type"].astype(str))
    mono = table.loc["classical monocyte"]
    first = mono["marker_evidence"].split(", ")[0]
    assert first.split()[0] in GROUPS["mono"] and first.endswith("100%")
    assert mono["fraction_supported"] > 0.95
    assert table.loc["unassigned", "n_genes_present"] == 0
    assert not supported[adata.obs["cell_type"] == "unassigned"].any()
    # a call contradicted by its markers: monocytes relabelled T cell are not supported
    relabelled = adata.obs["cell_type"].astype(str).replace("classical monocyte", "T cell")
    _, supported = marker_evidence(adata, human, relabelled, min_genes=3)
    mono_cells = (adata.obs["group"] == "mono").to_numpy()
    assert supported[mono_cells].mean() < 0.5
    # a type none of whose panel genes the data hold says so, instead of a blank
    absent = adata[:, [g not in set(GROUPS["mono"]) for g in adata.var_names]].copy()
    table, _ = marker_evidence(absent, human, absent.obs["cell_type"].astype(str))
    assert table.loc["classical monocyte", "n_genes_present"] == 0
    assert table.loc["classical monocyte", "marker_evidence"].startswith("none of its")


def test_every_new_panel_cites_a_doi():
    for name in ["macrophage_lipid_associated", "macrophage_erythroblastic_island", "mregDC"]:
        keys = [k for k in SUPPLEMENT_SOURCES[name][:-1] if k]
        assert keys and all("doi:10." in REFERENCES[k] for k in keys), name
    assert "10.1016/j.cell.2019.05.054" in REFERENCES["jaitin2019"]
    assert "10.1038/s41586-020-2134-y" in REFERENCES["maier2020"]


# --------------------------------------------------------------------------- agreement


LABEL_MAP = {
    "Mono": {"lineage": "myeloid", "cell_type": "classical monocyte"},
    "NK cells": {"lineage": "lymphoid", "cell_type": "NK"},
    "ILC": {"lineage": "lymphoid", "cell_type": None},
}


def hand_obs():
    return pd.DataFrame(
        {
            "author_cell_type": ["Mono", "Mono", "Mono", "NK cells", "NK cells", "ILC", "odd"],
            "cell_lineage": [
                "myeloid",
                "myeloid",
                "unassigned",
                "lymphoid",
                "lymphoid",
                "lymphoid",
                "myeloid",
            ],
            "cell_type": [
                "classical monocyte",
                "macrophage",
                "unassigned",
                "NK",
                "unassigned",
                "NK",
                "macrophage",
            ],
            "leiden": ["0", "0", "1", "2", "2", "2", "0"],
            "sample": ["s1", "s1", "s1", "s2", "s2", "s2", "s2"],
        },
        index=[f"c{i}" for i in range(7)],
    )


def test_author_labels_map_to_the_vocabulary_and_unknown_ones_are_reported():
    mapped, unmapped = map_author_labels(hand_obs()["author_cell_type"], LABEL_MAP)
    assert unmapped == ["odd"]
    assert mapped["author_lineage"].tolist()[-2:] == ["lymphoid", None]
    assert mapped["author_cell_type"].tolist()[-2:] == [None, None]


def test_agreement_metrics_by_hand():
    table = agreement_table(hand_obs(), LABEL_MAP).set_index(["level", "metric", "reference"])
    lineage = table.xs("lineage", level="level")
    mapped = "author labels mapped to the vocabulary"
    # 6 cells with a mapped lineage; cell 2 is unassigned
    assert lineage.loc[("accuracy", mapped), "annotation"] == pytest.approx(5 / 6)
    assert lineage.loc[("accuracy_of_assigned", mapped), "annotation"] == pytest.approx(1.0)
    assert lineage.loc[("fraction_assigned", mapped), "n_cells"] == 6
    cell_type = table.xs("cell_type", level="level")
    # 5 cells with a mapped type: correct are c0 (monocyte) and c3 (NK)
    assert cell_type.loc[("accuracy", mapped), "annotation"] == pytest.approx(2 / 5)
    # F1 monocyte: precision 1, recall 1/3 -> 0.5; NK: precision 1, recall 1/2 -> 2/3
    assert cell_type.loc[("macro_f1", mapped), "annotation"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert table.loc[("cell_type", "ari", "author labels as published"), "n_cells"] == 7


def test_agreement_with_a_perfect_annotation_is_one():
    obs = hand_obs().iloc[[0, 3]]
    obs.loc["c3", "cell_type"] = "NK"
    table = agreement_table(obs, LABEL_MAP)
    assert np.allclose(table.loc[table["metric"] != "ari", "annotation"], 1.0)


def test_invalid_label_maps_are_errors():
    with pytest.raises(SignatureError, match="'Mono'.*not a type of lineage"):
        check_label_map({"Mono": {"lineage": "lymphoid", "cell_type": "classical monocyte"}})
    with pytest.raises(SignatureError, match="lineage 'bone'"):
        check_label_map({"Mono": {"lineage": "bone", "cell_type": None}})


def test_confusion_and_composition_tables():
    obs = hand_obs()
    confusion = confusion_table(obs, LABEL_MAP)
    assert confusion.loc["Mono", "n_cells"] == 3
    assert confusion.loc["Mono", "unassigned"] == 1
    assert confusion.loc["NK cells", "lymphoid (no type)"] == 1
    assert confusion.loc["odd", "author_lineage"] == ""
    composition = composition_table(obs)
    assert composition.groupby("sample")["fraction"].sum().tolist() == pytest.approx([1, 1])
    assert composition["n_cells"].sum() == len(obs)
    with pytest.raises(InputError, match="'sample' is not in obs"):
        composition_table(obs.drop(columns="sample"))


def test_protein_check_separates_predicted_monocytes():
    obs = hand_obs().drop(columns="author_cell_type")
    proteins = pd.DataFrame(
        {"CD14": [90, 80, 2, 1, 0, 3, 70], "CD3": [1, 2, 50, 60, 40, 30, 1]}, index=obs.index
    )
    adata = ad.AnnData(obs=obs, obsm={"protein": proteins})
    check = protein_check(adata, cell_types=("classical monocyte", "macrophage"))
    assert check["n_cells_in"] == 3 and check["auroc"] == 1.0
    assert check["ratio_of_means"] == pytest.approx(80 / (6 / 4))
    # in: c0 (CD14 high) beats the 4 others, the NK cells c3 and c5 beat 1 and 2 of them
    check = protein_check(adata, cell_types=("classical monocyte", "NK"))
    assert check["auroc"] == pytest.approx(7 / 12)
    with pytest.raises(SignatureError, match="No protein 'CD16'"):
        protein_check(adata, protein="CD16")


def test_registry_label_maps_use_the_vocabulary():
    registry = load_registry(REPO / "config" / "datasets.yaml")
    maps = {name: e.get("author_label_map") for name, e in registry.items()}
    assert {n for n, m in maps.items() if m} == {
        "paul2015_bm_myeloid",
        "luecken2021_bmmc_cite",
        "luecken2021_bmmc_multiome",
        "weinreb2020_larry_bm_culture",
        "matsushita2023_bm_stroma",
    }
    for name, label_map in maps.items():
        check_label_map(label_map or {}, dataset=name)


# --------------------------------------------------------------------------- real data

MAPPED = "author labels mapped to the vocabulary"
PUBLISHED = "author labels as published"


@pytest.fixture(scope="module")
def real(run):
    """A dataset annotated by the workflow run of the session (conftest ``run``)."""

    def get(dataset):
        folder = run / "results" / dataset
        agreement = pd.read_csv(folder / "tables" / "annotation_agreement.tsv", sep="\t")
        return (
            ad.read_h5ad(folder / f"{dataset}.h5ad"),
            agreement.set_index(["level", "metric", "reference"]),
        )

    return get


@pytest.mark.parametrize("dataset", ["luecken2021_bmmc_cite", "luecken2021_bmmc_multiome"])
def test_lineage_agrees_with_the_authors_on_luecken(real, dataset):
    _, table = real(dataset)
    assert table.loc[("lineage", "accuracy", MAPPED), "annotation"] >= 0.8


def test_lineage_accuracy_on_paul_reaches_the_bar(real):
    # The 240-gene subset has no HSC/MPP, MEP or megakaryocyte marker of the panels: the MEP
    # cluster is hspc by the registry's progenitor_sort (every cell sorted Lin- Kit+ Sca-1-),
    # as the one cluster primed toward no lineage. Without that rule it stays unassigned and
    # the accuracy is 0.79.
    adata, table = real("paul2015_bm_myeloid")
    assert table.loc[("lineage", "accuracy", MAPPED), "annotation"] >= 0.8
    clusters = pd.DataFrame(dict(adata.uns["annotation"]["clusters"])).set_index("cluster")
    uncommitted = clusters["lineage_basis"] == UNCOMMITTED
    assert set(clusters.loc[uncommitted, "cell_lineage"]) == {"hspc"}
    progenitors = adata.obs["author_cell_type"].isin(["Multipotent progenitors", "GMP"])
    hspc = adata.obs["cell_lineage"] == "hspc"
    assert progenitors[hspc].mean() > 0.5  # most cells called hspc are the authors' progenitors


@pytest.mark.parametrize("resolution", ["1.0", "1.5"])
def test_paul_lineages_hold_at_finer_clusters(run, library, resolution):
    # Nkg7 is the one lymphoid gene of the 240 and the neutrophils express it: with
    # min_lineage_genes 2 it names no lineage, so finer clusters (where a neutrophil cluster
    # stands alone) keep the bar; with one gene allowed they fell to 0.73 and 0.72.
    adata = ad.read_h5ad(
        run / "results" / "paul2015_bm_myeloid" / "intermediate" / "clustered.h5ad"
    )
    annotate_cells(
        adata,
        build_panels(library, "mouse"),
        cluster_key=f"leiden_{resolution}",
        progenitor_sort=True,
    )
    assert "lymphoid" not in set(adata.obs["cell_lineage"])
    label_map = load_registry(REPO / "config" / "datasets.yaml")["paul2015_bm_myeloid"][
        "author_label_map"
    ]
    table = agreement_tables(adata, label_map)[0].set_index(["level", "metric", "reference"])
    assert table.loc[("lineage", "accuracy", MAPPED), "annotation"] >= 0.8


def test_paul_basophils_and_gmps_are_not_cdc1_on_irf8(run, library):
    # Irf8 is the one cDC1 gene of Paul's 240; its basophils and GMPs express it (they were
    # 189 and 89 cDC1 cells). The cDC1 panel needs 2 of its core genes: it is not used.
    adata = ad.read_h5ad(
        run / "results" / "paul2015_bm_myeloid" / "intermediate" / "clustered.h5ad"
    )
    coverage, _ = annotate_cells(adata, build_panels(library, "mouse"), progenitor_sort=True)
    authors = adata.obs["author_cell_type"].astype(str)
    assert "cDC1" not in set(adata.obs["cell_type"].astype(str))
    assert not coverage.at["cDC1", "used"] and "core genes" in coverage.at["cDC1", "reason"]
    assert (adata.obs.loc[authors == "Monocytes", "cell_type"] == "classical monocyte").mean() > 0.9
    label_map = load_registry(REPO / "config" / "datasets.yaml")["paul2015_bm_myeloid"][
        "author_label_map"
    ]
    table = agreement_tables(adata, label_map)[0].set_index(["level", "metric", "reference"])
    assert table.loc[("lineage", "accuracy", MAPPED), "annotation"] >= 0.8
    assert table.loc[("cell_type", "accuracy", MAPPED), "annotation"] >= 0.55  # 0.48 before


def test_lineage_calls_on_paul_are_right_where_made(real):
    # With the progenitor sort every cell has a lineage, so the calls made on marker
    # evidence (basis "across cells") are checked on their own.
    adata, table = real("paul2015_bm_myeloid")
    assert table.loc[("lineage", "fraction_assigned", MAPPED), "annotation"] == 1.0
    clusters = pd.DataFrame(dict(adata.uns["annotation"]["clusters"])).set_index("cluster")
    marked = adata.obs["leiden"].astype(str).map(clusters["lineage_basis"]) == "across cells"
    label_map = load_registry(REPO / "config" / "datasets.yaml")["paul2015_bm_myeloid"][
        "author_label_map"
    ]
    authors, _ = map_author_labels(adata.obs["author_cell_type"], label_map)
    right = adata.obs["cell_lineage"].astype(str) == authors["author_lineage"]
    assert marked.mean() > 0.85
    assert right[marked].mean() >= 0.85


@pytest.mark.parametrize(
    ("dataset", "bar"), [("paul2015_bm_myeloid", 0.55), ("luecken2021_bmmc_cite", 0.51)]
)
def test_cell_types_beat_the_leiden_ari_bar(real, dataset, bar):
    _, table = real(dataset)
    row = table.loc[("cell_type", "ari", MAPPED)]
    assert row["annotation"] > bar
    assert row["annotation"] > row["leiden"]


def test_cell_types_beat_the_bar_against_the_published_cite_labels(real):
    # The 1,000-gene RNA panel holds no CD4, CD8A/B, CD40LG or ZBTB7B: the CD4 / CD8 split
    # comes from the CD4 and CD8 proteins (annotation.protein_markers); RNA alone gave 0.44.
    adata, table = real("luecken2021_bmmc_cite")
    assert table.loc[("cell_type", "ari", PUBLISHED), "annotation"] > 0.51
    coverage = pd.DataFrame(adata.uns["annotation"]["coverage"]).set_index("panel")
    assert coverage.at["T_CD4", "proteins"] == "CD4" and coverage.at["T_CD8", "proteins"] == "CD8"
    assert coverage.at["monocyte_classical", "proteins"] == ""


def test_predicted_monocytes_carry_cd14_protein(real):
    adata, table = real("luecken2021_bmmc_cite")
    check = protein_check(adata)
    assert check["n_cells_in"] >= 50
    assert check["auroc"] > 0.9 and check["ratio_of_means"] > 10
    assert table.loc[("protein", "CD14_auroc", "CD14 ADT of the same cells"), "annotation"] > 0.9


def test_low_coverage_panels_are_flagged_on_the_random_gene_panels(real):
    adata, _ = real("luecken2021_bmmc_multiome")
    coverage = pd.DataFrame(adata.uns["annotation"]["coverage"]).set_index("panel")
    used = coverage[coverage["used"]]
    assert not used["complete"].any()
    assert (used["fraction_present"] < 0.5).all()
    assert set(adata.obs["cell_lineage"].astype(str)) <= {*LINEAGES, "unassigned"}


@pytest.mark.parametrize(
    "dataset",
    [
        "paul2015_bm_myeloid",
        "luecken2021_bmmc_cite",
        "luecken2021_bmmc_multiome",
        "weinreb2020_larry_bm_culture",
        "matsushita2023_bm_stroma",
    ],
)
def test_registry_maps_every_author_label_of_the_real_data(real, dataset):
    adata, _ = real(dataset)
    label_map = load_registry(REPO / "config" / "datasets.yaml")[dataset]["author_label_map"]
    _, unmapped = map_author_labels(adata.obs["author_cell_type"], label_map)
    assert unmapped == []
