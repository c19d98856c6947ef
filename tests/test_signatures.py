from pathlib import Path

import pytest
import yaml

from osteoimmune.errors import SignatureError
from osteoimmune.signatures import (
    DEFAULT_LIBRARY,
    PROJECT_SOURCE,
    SignatureLibrary,
    build_library,
    load_library,
    main,
    read_gmt,
)

SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "signatures.yaml"
needs_source = pytest.mark.skipif(not SOURCE.is_file(), reason=f"{SOURCE} not present")


@pytest.fixture(scope="module")
def source() -> dict:
    return yaml.safe_load(SOURCE.read_text())


@pytest.fixture(scope="module")
def project() -> dict:
    return yaml.safe_load(PROJECT_SOURCE.read_text())


@pytest.fixture(scope="module")
def built() -> dict:
    return build_library(SOURCE, project=PROJECT_SOURCE)


def _tiny_source(tmp_path: Path, *, sources: list[str]) -> Path:
    doc = {
        "schema_version": 1,
        "title": "tiny",
        "curation_notes": ["note"],
        "references": {
            "ref1": {
                "citation": "Doe J. A paper. J 2020",
                "doi": "10.1/x",
                "pmid": "123",
                "identifier_checked": True,
            },
        },
        "sets": [
            {
                "name": "setA",
                "category": "c",
                "description": "d",
                "use": "score",
                "size": {"human": 2},
                "genes": {"human": ["A1", "B2"]},
                "sources": sources,
                "evidence_level": "low",
                "evidence_notes": "n",
            },
        ],
        "external_msigdb_sets_not_shipped": [],
    }
    path = tmp_path / "source.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@needs_source
def test_build_keeps_every_set_and_reference(source, project, built):
    assert list(built["sets"]) == [s["name"] for s in source["sets"] + project["sets"]]
    assert built["references"] == {**source["references"], **project["references"]}
    assert built["curation_notes"] == source["curation_notes"] + project["curation_notes"]
    assert built["external_msigdb_sets_not_shipped"] == source["external_msigdb_sets_not_shipped"]
    assert built["built_from"]["file"] == "signatures.yaml"
    assert len(built["built_from"]["sha256"]) == 64
    assert built["built_from"]["project"]["file"] == PROJECT_SOURCE.name


@needs_source
def test_build_keeps_genes_sources_evidence_and_resolves_citations(source, project, built):
    references = {**source["references"], **project["references"]}
    for entry in source["sets"] + project["sets"]:
        out = built["sets"][entry["name"]]
        for species, genes in entry["genes"].items():
            if genes:
                assert out["genes"][species] == genes
        for key in (
            "category",
            "description",
            "use",
            "sources",
            "evidence_level",
            "evidence_notes",
            "gene_notes",
            "panels",
            "subsets",
        ):
            assert out.get(key) == entry.get(key), (entry["name"], key)
        assert len(out["citations"]) == len(entry["sources"])
        for key, citation in zip(entry["sources"], out["citations"], strict=True):
            ref = references[key]
            assert citation.startswith(ref["citation"].strip().rstrip("."))
            if ref.get("doi"):
                assert f"doi:{ref['doi']}" in citation
            if ref.get("pmid"):
                assert f"PMID:{ref['pmid']}" in citation


@needs_source
def test_packaged_library_equals_a_fresh_build(built):
    assert yaml.safe_load(DEFAULT_LIBRARY.read_text()) == built


@needs_source
def test_cli_build_writes_the_library(tmp_path, built):
    out = tmp_path / "lib" / "signatures.yaml"
    assert main(["build", str(SOURCE), str(out)]) == 0
    assert yaml.safe_load(out.read_text()) == built


def test_load_packaged_library():
    library = load_library()
    m1 = library.sets["macrophage_M1_classical_core"]
    assert library.genes("macrophage_M1_classical_core", "mouse") == m1["genes"]["mouse"]
    assert "doi:10.1016/j.immuni.2014.06.008" in library.citation("macrophage_M1_classical_core")
    assert "macrophage_M1_classical_core" in library.names(use="score", species="human")
    assert "celltype_panel_bone_marrow" not in library.names(use=None, species="human")
    assert "celltype_panel_bone_marrow" in library.names(use=None)


def test_dangling_source_key_names_set_and_key(tmp_path):
    path = _tiny_source(tmp_path, sources=["ref1", "nosuchref"])
    with pytest.raises(SignatureError, match=r"'setA'.*'nosuchref'"):
        build_library(path)


def test_library_file_with_missing_field_is_rejected(tmp_path):
    library = build_library(_tiny_source(tmp_path, sources=["ref1"]))
    del library["sets"]["setA"]["description"]
    path = tmp_path / "lib.yaml"
    path.write_text(yaml.safe_dump(library))
    with pytest.raises(SignatureError, match=r"'setA'.*'description'"):
        load_library(path)


def test_citation_format(tmp_path):
    library = build_library(_tiny_source(tmp_path, sources=["ref1"]))
    assert library["sets"]["setA"]["citations"] == ["Doe J. A paper. J 2020. doi:10.1/x. PMID:123"]


def test_unknown_species_and_missing_list():
    library = load_library()
    with pytest.raises(SignatureError, match=r"'rat'.*human, mouse"):
        library.genes("macrophage_M1_classical_core", "rat")
    with pytest.raises(SignatureError, match=r"'rat'"):
        library.names(species="rat")
    with pytest.raises(SignatureError, match="no human gene list"):
        library.genes("celltype_panel_bone_marrow", "human")


def test_unknown_set_suggests_close_names():
    with pytest.raises(SignatureError, match="did you mean macrophage_M1_classical_core"):
        load_library().genes("macrophage_M1_clasical_core", "human")


def test_gmt_round_trip(tmp_path):
    library = load_library()
    path = tmp_path / "sets.gmt"
    written = library.to_gmt(path, species="mouse", use=("score", "annotation"))
    assert written == library.names(use=("score", "annotation"), species="mouse")
    back = read_gmt(path, species="mouse")
    assert list(back) == written
    for name in written:
        assert back[name]["genes"]["mouse"] == library.genes(name, "mouse")
    first = path.read_text().splitlines()[0].split("\t")
    assert first[0] == "macrophage_M1_classical_core"
    assert "[murray2014: Murray PJ" in first[1]


def test_add_user_yaml_sets(tmp_path):
    library = load_library()
    path = tmp_path / "mine.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "references": {"me2025": {"citation": "Me. My paper. 2025", "doi": "10.9/me"}},
                "sets": {
                    "my_set": {
                        "description": "mine",
                        "genes": {"human": ["CD14", "LYZ"]},
                        "sources": ["me2025", "murray2014"],
                    },
                    "no_source": {"description": "bare", "genes": {"mouse": ["Cd14"]}},
                },
            }
        )
    )
    assert library.add_sets(path) == ["my_set", "no_source"]
    assert library.genes("my_set", "human") == ["CD14", "LYZ"]
    assert library.citation("my_set").startswith("Me. My paper. 2025. doi:10.9/me; Murray PJ")
    assert "my_set" in library.names(use="score", species="human")
    assert library.sets["no_source"]["sources"] == []
    with pytest.raises(SignatureError, match="already in the library"):
        library.add_sets({"my_set": {"description": "again", "genes": {"human": ["A"]}}})


def test_user_set_needs_description_and_known_sources():
    library = load_library()
    with pytest.raises(SignatureError, match=r"'x'.*'description'"):
        library.add_sets({"x": {"genes": {"human": ["CD14"]}}})
    with pytest.raises(SignatureError, match=r"'y'.*'nope'"):
        library.add_sets(
            {"y": {"description": "d", "genes": {"human": ["A"]}, "sources": ["nope"]}}
        )
    assert "x" not in library.sets and "y" not in library.sets


def test_add_gmt_sets(tmp_path):
    path = tmp_path / "mine.gmt"
    path.write_text("gmt_set\tfrom a GMT\tActb\tGapdh\n\nother\t\tCd14\n")
    library = SignatureLibrary(sets={}, references={})
    with pytest.raises(SignatureError, match="species"):
        library.add_sets(path)
    assert library.add_sets(path, species="mouse") == ["gmt_set", "other"]
    assert library.genes("gmt_set", "mouse") == ["Actb", "Gapdh"]
    assert library.sets["gmt_set"]["description"] == "from a GMT"
    with pytest.raises(SignatureError, match="no human gene list"):
        library.genes("gmt_set", "human")


def test_bad_gmt_line_is_an_error(tmp_path):
    path = tmp_path / "bad.gmt"
    path.write_text("only_a_name\n")
    with pytest.raises(SignatureError, match="line 1"):
        read_gmt(path, species="human")


def _project_source(tmp_path: Path, *, name: str, references: dict, sources: list[str]) -> Path:
    doc = {
        "references": references,
        "sets": [
            {
                "name": name,
                "category": "c",
                "description": "d",
                "use": "score",
                "genes": {"human": ["C3"], "mouse": ["C3"]},
                "sources": sources,
                "evidence_level": "low",
                "evidence_notes": "n",
            }
        ],
    }
    path = tmp_path / "project.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_project_sets_are_merged_and_may_cite_curated_references(tmp_path):
    source = _tiny_source(tmp_path, sources=["ref1"])
    refs = {"own": {"citation": "Own. Paper. 2021", "doi": "10.2/own"}}
    project = _project_source(tmp_path, name="setB", references=refs, sources=["own", "ref1"])
    library = build_library(source, project=project)
    assert list(library["sets"]) == ["setA", "setB"]
    assert library["sets"]["setB"]["citations"] == [
        "Own. Paper. 2021. doi:10.2/own",
        "Doe J. A paper. J 2020. doi:10.1/x. PMID:123",
    ]
    assert library["built_from"]["project"]["file"] == "project.yaml"
    assert list(build_library(source)["sets"]) == ["setA"]  # without project: curated only


@pytest.mark.parametrize(
    ("name", "references", "sources", "match"),
    [
        ("setA", {}, ["ref1"], r"project.yaml: set 'setA' is already in the library"),
        ("setB", {}, ["nope"], r"'setB'.*'nope'"),
        ("setB", {"ref1": {"citation": "Other"}}, ["ref1"], r"reference 'ref1' differs"),
    ],
)
def test_project_source_conflicts_are_errors(tmp_path, name, references, sources, match):
    source = _tiny_source(tmp_path, sources=["ref1"])
    project = _project_source(tmp_path, name=name, references=references, sources=sources)
    with pytest.raises(SignatureError, match=match):
        build_library(source, project=project)


def test_cli_without_project_builds_the_curated_sets_only(tmp_path):
    source = _tiny_source(tmp_path, sources=["ref1"])
    out = tmp_path / "lib.yaml"
    assert main(["build", str(source), str(out), "--no-project"]) == 0
    assert list(yaml.safe_load(out.read_text())["sets"]) == ["setA"]
