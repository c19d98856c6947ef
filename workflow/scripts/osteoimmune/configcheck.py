"""Short messages for bad configuration: schema errors, YAML syntax errors, missing files.

A JSON-schema error names the key, its value and the rule it broke, one line each, instead of
the schema around it; a YAML syntax error names the file, line and column; the user's
signature files are checked when the workflow starts, not after QC and clustering.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import yaml

from osteoimmune.errors import RegistryError

MISSING = object()
_TYPES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}
_BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
# Validators whose failure the subschema's own description explains.
_DESCRIBED = {"type", "enum", "const", "oneOf", "anyOf", "pattern", "minLength", *_BOUNDS}


class Problem(NamedTuple):
    """One schema error: where (keys and list indices), the value there, the rule broken."""

    path: tuple
    value: Any
    rule: str


def show(value: Any, *, width: int = 60) -> str:
    """A value as the user wrote it (YAML flow style; a mapping by its keys), cut to ``width``."""
    if value is MISSING:
        return "(missing)"
    # A mapping's keys say which of its forms it is; its values would only fill the line.
    text = (
        "{" + ", ".join(map(str, value)) + "}"
        if isinstance(value, dict)
        else json.dumps(value, default=str, ensure_ascii=False)
    )
    return text if len(text) <= width else text[: width - 3] + "..."


def dotted(path: tuple) -> str:
    """A config key path as written in messages and ``--config``: ``qc.min_genes``, ``a[0]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(top level)"


def expected(schema: dict) -> str:
    """What a (sub)schema accepts, in words: ``an integer >= 0``, ``one of "a", "b"``."""
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " or ".join(expected(option) for option in schema[key])
    if "const" in schema:
        return show(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(show(v) for v in schema["enum"])
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    words = " or ".join(_TYPES.get(t, t) for t in types)
    if "required" in schema and not types:
        words = "a mapping with " + ", ".join(schema["required"])
    if schema.get("minLength") == 1:
        words = words.replace("a string", "a non-empty string")
    if "items" in schema and words == "a list":
        words = "a list of " + _plural(expected(schema["items"]))
    bounds = [f"{op} {schema[key]}" for key, op in _BOUNDS.items() if key in schema]
    if "pattern" in schema:
        bounds.append(f"matching {schema['pattern']}")
    return " ".join([words or "a value", *bounds])


def _plural(phrase: str) -> str:
    for article in ("a non-empty ", "an ", "a "):
        if phrase.startswith(article) and " or " not in phrase:
            first, *rest = phrase.removeprefix(article).split(" ", 1)
            return " ".join([("non-empty " if "non-empty" in article else "") + first + "s", *rest])
    return f"items that are {phrase}"


def _unknown_keys(path: tuple, instance: dict, schema: dict) -> list[Problem]:
    known = list(schema.get("properties", {}))
    problems = []
    for extra in (k for k in instance if k not in known):
        hint = difflib.get_close_matches(str(extra), known, n=1)
        rule = "is not a known key" + (f" (did you mean {hint[0]}?)" if hint else "")
        problems.append(Problem((*path, extra), instance[extra], rule))
    return problems


def _problems(error: jsonschema.ValidationError) -> list[Problem]:
    path, instance, schema = tuple(error.absolute_path), error.instance, error.schema
    if error.validator == "additionalProperties" and schema["additionalProperties"] is False:
        return _unknown_keys(path, instance, schema)
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in instance]
        return [Problem((*path, k), MISSING, "is required") for k in missing]
    if "propertyNames" in error.absolute_schema_path:
        return [Problem(path, instance, f"is not an allowed name here ({expected(schema)})")]
    if error.validator in _DESCRIBED:
        return [Problem(path, instance, "must be " + expected(schema))]
    return [Problem(path, instance, error.message.removeprefix(repr(instance)).strip())]


def schema_problems(data: Any, *, schema: dict) -> list[Problem]:
    """Every way ``data`` breaks a JSON schema (draft 2020-12), one problem each, in key order.

    Parameters
    ----------
    data
        The parsed YAML document.
    schema
        The JSON schema.

    Returns
    -------
    list of Problem
        ``path`` (keys and list indices), ``value`` (:data:`MISSING` for a required key that is
        absent) and ``rule``: what the value must be, in words. Empty when ``data`` is valid.
    """
    validator = jsonschema.Draft202012Validator(schema)
    problems = {}
    for error in validator.iter_errors(data):
        # jsonschema reports a missing key once per `required` list that names it
        problems |= {(p.path, p.rule): p for p in _problems(error)}
    return sorted(problems.values(), key=lambda p: [_sort_key(part) for part in p.path])


def _sort_key(part: str | int) -> str:
    return f"{part:09d}" if isinstance(part, int) else str(part)


def describe_config_errors(config: dict, *, schema_path: Path) -> str:
    """The message for a config that breaks its schema; empty when the config is valid.

    One line per problem, ``key = value: rule`` (e.g. ``seed = "abc": must be an integer >= 0``),
    between a header and what to do.

    Parameters
    ----------
    config
        The workflow's config, as Snakemake holds it.
    schema_path
        The config schema (``config/schemas/config.schema.yaml``).
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    problems = schema_problems(config, schema=schema)
    if not problems:
        return ""
    lines = [
        f"  {dotted(p.path)}: {p.rule}"
        if p.value is MISSING
        else f"  {dotted(p.path)} = {show(p.value)}: {p.rule}"
        for p in problems
    ]
    return "\n".join(
        [
            "Invalid config:",
            *lines,
            "Fix it in your --configfile or --config; config/config.yaml documents every key.",
        ]
    )


def read_yaml(path: Path, *, what: str) -> Any:
    """Parse a YAML file; a syntax error names the file, line and column.

    Raises
    ------
    RegistryError
        When the file is not valid YAML.
    """
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        msg = f"{what} {path}{where}: not valid YAML ({problem}); fix the syntax there."
        raise RegistryError(msg) from None


def check_user_sets(user_sets: list[dict], *, workdir: Path) -> None:
    """Check the files of config ``signatures.user_sets`` before any job runs.

    A relative ``path`` is found from ``workdir``, as the score rules find it (they run there).

    Parameters
    ----------
    user_sets
        The config's ``signatures.user_sets``: ``{path, species}`` records.
    workdir
        The workflow's working directory.

    Raises
    ------
    RegistryError
        When a file does not exist, a GMT file has no ``species``, or a YAML file is not valid
        YAML; the message names the config key and the path.
    """
    for i, entry in enumerate(user_sets):
        key = f"config signatures.user_sets[{i}]"
        path = Path(workdir) / entry["path"]
        if not path.is_file():
            msg = (
                f"{key}.path: {entry['path']} is not a file (looked for {path}; a relative "
                f"path is relative to the working directory, {workdir}). Fix the path, or "
                "remove the entry."
            )
            raise RegistryError(msg)
        if path.suffix.lower() == ".gmt":
            if "species" not in entry:
                msg = f"{key}: the GMT file {path} needs `species:` (human or mouse) of its genes."
                raise RegistryError(msg)
        else:
            read_yaml(path, what=f"{key}: the signature file")
