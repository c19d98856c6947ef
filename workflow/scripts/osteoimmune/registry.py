"""The dataset registry: load, validate and look up entries of ``config/datasets.yaml``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from osteoimmune.errors import RegistryError

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "config" / "schemas"


def _format_path(path: Any) -> str:
    return "/".join(str(p) for p in path) or "(top level)"


def validate(data: Any, *, schema_path: Path, what: str) -> None:
    """Validate ``data`` against a JSON schema, raising one error that lists every problem.

    Parameters
    ----------
    data
        The parsed YAML document.
    schema_path
        Path to the JSON schema (YAML syntax).
    what
        A name for the document, used in the message (e.g. the file path).
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  - at {_format_path(e.absolute_path)}: {e.message}" for e in errors]
        msg = f"{what} is invalid:\n" + "\n".join(lines) + "\nFix these fields and run again."
        raise RegistryError(msg)


def load_registry(path: str | os.PathLike, *, schema_path: Path | None = None) -> dict:
    """Load and validate a dataset registry.

    Parameters
    ----------
    path
        The registry YAML file (``config/datasets.yaml``).
    schema_path
        The JSON schema; defaults to ``config/schemas/datasets.schema.yaml`` of this checkout.

    Returns
    -------
    dict
        Dataset id -> entry, with defaults filled in (``gene_symbol_case``, ``author_label``,
        each file's ``filename``).
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Dataset registry {path} does not exist; set `registry:` in config/config.yaml."
        raise RegistryError(msg)
    data = yaml.safe_load(path.read_text())
    validate(
        data,
        schema_path=schema_path or SCHEMA_DIR / "datasets.schema.yaml",
        what=f"Dataset registry {path}",
    )
    datasets = {}
    for name, entry in data["datasets"].items():
        entry = dict(entry)
        entry.setdefault("gene_symbol_case", "as_is")
        entry.setdefault("author_label", None)
        entry["files"] = [_complete_file(name, f, base=path.parent) for f in entry["files"]]
        _check_entry(name, entry)
        datasets[name] = entry
    return datasets


def _complete_file(name: str, spec: dict, *, base: Path) -> dict:
    spec = dict(spec)
    if "path" in spec:
        local = Path(spec["path"])
        spec["path"] = str(local if local.is_absolute() else (base / local).resolve())
        spec.setdefault("filename", local.name)
    else:
        spec.setdefault("filename", spec["url"].rstrip("/").rsplit("/", 1)[-1])
    if spec["format"] == "rda" and "object" not in spec:
        msg = (
            f"Dataset registry entry '{name}', file '{spec['filename']}': field 'object' is "
            "required for R data (.rda) files; name the R object to read."
        )
        raise RegistryError(msg)
    return spec


def _check_entry(name: str, entry: dict) -> None:
    roles = [f["role"] for f in entry["files"]]
    if roles.count("counts") != 1:
        msg = (
            f"Dataset registry entry '{name}', field 'files': exactly one file must have "
            f"role 'counts' (found {roles.count('counts')})."
        )
        raise RegistryError(msg)
    label = entry["author_label"]
    if label and label.get("file") == "labels" and "labels" not in roles:
        msg = (
            f"Dataset registry entry '{name}', field 'author_label': it names a labels file "
            "but no file has role 'labels'."
        )
        raise RegistryError(msg)
    names = [f["filename"] for f in entry["files"]]
    if len(set(names)) != len(names):
        msg = f"Dataset registry entry '{name}', field 'files': two files share a filename."
        raise RegistryError(msg)


def counts_file(entry: dict) -> dict:
    """Return the file spec with role ``counts`` of a registry entry."""
    return next(f for f in entry["files"] if f["role"] == "counts")


def select_datasets(registry: dict, selection: str | list[str]) -> list[str]:
    """Return the dataset ids to run: every registry entry for ``"all"``, else the given list.

    An id that is not in the registry is an error that lists the known ids.
    """
    if selection == "all":
        return list(registry)
    unknown = [name for name in selection if name not in registry]
    if unknown:
        msg = (
            f"config `datasets` names {unknown} which the registry does not have; "
            f"known datasets: {sorted(registry)}."
        )
        raise RegistryError(msg)
    return list(selection)
