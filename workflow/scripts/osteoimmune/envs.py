"""The rules' conda envs (envs/*.yaml), generated from the pip lock and checked against it.

Under ``snakemake --use-conda`` each rule's script runs in the env named by its ``conda:``
directive, so that env must install everything the script imports, at the versions of
envs/requirements.lock (the one source of truth, also installed by ``make setup``). This module

* reads every rule of workflow/rules/*.smk (its ``script:`` and ``conda:`` paths);
* walks the imports of the script and of every ``osteoimmune`` module it reaches, statically
  with :mod:`ast` and transitively, including imports inside functions and
  ``importlib.import_module("literal")`` calls;
* maps import names to distributions (``importlib.metadata.packages_distributions()`` of the
  running environment, which ``make setup`` installs from the lock), adds what those modules
  load at run time without an import (:data:`RUNTIME_NEEDS`, and the distributions a module
  names in a ``PACKAGES`` tuple to report their versions), then every dependency of those
  distributions (their installed metadata);
* writes each env as ``python=3.11`` plus a pip section pinning exactly that set to the lock's
  versions (``--write``), or reports every way an env differs (``--check``, the default): a
  distribution a rule needs and its env lacks, a version that is not the lock's, an entry the
  lock does not have, an env that is not what ``--write`` generates.

Run ``python -m osteoimmune.envs [--check | --write] [--repo DIR]``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import re
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[3]
PACKAGE = "osteoimmune"
PYTHON = "3.11"  # the lock is resolved with Python 3.11 (make lock)
CHANNELS = ("conda-forge", "nodefaults")

# Distributions a module uses at run time without importing them (scanpy loads them inside the
# functions called): leiden with flavor="igraph", harmony_integrate, HVG flavor="seurat_v3".
RUNTIME_NEEDS = {
    "osteoimmune.cluster": ("igraph", "harmonypy", "scikit-misc"),
    "osteoimmune.qc": ("igraph",),
}
# Distributions an env never installs: Snakemake puts its own installation on the sys.path of
# every script job, so the job imports (and reports) the Snakemake that runs the workflow.
PROVIDED = ("snakemake",)
# conda-forge names of lock distributions whose conda name differs (only read, never written).
CONDA_NAMES = {"python-igraph": "igraph"}

_RULE = re.compile(r"^(?:rule|checkpoint)\s+(\w+)\s*:")
_DIRECTIVE = re.compile(r"^\s+(conda|script)\s*:\s*(.*)$")
_STRING = re.compile(r"""^\s*(?:r?)(["'])([^"']+)\1\s*,?\s*(?:#.*)?$""")
_SPEC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:(==|=|>=|<=|>|<|!=|~=)\s*(\S+))?$")


@dataclass(frozen=True)
class Rule:
    """A rule of workflow/rules/*.smk with its script and conda env (absolute paths or None)."""

    name: str
    smk: Path
    script: Path | None
    env: Path | None


@dataclass(frozen=True)
class Problem:
    """One way an env differs from what its rules need or from the lock."""

    env: str  # the env file, relative to the repository
    message: str
    rule: str | None = None
    distribution: str | None = None  # canonical name

    def __str__(self) -> str:
        return f"{self.env}: {self.message}"


@dataclass
class Needs:
    """What a script needs: distribution -> why (import or run-time use), and unknown imports."""

    distributions: dict[str, list[str]] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)  # the osteoimmune modules reached


def read_lock(path: Path) -> dict[str, tuple[str, str]]:
    """The lock as canonical name -> (name as spelled in the lock, version)."""
    lock = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ValueError(f"{path}: {line!r} is not pinned with ==")
        lock[canonicalize_name(name.strip())] = (name.strip(), version.strip())
    return lock


def read_rules(rules_dir: Path) -> list[Rule]:
    """Every rule/checkpoint of ``rules_dir/*.smk`` with its ``script:`` and ``conda:`` paths.

    Both paths are string literals relative to the .smk file, as Snakemake resolves them; a
    directive whose value is not a literal is returned as the path ``<not a literal: ...>``.
    """
    rules = []
    for smk in sorted(Path(rules_dir).glob("*.smk")):
        current: dict | None = None
        pending: str | None = None
        for line in smk.read_text().splitlines():
            if match := _RULE.match(line):
                if current:
                    rules.append(Rule(**current))
                current = {"name": match[1], "smk": smk, "script": None, "env": None}
                pending = None
                continue
            if current is None:
                continue
            if line and not line[0].isspace() and not line.startswith("#"):
                rules.append(Rule(**current))
                current, pending = None, None
                continue
            value = None
            if match := _DIRECTIVE.match(line):
                key, rest = match[1], match[2].strip()
                if rest and not rest.startswith("#"):
                    value = rest
                else:
                    pending = key
                    continue
            elif pending and line.strip() and not line.strip().startswith("#"):
                key, value, pending = pending, line.strip(), None
            if value is not None:
                literal = _STRING.match(value)
                path = (
                    (smk.parent / literal[2]).resolve()
                    if literal
                    else Path(f"<not a literal: {value}>")
                )
                current["env" if key == "conda" else "script"] = path
        if current:
            rules.append(Rule(**current))
    return rules


def _imports(path: Path, module: str | None) -> tuple[list[str], list[str]]:
    """Modules imported anywhere in a file (absolute names), and its PACKAGES names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0] if module else ""
    names, packages = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base = parts[: len(parts) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.append(prefix)
            names += [f"{prefix}.{alias.name}" for alias in node.names if alias.name != "*"]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.append(node.args[0].value)
        elif isinstance(node, ast.Assign) and node in tree.body:
            if any(isinstance(t, ast.Name) and t.id == "PACKAGES" for t in node.targets):
                value = ast.literal_eval(node.value)
                packages += [v for v in value if isinstance(v, str)]
    return [n for n in names if n], packages


def _module_file(module: str, package_dir: Path) -> Path | None:
    """The file of a first-party module (``osteoimmune.x``), or None if it is a name in one."""
    parts = module.split(".")[1:]
    base = package_dir.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def script_needs(
    script: Path, package_dir: Path, top_levels: dict[str, list[str]] | None = None
) -> Needs:
    """The distributions a script needs: its imports and those of the package modules it reaches.

    ``top_levels`` maps import names to distributions (default: the running environment's).
    """
    top_levels = importlib.metadata.packages_distributions() if top_levels is None else top_levels
    stdlib = set(sys.stdlib_module_names)
    needs = Needs()

    def need(distribution: str, why: str) -> None:
        reasons = needs.distributions.setdefault(canonicalize_name(distribution), [])
        if why not in reasons:
            reasons.append(why)

    seen: set[Path] = set()
    queue: list[tuple[Path, str | None]] = [(Path(script), None)]
    while queue:
        path, module = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        if module:
            needs.modules.append(module)
        where = module or path.name
        imported, packages = _imports(path, module)
        for name in packages:
            if name != PACKAGE and canonicalize_name(name) not in PROVIDED:
                need(name, f"{where} reports its version")
        for name in RUNTIME_NEEDS.get(module or "", ()):
            need(name, f"{where} uses it at run time")
        for name in imported:
            top = name.split(".")[0]
            if top == PACKAGE:
                parts = name.split(".")
                for depth in range(1, len(parts) + 1):  # a package runs its __init__ first
                    sub = ".".join(parts[:depth])
                    if (file := _module_file(sub, package_dir)) is not None:
                        queue.append((file, sub))
            elif top in stdlib or top == "__future__":
                continue
            elif top in top_levels:
                for distribution in dict.fromkeys(top_levels[top]):
                    need(distribution, f"{where} imports {top}")
            elif f"{where} imports {top}" not in needs.unknown:
                needs.unknown.append(f"{where} imports {top}")
    return needs


def closure(
    distributions: Iterable[str], lock: dict[str, tuple[str, str]]
) -> tuple[dict[str, str], list[str]]:
    """Distributions and all they require (installed metadata, this platform's markers).

    Returns canonical name -> who required it first ("" for the given ones), and problems (a
    distribution that is not installed here).
    """
    found: dict[str, str] = {}
    extras: dict[str, set[str]] = {}
    problems: list[str] = []
    queue = [(canonicalize_name(d), frozenset(), "") for d in distributions]
    while queue:
        name, wanted, parent = queue.pop(0)
        if name in found and wanted <= extras[name]:
            continue
        found.setdefault(name, parent)
        extras[name] = extras.get(name, set()) | set(wanted)
        try:
            requires = importlib.metadata.distribution(lock.get(name, (name,))[0]).requires
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed here (make setup), so its needs are unknown")
            continue
        for text in requires or ():
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(
                marker.evaluate({"extra": extra}) for extra in {""} | extras[name]
            ):
                queue.append(
                    (canonicalize_name(requirement.name), frozenset(requirement.extras), name)
                )
    return found, problems


def _reasons(reasons: Sequence[str], shown: int = 2) -> str:
    more = len(reasons) - shown
    return "; ".join(reasons[:shown]) + (f"; {more} more" if more > 0 else "")


def _relative(path: Path, repo: Path) -> str:
    try:
        return str(path.relative_to(repo))
    except ValueError:
        return str(path)


def read_env(path: Path) -> tuple[dict[str, tuple[str, str | None]], list[str]]:
    """An env's entries: canonical name -> (entry as written, exact version or None)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    entries: dict[str, tuple[str, str | None]] = {}
    problems: list[str] = []

    def add(spec: str, pip: bool) -> None:
        match = _SPEC.match(spec.split("#", 1)[0].strip())
        if not match:
            problems.append(f"cannot read the entry {spec!r}")
            return
        name, op, version = match.groups()
        name = name if pip else CONDA_NAMES.get(name.lower(), name)
        exact = version if op in (("==",) if pip else ("=", "==")) else None
        if op and exact is None:
            problems.append(f"{spec!r} is not an exact pin")
        entries[canonicalize_name(name)] = (spec, exact)

    for dependency in data.get("dependencies") or []:
        if isinstance(dependency, dict):
            for spec in dependency.get("pip") or []:
                add(str(spec), pip=True)
        else:
            add(str(dependency), pip=False)
    return entries, problems


def env_needs(
    rules: Sequence[Rule], package_dir: Path, lock: dict[str, tuple[str, str]]
) -> tuple[dict[Path, dict[str, str]], dict[Path, list[Rule]], list[tuple[Rule, Needs]]]:
    """Per env: every distribution it must install (-> why), its rules, and each rule's needs."""
    top_levels = importlib.metadata.packages_distributions()
    by_env: dict[Path, dict[str, str]] = {}
    rules_of: dict[Path, list[Rule]] = {}
    per_rule = []
    for rule in rules:
        if rule.script is None or rule.env is None or not rule.script.is_file():
            continue
        needs = script_needs(rule.script, package_dir, top_levels)
        per_rule.append((rule, needs))
        rules_of.setdefault(rule.env, []).append(rule)
        wanted = by_env.setdefault(rule.env, {})
        for distribution, reasons in needs.distributions.items():
            wanted.setdefault(distribution, f"rule {rule.name}: {reasons[0]}")
    for wanted in by_env.values():
        full, _ = closure(wanted, lock)
        for distribution, parent in full.items():
            if distribution not in PROVIDED:
                wanted.setdefault(distribution, f"required by {parent}")
    return by_env, rules_of, per_rule


def render_env(rules: Sequence[Rule], distributions: Iterable[str], lock) -> str:
    """The text of a generated env: python, pip, and the distributions at the lock's versions."""
    names = ", ".join(rule.name for rule in rules)
    lines = [
        "# Generated from envs/requirements.lock by `python -m osteoimmune.envs --write`; do not",
        "# edit (tests/test_envs.py fails when it differs). Every package is pip-installed at the",
        "# lock's version: what the rules' scripts and the osteoimmune modules they reach import,",
        "# what those modules load at run time, and everything those packages require.",
        *textwrap.wrap(f"Rules: {names}.", 98, initial_indent="# ", subsequent_indent="# "),
        "channels:",
        *(f"  - {channel}" for channel in CHANNELS),
        "dependencies:",
        f"  - python={PYTHON}",
        "  - pip",
        "  - pip:",
    ]
    for name in sorted(distributions, key=lambda d: canonicalize_name(d)):
        spelling, version = lock[name]
        lines.append(f"      - {spelling}=={version}")
    return "\n".join(lines) + "\n"


def check(repo: Path = REPO, *, package_dir: Path | None = None) -> list[Problem]:
    """Every way the envs of ``repo`` differ from their rules' needs and from the lock."""
    repo = Path(repo).resolve()
    package_dir = package_dir or repo / "workflow" / "scripts" / PACKAGE
    lock = read_lock(repo / "envs" / "requirements.lock")
    rules = read_rules(repo / "workflow" / "rules")
    problems: list[Problem] = []
    for rule in rules:
        where = _relative(rule.smk, repo)
        if rule.script is None:
            continue
        if rule.env is None:
            problems.append(
                Problem(where, f"rule {rule.name} has a script but no conda env", rule.name)
            )
        elif not rule.env.is_file():
            problems.append(Problem(where, f"rule {rule.name}: no env file {rule.env}", rule.name))
        if not rule.script.is_file():
            problems.append(Problem(where, f"rule {rule.name}: no script {rule.script}", rule.name))
    by_env, rules_of, per_rule = env_needs(rules, package_dir, lock)
    entries: dict[Path, dict[str, tuple[str, str | None]]] = {}
    for env in sorted(set(by_env) | set((repo / "envs").glob("*.yaml"))):
        if not env.is_file():
            continue
        name = _relative(env, repo)
        entries[env], unreadable = read_env(env)
        problems += [Problem(name, message) for message in unreadable]
        if env not in by_env:
            problems.append(Problem(name, "no rule with a script uses this env"))
        for distribution, (spec, version) in entries[env].items():
            if distribution == "python":
                if version != PYTHON:
                    problems.append(Problem(name, f"{spec!r}: the envs use python={PYTHON}"))
            elif distribution == "pip" or distribution in PROVIDED:
                continue
            elif distribution not in lock:
                problems.append(
                    Problem(name, f"{spec!r} is not in the lock", distribution=distribution)
                )
            elif version != lock[distribution][1]:
                problems.append(
                    Problem(
                        name,
                        f"{spec!r} is not the lock's {lock[distribution][1]}",
                        distribution=distribution,
                    )
                )
    for rule, needs in per_rule:
        name = _relative(rule.env, repo)
        listed = entries.get(rule.env, {})
        for distribution, reasons in needs.distributions.items():
            if distribution not in lock:
                problems.append(
                    Problem(
                        name,
                        f"rule {rule.name} needs {distribution} ({reasons[0]}), not in the lock",
                        rule.name,
                        distribution,
                    )
                )
            elif distribution not in listed:
                problems.append(
                    Problem(
                        name,
                        f"rule {rule.name} needs {distribution} ({_reasons(reasons)}), "
                        "which the env lacks",
                        rule.name,
                        distribution,
                    )
                )
        for unknown in needs.unknown:
            problems.append(
                Problem(
                    name,
                    f"rule {rule.name}: {unknown}, which no installed distribution provides",
                    rule.name,
                )
            )
    for env, wanted in by_env.items():
        name = _relative(env, repo)
        _, missing = closure(wanted, lock)
        problems += [Problem(name, message) for message in missing]
        direct = {d for rule, needs in per_rule if rule.env == env for d in needs.distributions}
        for distribution, why in sorted(wanted.items()):
            if distribution in direct:
                continue
            if distribution not in lock:
                problems.append(
                    Problem(
                        name,
                        f"{distribution} ({why}) is not in the lock",
                        distribution=distribution,
                    )
                )
            elif distribution not in entries.get(env, {}):
                problems.append(
                    Problem(name, f"lacks {distribution} ({why})", distribution=distribution)
                )
        if env.is_file() and all(d in lock for d in wanted):
            if env.read_text() != render_env(rules_of[env], wanted, lock):
                problems.append(
                    Problem(name, "differs from what `python -m osteoimmune.envs --write` makes")
                )
    return problems


def write(repo: Path = REPO, *, package_dir: Path | None = None) -> list[Path]:
    """Generate the env of every rule from the lock; returns the files written."""
    repo = Path(repo).resolve()
    package_dir = package_dir or repo / "workflow" / "scripts" / PACKAGE
    lock = read_lock(repo / "envs" / "requirements.lock")
    by_env, rules_of, per_rule = env_needs(
        read_rules(repo / "workflow" / "rules"), package_dir, lock
    )
    outside = sorted(
        f"{rule.name}: {d}"
        for rule, needs in per_rule
        for d in needs.distributions
        if d not in lock
    ) + sorted(f"{rule.name}: {u}" for rule, needs in per_rule for u in needs.unknown)
    outside += sorted({d for wanted in by_env.values() for d in wanted if d not in lock})
    if outside:
        raise ValueError(
            "not in the lock (add to envs/requirements.in, make lock): " + "; ".join(outside)
        )
    written = []
    for env, wanted in sorted(by_env.items()):
        text = render_env(rules_of[env], wanted, lock)
        if not env.is_file() or env.read_text() != text:
            env.write_text(text)
            written.append(env)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m osteoimmune.envs", description=__doc__.split("\n\n")[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report drift (default)")
    mode.add_argument("--write", action="store_true", help="generate envs/*.yaml from the lock")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="the repository (default: this one)"
    )
    args = parser.parse_args(argv)
    if args.write:
        for path in write(args.repo):
            print(f"wrote {_relative(path, args.repo.resolve())}")
    problems = check(args.repo)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
