"""Registry and config validation: bad entries are errors naming the entry and field."""

import copy

import pytest
import yaml
from conftest import REPO

from osteoimmune.errors import RegistryError
from osteoimmune.registry import load_models, load_registry, select_datasets, validate

REGISTRY = REPO / "config" / "datasets.yaml"


@pytest.fixture
def registry_data():
    """The shipped registry's default (mirrored) entries, as YAML data."""
    data = yaml.safe_load(REGISTRY.read_text())
    data["datasets"] = {k: v for k, v in data["datasets"].items() if v.get("default", True)}
    return data


def write(tmp_path, data):
    path = tmp_path / "datasets.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_shipped_registry_names_the_six_mirrored_datasets(mirror):
    registry = load_registry(REGISTRY)
    manifest = {
        (row.split("\t")[0], row.split("\t")[1]): row.split("\t")[3]
        for row in (mirror / "MANIFEST.tsv").read_text().splitlines()[1:]
    }
    default = select_datasets(registry, "default")
    files = {
        (name, f["filename"]): f["sha256"] for name in default for f in registry[name]["files"]
    }
    assert files == manifest


def test_public_studies_are_traceable_and_not_in_the_default_run():
    registry = load_registry(REGISTRY)
    studies = [name for name, entry in registry.items() if not entry["default"]]
    assert len(studies) >= 6
    assert {registry[name]["species"] for name in studies} == {"human", "mouse"}
    for name in studies:
        entry = registry[name]
        assert entry["records"], name  # the public records the entry was checked against
        assert "unverified" in entry, name  # and what they did not confirm
        assert entry["paper"] and entry["license"] and "doi" in entry, name
        files = [*entry["files"], *(f for s in entry["samples"] or [] for f in s["files"])]
        assert files and all(f["url"].startswith(("https://", "http://")) for f in files), name
        if entry["samples"]:
            conditions = {s["condition"] for s in entry["samples"]}
            assert entry.get("reference_condition", next(iter(conditions))) in conditions, name


def test_unknown_key_is_an_error_naming_entry_and_field(tmp_path, registry_data):
    registry_data["datasets"]["paul2015_bm_myeloid"]["colour"] = "blue"
    with pytest.raises(RegistryError, match=r"paul2015_bm_myeloid.*colour"):
        load_registry(write(tmp_path, registry_data))


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("species", "zebrafish", r"paul2015_bm_myeloid/species.*zebrafish"),
        ("values", "counts-ish", r"paul2015_bm_myeloid/values"),
        ("files", [], r"paul2015_bm_myeloid.*files.*role .counts."),
        # a polarization gate must say why every cell belongs in it
        ("polarization_gate", {"cells": "all"}, r"paul2015_bm_myeloid/polarization_gate.*reason"),
        (
            "polarization_gate",
            {"cells": "some", "reason": "sorted"},
            r"paul2015_bm_myeloid/polarization_gate/cells",
        ),
        # so must a progenitor sort
        ("progenitor_sort", {}, r"paul2015_bm_myeloid/progenitor_sort.*reason"),
    ],
)
def test_bad_field_values_are_named(tmp_path, registry_data, field, value, pattern):
    registry_data["datasets"]["paul2015_bm_myeloid"][field] = value
    with pytest.raises(RegistryError, match=pattern):
        load_registry(write(tmp_path, registry_data))


def test_bad_checksum_and_missing_url_are_named(tmp_path, registry_data):
    data = copy.deepcopy(registry_data)
    data["datasets"]["shalek2014_bmdc_lps"]["files"][0]["sha256"] = "abc"
    with pytest.raises(RegistryError, match=r"shalek2014_bmdc_lps/files/0/sha256"):
        load_registry(write(tmp_path, data))
    data = copy.deepcopy(registry_data)
    del data["datasets"]["shalek2014_bmdc_lps"]["files"][0]["url"]
    with pytest.raises(RegistryError, match=r"shalek2014_bmdc_lps/files/0"):
        load_registry(write(tmp_path, data))


def test_rda_without_object_and_labels_without_file_are_errors(tmp_path, registry_data):
    data = copy.deepcopy(registry_data)
    del data["datasets"]["paul2015_bm_myeloid"]["files"][0]["object"]
    with pytest.raises(RegistryError, match=r"paul2015_bm_myeloid.*countMatrix.rda.*object"):
        load_registry(write(tmp_path, data))
    data = copy.deepcopy(registry_data)
    data["datasets"]["paul2015_bm_myeloid"]["files"].pop(1)
    with pytest.raises(RegistryError, match=r"paul2015_bm_myeloid.*author_label"):
        load_registry(write(tmp_path, data))


def test_local_path_entry_is_resolved_against_the_registry(tmp_path, registry_data):
    entry = registry_data["datasets"]["paul2015_bm_myeloid"]
    entry["files"] = [{"role": "counts", "path": "mine/counts.h5ad", "format": "h5ad"}]
    entry["author_label"] = None
    registry = load_registry(write(tmp_path, {"datasets": {"mine": entry}}))
    spec = registry["mine"]["files"][0]
    assert spec["path"] == str(tmp_path / "mine" / "counts.h5ad")
    assert spec["filename"] == "counts.h5ad"


def test_select_datasets():
    registry = load_registry(REGISTRY)
    assert select_datasets(registry, "all") == list(registry)
    assert select_datasets(registry, ["paul2015_bm_myeloid"]) == ["paul2015_bm_myeloid"]
    with pytest.raises(RegistryError, match="nope.*known datasets"):
        select_datasets(registry, ["nope"])


def test_config_schema_accepts_the_shipped_config_and_rejects_unknown_keys():
    schema = REPO / "config" / "schemas" / "config.schema.yaml"
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(config, schema_path=schema, what="config")
    config["qc"]["max_pct_mito"] = 5
    with pytest.raises(RegistryError, match=r"qc.*max_pct_mito"):
        validate(config, schema_path=schema, what="config")
    del config["qc"]["max_pct_mito"]
    config["intermediate_compression"] = "zstd"
    with pytest.raises(RegistryError, match=r"intermediate_compression"):
        validate(config, schema_path=schema, what="config")


def test_a_reference_needs_author_labels(tmp_path, registry_data):
    data = copy.deepcopy(registry_data)
    data["datasets"]["shalek2014_bmdc_lps"]["reference"] = True
    with pytest.raises(RegistryError, match=r"shalek2014_bmdc_lps.*reference: true.*author_label"):
        load_registry(write(tmp_path, data))
    registry = load_registry(REGISTRY)
    references = {k: e["species"] for k, e in registry.items() if e.get("reference")}
    assert references == {
        "luecken2021_bmmc_cite": "human",
        "weinreb2020_larry_bm_culture": "mouse",
    }


def test_models_are_validated_and_named_in_errors(tmp_path, registry_data):
    assert load_models(REGISTRY) == {}  # the shipped registry trains its references
    model = {
        "title": "a model",
        "species": "human",
        "source": "a paper",
        "license": "CC BY 4.0",
        "file": {"url": "https://example.org/m/model.pkl", "sha256": None, "format": "celltypist"},
        "label_map": {
            "Classical monocytes": {"lineage": "myeloid", "cell_type": "classical monocyte"}
        },
    }
    data = copy.deepcopy(registry_data) | {"models": {"atlas": model}}
    (spec,) = load_models(write(tmp_path, data))["atlas"]["files"]
    assert (spec["role"], spec["filename"]) == ("model", "model.pkl")
    data["models"] = {"paul2015_bm_myeloid": model}
    with pytest.raises(
        RegistryError, match=r"'paul2015_bm_myeloid' names both a dataset and a model"
    ):
        load_models(write(tmp_path, data))
    bad = copy.deepcopy(model)
    bad["file"]["url"] = "https://example.org/m/model.h5"
    data["models"] = {"atlas": bad}
    with pytest.raises(RegistryError, match=r"model 'atlas'.*model.h5.*\.pkl"):
        load_models(write(tmp_path, data))
    data["models"] = {"atlas": model | {"label_map": {}}}
    with pytest.raises(RegistryError, match=r"model 'atlas'.*label_map"):
        load_models(write(tmp_path, data))
    data["models"] = {"atlas": model | {"file": {"url": "https://example.org/m.pkl"}}}
    with pytest.raises(RegistryError, match=r"models.*atlas"):
        load_models(write(tmp_path, data))


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "datasets.yaml"
    path.write_text("datasets:\n  mine:\n    species: human\n   title: [\n")
    for load in (load_registry, load_models):
        with pytest.raises(RegistryError) as err:
            load(path)
        message = str(err.value)
        assert str(path) in message and "line 4, column 4" in message
        assert "not valid YAML" in message


def test_a_one_of_error_says_what_the_field_takes_not_the_whole_entry(tmp_path, registry_data):
    data = copy.deepcopy(registry_data)
    del data["datasets"]["shalek2014_bmdc_lps"]["files"][0]["url"]
    with pytest.raises(RegistryError) as err:
        load_registry(write(tmp_path, data))
    (line,) = [s for s in str(err.value).splitlines() if "files/0" in s]
    assert "url" in line and "sha256" in line and "path" in line
    assert "lpsdata" not in line  # the entry's values are not dumped
    assert len(line) < 200


def test_each_missing_key_is_named_once(tmp_path, registry_data):
    data = copy.deepcopy(registry_data)
    data["datasets"]["shalek2014_bmdc_lps"]["metadata"] = {"sample": {"constant": "s1"}}
    with pytest.raises(RegistryError) as err:
        load_registry(write(tmp_path, data))
    lines = str(err.value).splitlines()
    for key in ("donor", "condition"):
        assert lines.count(f"  - at datasets/shalek2014_bmdc_lps/metadata/{key}: is required") == 1
