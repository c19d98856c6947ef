"""The rules' conda envs install what their scripts import, at the versions of the pip lock."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import REPO
from packaging.utils import canonicalize_name

from osteoimmune import envs
from osteoimmune.report import PACKAGES

LOCK = envs.read_lock(REPO / "envs" / "requirements.lock")
RULES = {rule.name: rule for rule in envs.read_rules(REPO / "workflow" / "rules")}
PACKAGE_DIR = REPO / "workflow" / "scripts" / "osteoimmune"


def listed(env: Path) -> dict[str, str | None]:
    entries, problems = envs.read_env(env)
    assert problems == []
    return {name: version for name, (_, version) in entries.items()}


def test_every_rule_env_covers_its_imports_at_the_lock_versions():
    assert [str(problem) for problem in envs.check(REPO)] == []


def test_every_rule_with_a_script_has_an_env():
    scripted = [rule for rule in RULES.values() if rule.script is not None]
    text = "".join(path.read_text() for path in (REPO / "workflow" / "rules").glob("*.smk"))
    assert len(scripted) == len(re.findall(r"^\s+script:", text, flags=re.M)) >= 18
    for rule in scripted:
        assert rule.script.is_file(), rule
        assert rule.env is not None and rule.env.is_file(), rule


@pytest.mark.parametrize(
    ("rule", "distribution", "why"),
    [
        ("read_dataset", "pooch", "osteoimmune.fetch imports pooch"),
        ("read_dataset", "requests", "osteoimmune.fetch imports requests"),
        ("enrichment", "gseapy", "osteoimmune.enrichment imports gseapy"),
        ("fetch_dataset", "requests", "osteoimmune.fetch imports requests"),
        ("infer_communication", "liana", "osteoimmune.communication imports liana"),
        ("cluster_cells", "harmonypy", "osteoimmune.cluster uses it at run time"),
        ("report_dataset", "pydeseq2", "osteoimmune.pseudobulk imports pydeseq2"),
    ],
)
def test_library_imports_reach_the_rule_env(rule, distribution, why):
    """The walk follows osteoimmune modules; the env pins what they import to the lock."""
    needs = envs.script_needs(RULES[rule].script, PACKAGE_DIR)
    assert why in needs.distributions[distribution]
    assert listed(RULES[rule].env)[distribution] == LOCK[distribution][1]


def test_every_pin_is_the_locks():
    for env in sorted((REPO / "envs").glob("*.yaml")):
        versions = listed(env)
        assert versions.pop("python") == envs.PYTHON, env
        versions.pop("pip")
        assert versions, env
        for name, version in versions.items():
            assert version == LOCK[name][1], (env.name, name, version)


def test_report_envs_have_every_package_the_report_lists():
    """Under --use-conda the report lists the versions installed in its own env."""
    reporting = [
        rule
        for rule in RULES.values()
        if rule.script
        and "osteoimmune.report" in envs.script_needs(rule.script, PACKAGE_DIR).modules
    ]
    assert {rule.name for rule in reporting} >= {"report_dataset", "report_index"}
    names = [canonicalize_name(name) for name in PACKAGES]
    assert {"scanpy", "leidenalg", "harmonypy"} <= set(names)
    for rule in reporting:
        versions = listed(rule.env)
        for name in names:
            if name in ("osteoimmune", *envs.PROVIDED):
                continue  # the workflow's own code and Snakemake are on every job's sys.path
            assert versions.get(name) == LOCK[name][1], (rule.name, name)


# A tiny repository: one rule whose script reaches a package module that imports requests
# inside a function and yaml through importlib; its env installs only tqdm.
RULE_FILE = """\
rule demo:
    input:
        "in.txt",
    conda:
        "../../envs/demo.yaml"
    script:
        "../scripts/demo.py"
"""
SCRIPT = "from osteoimmune.net import get\n\nget(snakemake.input[0])\n"
MODULE = """\
import importlib


def get(url):
    import requests

    importlib.import_module("yaml")
    return requests.get(url)
"""


def tiny_repo(root: Path, env_pins: list[str]) -> Path:
    (root / "envs").mkdir()
    shutil.copy(REPO / "envs" / "requirements.lock", root / "envs" / "requirements.lock")
    pins = "".join(f"      - {pin}\n" for pin in env_pins)
    (root / "envs" / "demo.yaml").write_text(
        f"channels:\n  - conda-forge\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n{pins}"
    )
    (root / "workflow" / "rules").mkdir(parents=True)
    (root / "workflow" / "rules" / "demo.smk").write_text(RULE_FILE)
    package = root / "workflow" / "scripts" / "osteoimmune"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "net.py").write_text(MODULE)
    (root / "workflow" / "scripts" / "demo.py").write_text(SCRIPT)
    return root


def test_check_names_the_rule_env_and_missing_distribution(tmp_path):
    repo = tiny_repo(tmp_path, [f"tqdm=={LOCK['tqdm'][1]}"])
    problems = envs.check(repo)
    missing = [p for p in problems if p.rule == "demo" and p.distribution == "requests"]
    assert len(missing) == 1
    assert missing[0].env == "envs/demo.yaml"
    text = str(missing[0])
    assert "envs/demo.yaml" in text and "rule demo" in text and "requests" in text
    assert "osteoimmune.net imports requests" in text
    # importlib.import_module("yaml") is an import too
    assert any(p.rule == "demo" and p.distribution == "pyyaml" for p in problems)
    # tqdm is pinned right but nothing needs it: the env is not what --write makes
    assert any("--write" in p.message for p in problems)


def test_check_reports_a_pin_that_is_not_the_locks(tmp_path):
    assert LOCK["requests"][1] != "2.32.3"
    repo = tiny_repo(tmp_path, ["requests==2.32.3", "PyYAML"])
    messages = [str(p) for p in envs.check(repo)]
    assert f"envs/demo.yaml: 'requests==2.32.3' is not the lock's {LOCK['requests'][1]}" in (
        messages
    )
    assert f"envs/demo.yaml: 'PyYAML' is not the lock's {LOCK['pyyaml'][1]}" in messages


def test_write_generates_the_env_from_the_lock(tmp_path):
    repo = tiny_repo(tmp_path, [])
    assert envs.write(repo) == [repo / "envs" / "demo.yaml"]
    assert envs.check(repo) == []
    versions = listed(repo / "envs" / "demo.yaml")
    # requests and yaml, then everything requests requires, each at the lock's version
    assert set(versions) == {
        *("python", "pip", "requests", "pyyaml"),
        *("certifi", "charset-normalizer", "idna", "urllib3"),
    }
    assert all(
        versions[name] == LOCK[name][1] for name in versions if name not in {"python", "pip"}
    )
    assert "Rules: demo." in (repo / "envs" / "demo.yaml").read_text()
    assert envs.write(repo) == []  # nothing to change the second time


def test_rules_parser_reads_same_line_and_next_line_directives(tmp_path):
    (tmp_path / "a.smk").write_text(
        textwrap.dedent(
            """\
            rule one:
                conda: "envs/one.yaml"
                script: "scripts/one.py"


            def helper():
                return 1


            checkpoint two:
                output:
                    "x",
                conda:
                    # the env
                    "envs/two.yaml"
                shell:
                    "true"
            """
        )
    )
    rules = envs.read_rules(tmp_path)
    tmp_path = tmp_path.resolve()
    assert [(r.name, r.env, r.script) for r in rules] == [
        ("one", tmp_path / "envs" / "one.yaml", tmp_path / "scripts" / "one.py"),
        ("two", tmp_path / "envs" / "two.yaml", None),
    ]
