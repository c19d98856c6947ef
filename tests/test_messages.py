"""Bad configuration is reported in a few lines that name the key, the file and what to do.

The library's checks are tested on their own; the workflow-level tests run ``snakemake -n`` on
the repository's Snakefile in a temporary working directory and read its error output.
"""

import pytest
import yaml
from conftest import REPO, snakemake

from osteoimmune.configcheck import check_user_sets, describe_config_errors
from osteoimmune.errors import RegistryError

SCHEMA = REPO / "config" / "schemas" / "config.schema.yaml"
CONFIG = REPO / "config" / "config.yaml"


@pytest.fixture
def config() -> dict:
    """The shipped config, as YAML data."""
    return yaml.safe_load(CONFIG.read_text())


def error_lines(result) -> list[str]:
    """Snakemake's error output from its error line on, without blank lines (Snakemake 9
    logs to stdout when that is not a terminal)."""
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "Error" in line), len(lines))
    return lines[start:]


# --------------------------------------------------------------------------- the library


def test_the_shipped_config_has_no_errors(config):
    assert describe_config_errors(config, schema_path=SCHEMA) == ""


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c.update(seed="abc"), 'seed = "abc": must be an integer >= 0'),
        (lambda c: c["qc"].update(min_genes=-1), "qc.min_genes = -1: must be an integer >= 0"),
        (
            lambda c: c["cluster"].update(batch_key="donors"),
            'cluster.batch_key = "donors": must be one of "sample", "donor"',
        ),
        (
            lambda c: c["cluster"].update(resolutions=[0.5, "fine"]),
            'cluster.resolutions[1] = "fine": must be a number > 0',
        ),
        (
            lambda c: c.update(datasets="bogus"),
            'datasets = "bogus": must be one of "default", "all" or a list of non-empty strings',
        ),
        (
            lambda c: c["qc"].update(min_gens=3),
            "qc.min_gens = 3: is not a known key (did you mean min_genes?)",
        ),
        (lambda c: c["qc"].pop("nmads"), "qc.nmads: is required"),
    ],
    ids=["type", "minimum", "enum", "list-item", "one-of", "unknown-key", "missing-key"],
)
def test_a_config_error_names_key_value_and_rule(config, edit, expected):
    edit(config)
    message = describe_config_errors(config, schema_path=SCHEMA)
    assert expected in message
    assert len(message.splitlines()) == 3
    assert "Failed validating" not in message and "schema[" not in message


def test_every_config_error_is_listed_once(config):
    config["seed"] = -1
    config["offline"] = "no"
    message = describe_config_errors(config, schema_path=SCHEMA)
    assert "offline = " in message and "seed = -1" in message
    assert len(message.splitlines()) == 4


def test_a_missing_user_signature_file_names_key_path_and_fix(tmp_path):
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "mine.gmt").write_text("a\tdesc\tCD14\n")
    sets = [{"path": "sets/mine.gmt", "species": "human"}, {"path": "sets/typo.yaml"}]
    with pytest.raises(RegistryError) as err:
        check_user_sets(sets, workdir=tmp_path)
    message = str(err.value)
    assert "signatures.user_sets[1].path" in message
    assert str(tmp_path / "sets" / "typo.yaml") in message
    assert "working directory" in message
    check_user_sets(sets[:1], workdir=tmp_path)  # a relative path is found from workdir


def test_a_user_signature_file_with_bad_yaml_names_its_line(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("sets:\n  my_set:\n    genes: [CD14\n    description: x\n")
    with pytest.raises(RegistryError) as err:
        check_user_sets([{"path": str(path)}], workdir=tmp_path)
    message = str(err.value)
    assert str(path) in message and "line 4" in message
    assert "signatures.user_sets[0]" in message


def test_a_gmt_user_set_needs_its_species(tmp_path):
    path = tmp_path / "mine.gmt"
    path.write_text("a\tdesc\tCD14\n")
    with pytest.raises(RegistryError, match=r"signatures.user_sets\[0\].*species"):
        check_user_sets([{"path": str(path)}], workdir=tmp_path)


# --------------------------------------------------------------------------- the workflow


def test_a_bad_config_value_stops_the_workflow_in_a_few_lines(tmp_path):
    result = snakemake(tmp_path / "run", "seed=abc", options=["-n"])
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) <= 5, lines
    assert any('seed = "abc": must be an integer >= 0' in line for line in lines)


def test_a_config_file_typo_stops_the_workflow_in_a_few_lines(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text("qc:\n  min_gens: 3\n")
    result = snakemake(
        tmp_path / "run", "seed=1", options=["-n", "--configfile", str(CONFIG), str(extra)]
    )
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) <= 5, lines
    assert any(
        "qc.min_gens = 3: is not a known key (did you mean min_genes?)" in line for line in lines
    )


def test_a_registry_yaml_syntax_error_names_file_and_line(tmp_path):
    registry = tmp_path / "datasets.yaml"
    registry.write_text("datasets:\n  mine:\n    species: human\n   title: [\n")
    result = snakemake(tmp_path / "run", f"registry={registry}", options=["-n"])
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) <= 10, lines
    assert any(str(registry) in line and "line 4" in line for line in lines), lines
    assert "yaml/parser.py" not in result.stdout + result.stderr


def test_a_missing_user_signature_file_stops_the_workflow_before_any_job(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text("signatures:\n  user_sets:\n    - path: sets/mine.yaml\n")
    workdir = tmp_path / "run"
    result = snakemake(workdir, "seed=1", options=["-n", "--configfile", str(CONFIG), str(extra)])
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) <= 5, lines
    text = "\n".join(lines)
    assert "signatures.user_sets[0].path" in text
    assert str(workdir / "sets" / "mine.yaml") in text
