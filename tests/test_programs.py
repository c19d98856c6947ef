"""The project's signature programs (issue 16): EV biogenesis, mitophagy, mitochondrial QC,
efferocytosis. Library content, default scoring and coverage on real mirror data.

Positive control: no mirrored dataset can show one at the level the pipeline scores. The human
sets with a lineage contrast (Luecken 2021 BMMC, CITE and Multiome) hold 1,000 / 600 random
genes: at most 2 of the 14-17 genes of each program, below the 50 % coverage the pipeline
requires. The mouse sets covering them (Matsushita 2023 stroma, Shalek 2014 BMDC) have no
phagocyte-vs-lymphocyte contrast, and LPS (Shalek) has no agreed direction for these programs
as a whole. The one check that can be made is gene by gene: the efferocytosis genes Luecken
CITE holds (CD36, STAB1: scavenger receptors of monocytes; 2 of 17, too few to score the
program) are expressed in CD14+ monocytes and rarely in lymphocytes.
"""

from pathlib import Path

import numpy as np
import pytest
import scanpy as sc

from osteoimmune.readers import read_dataset
from osteoimmune.registry import load_registry
from osteoimmune.scoring import coverage_table, default_score_sets
from osteoimmune.signatures import load_library
from osteoimmune.states import gene_table

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = (
    "extracellular_vesicle_biogenesis_secretion",
    "mitophagy_PINK1_PRKN_and_receptors",
    "mitochondrial_quality_control_dynamics_proteases",
    "efferocytosis_receptors_bridging_engulfment",
)
REVIEWS = {"kou2026", "wang2026bmr"}  # the two reviews the project started from


@pytest.fixture(scope="module")
def library():
    return load_library()


def _read(mirror: Path, name: str):
    entry = load_registry(REPO / "config" / "datasets.yaml")[name]
    paths = {f["filename"]: mirror / name / f["filename"] for f in entry["files"]}
    adata = read_dataset(entry, paths, dataset=name)
    if adata.uns["osteoimmune"]["value_type"] == "counts":
        sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


@pytest.mark.parametrize("name", PROGRAMS)
def test_program_is_cited_and_scored_by_default_in_both_species(library, name):
    entry = library.sets[name]
    assert entry["use"] == "score"
    assert set(entry["sources"]) & REVIEWS
    for key, citation in zip(entry["sources"], entry["citations"], strict=True):
        assert f"doi:{library.references[key]['doi']}" in citation
    human, mouse = library.genes(name, "human"), library.genes(name, "mouse")
    assert len(human) >= 10 and all(g == g.upper() for g in human)
    assert all(g[0].isupper() and g[1:] == g[1:].lower() for g in mouse)
    assert [g.upper() for g in mouse] == human  # one-to-one orthologues, same order
    for species in ("human", "mouse"):
        assert name in default_score_sets(library, species)


def test_programs_are_covered_and_scored_on_real_bone_marrow_stroma(mirror, library):
    adata = _read(mirror, "matsushita2023_bm_stroma")
    table = coverage_table(adata, library, species="mouse", sets=None)
    assert set(PROGRAMS) <= set(table.index)
    assert table.loc[list(PROGRAMS), "scored"].all()
    assert (table.loc[list(PROGRAMS), "fraction_present"] >= 0.9).all()


def test_programs_on_random_gene_panel_are_reported_not_scored(mirror, library):
    adata = _read(mirror, "luecken2021_bmmc_cite")
    table = coverage_table(adata, library, species="human", sets=list(PROGRAMS))
    assert not table["scored"].any()
    assert table["reason"].str.contains("threshold").all()


def test_efferocytosis_genes_present_are_higher_in_monocytes_than_lymphocytes(mirror, library):
    adata = _read(mirror, "luecken2021_bmmc_cite")
    label = adata.obs["author_cell_type"].astype(str)
    adata.obs["group"] = np.where(
        label.str.startswith("CD14+ Mono"),
        "monocyte",
        np.where(
            label.str.contains(r"^(?:CD4\+ T|CD8\+ T|NK|Naive CD20\+ B)"), "lymphocyte", "other"
        ),
    )
    genes = library.genes("efferocytosis_receptors_bridging_engulfment", "human")
    table = gene_table(adata, genes, groupby="group", min_cells=50).query("present")
    assert set(table["gene"]) == {"CD36", "STAB1"}  # 2 of 17: too few to score the program
    mean = table.pivot(index="gene", columns="group", values="mean")
    fraction = table.pivot(index="gene", columns="group", values="fraction")
    assert (mean["monocyte"] > 5 * mean["lymphocyte"]).all()
    assert (fraction["monocyte"] > 0.3).all() and (fraction["lymphocyte"] < 0.05).all()
