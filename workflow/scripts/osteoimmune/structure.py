"""How the workflow is layered: rules -> rule scripts -> domain modules -> kernels.

Drawn from the code itself: the ``script:`` of every rule in workflow/rules/*.smk (read as
:mod:`osteoimmune.envs` reads them for the conda envs) and the first-party imports of every rule
script and library module, parsed with :mod:`ast`. The layers, which tests/test_structure.py
holds the code to (:func:`problems`):

* a rule script (workflow/scripts/*.py) imports library modules, never another rule script;
* a domain module (``osteoimmune/*.py``) never imports a rule script;
* a kernel (``osteoimmune/kernels/*``) imports only kernels and the :data:`SUPPORT` modules
  (the error types, the numba switch), never domain logic;
* a support module imports no other first-party module;
* no import cycle among the library's modules at module level. An import inside a function
  (drawn dotted) runs only when called, which is how a module takes a back-reference lazily.

``python -m osteoimmune.structure [--check | --write] [--repo DIR]`` writes docs/structure.md
(``--write``) or says whether it is out of date (``--check``, the default; exit status 1).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from osteoimmune.envs import read_rules

REPO = Path(__file__).resolve().parents[3]
PACKAGE = "osteoimmune"
KERNELS = f"{PACKAGE}.kernels"
# Imported by every layer: they hold no logic a layer could depend on the wrong way round.
SUPPORT = (f"{PACKAGE}.errors", f"{PACKAGE}.jit")
DOC = Path("docs") / "structure.md"
SCRIPT = "script:"  # prefix of an import target that is a rule script, not a library module


@dataclass(frozen=True)
class Import:
    """One first-party import of a file: a library module, or a rule script (``script:name``)."""

    target: str
    lazy: bool  # inside a function (or under TYPE_CHECKING): not run when the file is imported
    line: int


@dataclass(frozen=True)
class Structure:
    """The rules, rule scripts and library modules of a checkout, with their imports."""

    rules: dict[str, str]  # rule -> the stem of its script (rules without one are left out)
    scripts: dict[str, list[Import]]  # script stem -> imports
    modules: dict[str, list[Import]]  # module name (osteoimmune.x) -> imports


def layer(module: str) -> str:
    """The layer of a library module: ``kernel``, ``support`` or ``domain``."""
    if module == KERNELS or module.startswith(f"{KERNELS}."):
        return "kernel"
    return "support" if module in SUPPORT else "domain"


def _walk(node: ast.AST, lazy: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node below ``node``, with whether it runs only later (in a function body)."""
    for child in ast.iter_child_nodes(node):
        inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            inner = True
        yield child, inner
        yield from _walk(child, inner)


def _names(node: ast.AST, package: str) -> list[str]:
    """The dotted names an import statement may bind: ``a.b`` and, for a from-import, ``a.b.c``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def file_imports(path: Path, *, module: str, package_dir: Path, scripts: set[str]) -> list[Import]:
    """The first-party imports of a file: library modules and rule scripts, by line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[tuple[str, int], Import] = {}
    for node, lazy in _walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        for name in _names(node, package):
            target = _resolve(name, package_dir=package_dir, scripts=scripts)
            if target and target != module:
                found.setdefault((target, node.lineno), Import(target, lazy, node.lineno))
                if not isinstance(node, ast.Import):
                    break  # `from a import b`: module a.b if it is one, else a itself
    return sorted(found.values(), key=lambda i: (i.line, i.target))


def _resolve(name: str, *, package_dir: Path, scripts: set[str]) -> str | None:
    top = name.split(".")[0]
    if top in scripts:
        return f"{SCRIPT}{top}"
    if top != PACKAGE:
        return None
    base = package_dir.joinpath(*name.split(".")[1:])
    exists = base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()
    return name if exists else None


def module_name(path: Path, package_dir: Path) -> str:
    """``osteoimmune.kernels.ranks`` for ``<package_dir>/kernels/ranks.py``."""
    parts = path.relative_to(package_dir).with_suffix("").parts
    return ".".join([PACKAGE, *(p for p in parts if p != "__init__")])


def read_structure(repo: Path = REPO) -> Structure:
    """Read the rules, rule scripts and library modules of the checkout at ``repo``."""
    scripts_dir = repo / "workflow" / "scripts"
    package_dir = scripts_dir / PACKAGE
    scripts = {p.stem for p in scripts_dir.glob("*.py")}
    read = {"package_dir": package_dir, "scripts": scripts}
    rules = {
        rule.name: rule.script.stem
        for rule in read_rules(repo / "workflow" / "rules")
        if rule.script is not None and rule.script.parent == scripts_dir
    }
    return Structure(
        rules=rules,
        scripts={
            p.stem: file_imports(p, module=p.stem, **read) for p in sorted(scripts_dir.glob("*.py"))
        },
        modules={
            name: file_imports(p, module=name, **read)
            for p in sorted(package_dir.rglob("*.py"))
            # the package's own __init__ holds only its version
            if (name := module_name(p, package_dir)) != PACKAGE
        },
    )


def cycles(structure: Structure, *, lazy: bool = False) -> list[list[str]]:
    """The import cycles among library modules, each as its sorted modules.

    Module-level imports only, unless ``lazy``: then imports inside functions count too.
    """
    graph = {
        m: {i.target for i in imports if (lazy or not i.lazy) and i.target in structure.modules}
        for m, imports in structure.modules.items()
    }
    found, done = [], set()
    for start in sorted(graph):
        reach = _reachable(graph, start)
        if start in reach and start not in done:
            members = sorted(m for m in reach if start in _reachable(graph, m))
            done.update(members)
            found.append(members)
    return found


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph[start])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def problems(structure: Structure) -> list[str]:
    """Every import that breaks a layer (see the module docstring), and every import cycle."""
    found = [
        f"rule script {stem}.py (line {i.line}) imports the rule script {i.target[len(SCRIPT) :]}"
        for stem, imports in structure.scripts.items()
        for i in imports
        if i.target.startswith(SCRIPT)
    ]
    allowed = {"domain": None, "kernel": ("kernel", "support"), "support": ()}
    for module, imports in structure.modules.items():
        kind = layer(module)
        for i in imports:
            if i.target.startswith(SCRIPT):
                found.append(f"{kind} module {module} (line {i.line}) imports a rule script")
            elif allowed[kind] is not None and layer(i.target) not in allowed[kind]:
                found.append(
                    f"{kind} module {module} (line {i.line}) imports the {layer(i.target)} "
                    f"module {i.target}"
                )
    found += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(structure)]
    return found


def _short(module: str) -> str:
    return module.removeprefix(f"{PACKAGE}.")


def _node(name: str) -> str:
    return name.replace(".", "_").replace(":", "_")


def mermaid(structure: Structure) -> list[str]:
    """The Mermaid flowchart: rules -> scripts -> domain modules -> kernels.

    The support modules and the edges to them are left out (every layer raises the package's
    errors); so are imports between domain modules, listed in the table of :func:`render`.
    """
    lines = ["```mermaid", "flowchart LR"]
    groups = {
        "rules": [(f"rule_{r}", r) for r in sorted(structure.rules)],
        "scripts": [(f"script_{s}", f"{s}.py") for s in sorted(structure.scripts)],
        "domain": [
            (_node(m), _short(m)) for m in sorted(structure.modules) if layer(m) == "domain"
        ],
        "kernels": [
            (_node(m), _short(m)) for m in sorted(structure.modules) if layer(m) == "kernel"
        ],
    }
    titles = {
        "rules": "rules: workflow/rules/*.smk",
        "scripts": "rule scripts: workflow/scripts/*.py",
        "domain": "domain modules: osteoimmune/*.py",
        "kernels": "kernels: osteoimmune/kernels/*.py",
    }
    for key, nodes in groups.items():
        lines.append(f'  subgraph {key}["{titles[key]}"]')
        lines += [f'    {node}["{label}"]' for node, label in nodes]
        lines.append("  end")
    lines += [f"  rule_{r} --> script_{s}" for r, s in sorted(structure.rules.items())]
    lines += _edges(structure, keep=lambda source, target: layer(target) != "support", scripts=True)
    lines += _edges(
        structure,
        keep=lambda source, target: layer(source) == "domain" and layer(target) == "kernel",
    )
    return [*lines, "```"]


def _edges(structure: Structure, *, keep, scripts: bool = False) -> list[str]:
    files = structure.scripts if scripts else structure.modules
    lines = []
    for source, imports in sorted(files.items()):
        node = f"script_{source}" if scripts else _node(source)
        targets = {}
        for i in imports:
            if i.target in structure.modules and keep(source, i.target):
                targets[i.target] = targets.get(i.target, True) and i.lazy
        for target, lazy in sorted(targets.items()):
            lines.append(f"  {node} {'-.->' if lazy else '-->'} {_node(target)}")
    return lines


def render(structure: Structure) -> str:
    """docs/structure.md: the drawing, then every library module with its imports."""
    imported_by: dict[str, set[str]] = {m: set() for m in structure.modules}
    for source, imports in [*structure.scripts.items(), *structure.modules.items()]:
        for i in imports:
            if i.target in imported_by:
                imported_by[i.target].add(f"{source}.py" if source in structure.scripts else source)
    rows = [
        f"| {_short(m)} | {layer(m)} | {_list(structure.modules[m])} | "
        f"{', '.join(sorted(map(_short, imported_by[m]))) or '-'} |"
        for m in sorted(structure.modules, key=lambda m: (layer(m), m))
    ]
    return "\n".join(
        [
            "# Structure",
            "",
            "Generated by `python -m osteoimmune.structure --write` from the rules' `script:`",
            "lines and the imports of the scripts and modules; `tests/test_structure.py` checks",
            "that it is up to date and that the layers hold (`osteoimmune/structure.py`).",
            "",
            "Rules run rule scripts; a script imports domain modules (and may call a kernel);",
            "domain modules import each other and the kernels; kernels import only kernels.",
            "Every layer may import the support modules (`errors`, `jit`), not drawn. A dotted",
            "arrow is an import inside a function.",
            "",
            *mermaid(structure),
            "",
            "| module | layer | imports (first-party; *lazy* inside a function) | imported by |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )


def _list(imports: Sequence[Import]) -> str:
    names: dict[str, bool] = {}
    for i in imports:
        names[i.target] = names.get(i.target, True) and i.lazy
    shown = [f"*{_short(t)}*" if lazy else _short(t) for t, lazy in sorted(names.items())]
    return ", ".join(shown) or "-"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m osteoimmune.structure", description=__doc__.split("\n\n")[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report drift (default)")
    mode.add_argument("--write", action="store_true", help=f"write {DOC}")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="the repository (default: this one)"
    )
    args = parser.parse_args(argv)
    structure = read_structure(args.repo)
    for problem in problems(structure):
        print(problem, file=sys.stderr)
    path, text = args.repo / DOC, render(structure)
    if args.write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {DOC}")
    elif not path.is_file() or path.read_text() != text:
        print(f"{DOC} is out of date: run python -m osteoimmune.structure --write", file=sys.stderr)
        return 1
    return 1 if problems(structure) else 0


if __name__ == "__main__":
    sys.exit(main())
