"""The layers hold (rules -> rule scripts -> domain modules -> kernels); the drawing is current."""

from pathlib import Path

import pytest

from osteoimmune.structure import (
    DOC,
    REPO,
    SCRIPT,
    cycles,
    layer,
    main,
    problems,
    read_structure,
    render,
)


@pytest.fixture(scope="module")
def structure():
    return read_structure(REPO)


def _targets(imports) -> set[str]:
    return {i.target for i in imports}


def test_the_structure_is_read_from_the_rules_and_imports(structure):
    # Not vacuous: the rules, scripts and a few known imports are found.
    assert structure.rules["filter_cells"] == "filter_cells"
    assert structure.rules["fetch_sample"] == "fetch_dataset"  # two rules share a script
    assert "osteoimmune.qc" in _targets(structure.scripts["filter_cells"])
    assert "osteoimmune.kernels.scrublet" in _targets(structure.modules["osteoimmune.qc"])
    assert layer("osteoimmune.kernels.hvg") == "kernel" and layer("osteoimmune.qc") == "domain"
    assert layer("osteoimmune.errors") == "support"


def test_rule_scripts_import_library_modules_never_other_scripts(structure):
    scripts = {s: _targets(imports) for s, imports in structure.scripts.items()}
    bad = {s: sorted(t for t in targets if t.startswith(SCRIPT)) for s, targets in scripts.items()}
    assert {s: t for s, t in bad.items() if t} == {}
    # each one is an adapter: it calls the library
    assert all(any(t.startswith("osteoimmune.") for t in targets) for targets in scripts.values())
    assert set(structure.rules.values()) <= set(scripts)


def test_domain_modules_never_import_rule_scripts(structure):
    bad = {
        module: sorted(t for t in _targets(imports) if t.startswith(SCRIPT))
        for module, imports in structure.modules.items()
    }
    assert {m: t for m, t in bad.items() if t} == {}


def test_kernels_import_only_kernels_and_support_modules(structure):
    kernels = {m: _targets(i) for m, i in structure.modules.items() if layer(m) == "kernel"}
    assert len(kernels) >= 7
    bad = {m: sorted(t for t in targets if layer(t) == "domain") for m, targets in kernels.items()}
    assert {m: t for m, t in bad.items() if t} == {}
    support = {m: _targets(i) for m, i in structure.modules.items() if layer(m) == "support"}
    assert support == {"osteoimmune.errors": set(), "osteoimmune.jit": set()}


def test_no_import_cycle_among_modules(structure):
    assert cycles(structure) == []
    # nor through imports inside functions (archives is given the readers' reader instead)
    assert cycles(structure, lazy=True) == []
    assert problems(structure) == []


def test_docs_structure_is_up_to_date(structure):
    assert (REPO / DOC).read_text() == render(structure), (
        "docs/structure.md is out of date: run python -m osteoimmune.structure --write"
    )


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


CLEAN = {
    "workflow/rules/stage.smk": 'rule run_stage:\n    script:\n        "../scripts/run_stage.py"\n',
    "workflow/scripts/run_stage.py": "from osteoimmune.stage import work\n",
    "workflow/scripts/osteoimmune/__init__.py": "",
    "workflow/scripts/osteoimmune/errors.py": "",
    "workflow/scripts/osteoimmune/stage.py": "from osteoimmune.kernels.fast import fast\n",
    "workflow/scripts/osteoimmune/kernels/__init__.py": "",
    "workflow/scripts/osteoimmune/kernels/fast.py": "from osteoimmune.errors import E\n",
}


def test_check_and_write_the_drawing(tmp_path, capsys):
    _write(tmp_path, CLEAN)
    assert main(["--repo", str(tmp_path)]) == 1  # no docs/structure.md yet
    assert "out of date" in capsys.readouterr().err
    assert main(["--write", "--repo", str(tmp_path)]) == 0
    text = (tmp_path / DOC).read_text()
    assert "rule_run_stage --> script_run_stage" in text
    assert "script_run_stage --> osteoimmune_stage" in text
    assert "osteoimmune_stage --> osteoimmune_kernels_fast" in text
    assert main(["--repo", str(tmp_path)]) == 0
    _write(tmp_path, {"workflow/scripts/run_stage.py": "import osteoimmune.errors\n"})
    assert main(["--repo", str(tmp_path)]) == 1


def test_broken_layers_and_cycles_are_named(tmp_path):
    _write(tmp_path, CLEAN)
    _write(
        tmp_path,
        {
            "workflow/scripts/other.py": "import run_stage\n",
            "workflow/scripts/osteoimmune/kernels/fast.py": "from osteoimmune import late\n",
            "workflow/scripts/osteoimmune/late.py": "def f():\n    import run_stage\n",
            "workflow/scripts/osteoimmune/a.py": "import osteoimmune.b\n",
            "workflow/scripts/osteoimmune/b.py": "from osteoimmune.a import x\n",
        },
    )
    found = problems(read_structure(tmp_path))
    assert found == [
        "rule script other.py (line 1) imports the rule script run_stage",
        "kernel module osteoimmune.kernels.fast (line 1) imports the domain module "
        "osteoimmune.late",
        "domain module osteoimmune.late (line 2) imports a rule script",
        "import cycle: osteoimmune.a -> osteoimmune.b",
    ]
