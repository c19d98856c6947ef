"""The dataset registry: load, validate and look up entries of ``config/datasets.yaml``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from osteoimmune.configcheck import MISSING, read_yaml, schema_problems, show
from osteoimmune.errors import RegistryError
from osteoimmune.samplesheet import check_covariate_name, parse_samples, read_samplesheet

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
    problems = schema_problems(data, schema=schema)
    if problems:
        lines = [
            f"  - at {_format_path(p.path)}: "
            + (p.rule if p.value is MISSING else f"{show(p.value)} {p.rule}")
            for p in problems
        ]
        msg = f"{what} is invalid:\n" + "\n".join(lines) + "\nFix these fields and run again."
        raise RegistryError(msg)


def _read_registry(path: Path, *, schema_path: Path | None) -> dict:
    """The registry file's data, validated against its schema."""
    if not path.is_file():
        msg = f"Dataset registry {path} does not exist; set `registry:` in config/config.yaml."
        raise RegistryError(msg)
    data = read_yaml(path, what="Dataset registry")
    validate(
        data,
        schema_path=schema_path or SCHEMA_DIR / "datasets.schema.yaml",
        what=f"Dataset registry {path}",
    )
    return data


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
        ``default``, ``paired``, each file's ``filename``) and, for a study with a samplesheet
        (``samplesheet:`` or ``samples:``), ``samples``: the validated sample records of
        :func:`osteoimmune.samplesheet.parse_samples`.
    """
    path = Path(path)
    data = _read_registry(path, schema_path=schema_path)
    datasets = {}
    for name, entry in data["datasets"].items():
        entry = dict(entry)
        entry.setdefault("gene_symbol_case", "as_is")
        entry.setdefault("author_label", None)
        entry.setdefault("default", True)
        entry.setdefault("paired", False)
        entry["files"] = [_complete_file(name, f, base=path.parent) for f in entry.get("files", [])]
        _check_entry(name, entry)
        entry["samples"] = _samples(name, entry, base=path.parent)
        datasets[name] = entry
    return datasets


def load_models(path: str | os.PathLike, *, schema_path: Path | None = None) -> dict:
    """Load and validate the registry's trained reference models (its ``models:`` section).

    Parameters
    ----------
    path
        The registry YAML file (``config/datasets.yaml``).
    schema_path
        The JSON schema; defaults to ``config/schemas/datasets.schema.yaml`` of this checkout.

    Returns
    -------
    dict
        Model id -> entry, with ``files``: the model file (role ``model``) as the fetch step
        takes a dataset's files (``filename`` filled in). Empty when the registry has no models.
    """
    path = Path(path)
    data = _read_registry(path, schema_path=schema_path)
    models = {}
    for name, entry in (data.get("models") or {}).items():
        if name in data["datasets"]:
            msg = (
                f"Dataset registry {path}: '{name}' names both a dataset and a model; rename "
                "one of them."
            )
            raise RegistryError(msg)
        entry = dict(entry)
        spec = _complete_file(name, {**entry.pop("file"), "role": "model"}, base=path.parent)
        if not spec["filename"].endswith(".pkl"):
            msg = (
                f"Dataset registry model '{name}': file '{spec['filename']}' is not a "
                "CellTypist model (.pkl); set `filename:` to a name ending in .pkl."
            )
            raise RegistryError(msg)
        if not entry["label_map"]:
            msg = (
                f"Dataset registry model '{name}': `label_map` is empty; map the model's "
                "labels to this project's cell types."
            )
            raise RegistryError(msg)
        models[name] = entry | {"files": [spec]}
    return models


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


def _samples(name: str, entry: dict, *, base: Path) -> list[dict] | None:
    if "samplesheet" in entry:
        sheet = Path(entry["samplesheet"])
        sheet = sheet if sheet.is_absolute() else (base / sheet).resolve()
        rows, source, base = read_samplesheet(sheet), str(sheet), sheet.parent
    elif "samples" in entry:
        rows, source = entry["samples"], "`samples:` of the registry"
    else:
        return None
    archive = next((f["filename"] for f in entry["files"] if f["role"] == "archive"), None)
    return parse_samples(
        rows, dataset=name, source=source, base=base, paired=entry["paired"], archive=archive
    )


def is_study(entry: dict) -> bool:
    """Whether a registry entry lists its samples (a samplesheet) instead of one counts file."""
    return bool(entry.get("samples"))


def _check_entry(name: str, entry: dict) -> None:
    roles = [f["role"] for f in entry["files"]]
    if "samplesheet" in entry or "samples" in entry:
        _check_study_files(name, entry, roles)
    elif roles.count("counts") != 1:
        msg = (
            f"Dataset registry entry '{name}', field 'files': exactly one file must have "
            f"role 'counts' (found {roles.count('counts')})."
        )
        raise RegistryError(msg)
    for column in entry.get("metadata", {}).get("covariates", []):
        check_covariate_name(column, where=f"Dataset registry entry '{name}', metadata")
    label = entry["author_label"]
    if label and label.get("file") == "labels" and "labels" not in roles:
        msg = (
            f"Dataset registry entry '{name}', field 'author_label': it names a labels file "
            "but no file has role 'labels'."
        )
        raise RegistryError(msg)
    if entry.get("reference") and not (label and entry.get("author_label_map")):
        msg = (
            f"Dataset registry entry '{name}' has `reference: true` but no `author_label` and "
            "`author_label_map`: a reference trains on its authors' labels mapped to this "
            "project's cell types. Add both, or remove `reference: true`."
        )
        raise RegistryError(msg)
    names = [f["filename"] for f in entry["files"]]
    if len(set(names)) != len(names):
        msg = f"Dataset registry entry '{name}', field 'files': two files share a filename."
        raise RegistryError(msg)


def _check_study_files(name: str, entry: dict, roles: list[str]) -> None:
    where = f"Dataset registry entry '{name}'"
    if "counts" in roles or roles.count("archive") > 1:
        msg = (
            f"{where}, field 'files': a study with a samplesheet takes its counts from the "
            "samples' files (or one file with role 'archive'), not from a file with role "
            "'counts'; move the file into the samplesheet."
        )
        raise RegistryError(msg)
    if "metadata" in entry or (entry["author_label"] or {}).get("file"):
        msg = (
            f"{where}: a study with a samplesheet takes sample, donor and condition from the "
            "samplesheet; remove `metadata:` (and a labels file for `author_label`)."
        )
        raise RegistryError(msg)


def select_datasets(registry: dict, selection: str | list[str]) -> list[str]:
    """Return the dataset ids to run.

    ``"default"``: the entries of the default run (``default: true``, the registry's default);
    ``"all"``: every entry; else the given list. An id that is not in the registry is an error
    that lists the known ids.
    """
    if selection == "default":
        return [name for name, entry in registry.items() if entry["default"]]
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
