"""Samplesheets: a study as one row per sample, with its file(s), donor, condition, covariates.

A registry entry lists its samples inline (``samples:``) or points to a CSV/TSV file
(``samplesheet:``). Each row names the sample, its donor and condition, where its cells are and
any further columns as covariates:

- ``file``: local path(s), relative to the samplesheet's folder; ``url`` with ``sha256`` (empty
  when unknown): public file(s); several separated by ``;`` (a 10x triplet); or ``member``: the
  GSM id of the sample's files inside the dataset's ``archive`` file (a GEO ``RAW.tar``);
- ``format`` (required with ``file``/``url``), and the reader options ``layer``,
  ``gene_column``, ``orientation``, ``object``;
- every other column is a covariate: numeric when every value is a number, else categorical.

Every problem is an error that names the samplesheet, the row and the column.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from osteoimmune.errors import RegistryError

FORMATS = ("h5ad", "10x_mtx", "10x_h5", "csv", "tsv", "rda", "rds")
LOCATION_COLUMNS = ("file", "url", "member")
READER_COLUMNS = ("layer", "gene_column", "orientation", "object")
RESERVED = {"sample", "donor", "condition", "sha256", "format", *LOCATION_COLUMNS, *READER_COLUMNS}
# obs columns the pipeline writes itself: a covariate may not take their names
PIPELINE_COLUMNS = {"dataset", "author_cell_type", "leiden", "cell_lineage", "cell_type"}
PIPELINE_PREFIXES = (
    "leiden_",
    "score_",
    "z_",
    "pct_",
    "total_",
    "n_",
    "log1p_",
    "qc_",
    "doublet",
    "annotation_",
    "polarization_",
    "cell_",
)
SAMPLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def read_samplesheet(path: Path) -> list[dict[str, str]]:
    """Read a CSV or TSV samplesheet as rows of text (empty cells as ``""``).

    The separator is a tab for ``.tsv``/``.txt`` files and a comma otherwise.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Samplesheet {path} does not exist; fix `samplesheet:` in the dataset registry."
        raise RegistryError(msg)
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, comment=None)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        msg = (
            f"Samplesheet {path} could not be read as {'TSV' if sep == chr(9) else 'CSV'} ({err})."
        )
        raise RegistryError(msg) from err
    table.columns = [str(c).strip() for c in table.columns]
    return [{k: str(v).strip() for k, v in row.items()} for row in table.to_dict("records")]


def parse_samples(
    rows: list[dict[str, Any]],
    *,
    dataset: str,
    source: str,
    base: Path,
    paired: bool = False,
    archive: str | None = None,
) -> list[dict]:
    """Validate samplesheet rows and turn them into sample records.

    Parameters
    ----------
    rows
        One dict per sample (from :func:`read_samplesheet` or the registry's inline list).
    dataset
        The dataset id, for messages.
    source
        The samplesheet's path, or ``"the registry's samples list"``, for messages.
    base
        Folder that relative ``file`` paths start from.
    paired
        Whether a donor may appear in several conditions.
    archive
        File name of the dataset's archive (role ``archive``), when it has one.

    Returns
    -------
    list of dict
        Per sample: ``sample``, ``donor``, ``condition``, ``covariates`` (name -> value, numbers
        as float, missing as None), ``files`` (file specs for the fetch step, empty for an
        archive member), ``member``, ``format`` and the reader options, ``row`` (1-based).
    """
    where = f"Dataset '{dataset}', samplesheet {source}"
    if not rows:
        msg = f"{where}: no samples; add one row per sample."
        raise RegistryError(msg)
    types = covariate_types(rows, where=where)
    samples = [
        _sample(row, n, where=where, base=base, archive=archive, types=types)
        for n, row in enumerate(rows, start=1)
    ]
    _check_unique(samples, where=where)
    if not paired:
        _check_unpaired(samples, where=where)
    return samples


def covariate_types(rows: list[dict[str, Any]], *, where: str) -> dict[str, str]:
    """Covariate column -> ``"numeric"`` or ``"categorical"``; mixed columns are errors."""
    names = list(dict.fromkeys(k for row in rows for k in row if k not in RESERVED))
    types = {}
    for name in names:
        check_covariate_name(name, where=where)
        values = [(n, _text(row.get(name))) for n, row in enumerate(rows, start=1)]
        filled = [(n, v) for n, v in values if v != ""]
        numeric = [(n, v) for n, v in filled if _NUMBER.match(v)]
        if numeric and len(numeric) < len(filled):
            text = next((n, v) for n, v in filled if not _NUMBER.match(v))
            msg = (
                f"{where}, column '{name}': covariate values mix numbers (row {numeric[0][0]}: "
                f"{numeric[0][1]!r}) and text (row {text[0]}: {text[1]!r}). Make the column all "
                "numbers (leave unknown cells empty) or all text (e.g. '67y')."
            )
            raise RegistryError(msg)
        types[name] = "numeric" if numeric else "categorical"
    return types


def check_covariate_name(name: str, *, where: str) -> None:
    """Raise if a covariate would take the name of an obs column the pipeline writes."""
    if not name or name in PIPELINE_COLUMNS or name.startswith(PIPELINE_PREFIXES):
        msg = (
            f"{where}, column '{name}': a covariate cannot be named like a column the pipeline "
            "writes (dataset, author_cell_type, leiden*, cell_*, score_*, z_*, qc_*, n_*, pct_*, "
            "total_*, ...); rename the column."
        )
        raise RegistryError(msg)


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def _sample(
    row: dict[str, Any],
    n: int,
    *,
    where: str,
    base: Path,
    archive: str | None,
    types: dict[str, str],
) -> dict:
    at = f"{where}, row {n}"
    sample = _text(row.get("sample"))
    if not SAMPLE_ID.match(sample):
        msg = (
            f"{at}, column 'sample': {sample!r} is not a sample id; use letters, digits, '_', "
            "'.' or '-', starting with a letter or digit (it names files and jobs)."
        )
        raise RegistryError(msg)
    at = f"{at} (sample '{sample}')"
    record = {"sample": sample, "row": n}
    for key in ("donor", "condition"):
        record[key] = _text(row.get(key))
        if not record[key]:
            msg = f"{at}, column '{key}': empty; every sample needs its {key}."
            raise RegistryError(msg)
    record["covariates"] = {
        name: (float(_text(row.get(name))) if kind == "numeric" else _text(row.get(name)))
        if _text(row.get(name)) != ""
        else None
        for name, kind in types.items()
    }
    record.update(_location(row, at=at, base=base, archive=archive, sample=sample, n=n))
    return record


def _location(
    row: dict[str, Any], *, at: str, base: Path, archive: str | None, sample: str, n: int
) -> dict:
    given = [c for c in LOCATION_COLUMNS if _text(row.get(c))]
    if len(given) != 1:
        msg = (
            f"{at}, columns {'/'.join(LOCATION_COLUMNS)}: give exactly one of them (found "
            f"{', '.join(given) or 'none'}): a local `file`, a `url` with `sha256`, or the "
            "`member` (GSM id) of the dataset's archive."
        )
        raise RegistryError(msg)
    fmt = _text(row.get("format"))
    if fmt and fmt not in FORMATS:
        msg = (
            f"{at}, column 'format': {fmt!r} is not a known format; use one of "
            f"{', '.join(FORMATS)}."
        )
        raise RegistryError(msg)
    options = {c: _text(row.get(c)) for c in READER_COLUMNS if _text(row.get(c))}
    (column,) = given
    if column == "member":
        if archive is None:
            msg = (
                f"{at}, column 'member': the dataset has no file with role 'archive' to take "
                "the member from; add the archive (e.g. the series' RAW.tar) to `files:`."
            )
            raise RegistryError(msg)
        return {"member": _text(row["member"]), "format": fmt or None, "files": [], **options}
    if not fmt:
        msg = f"{at}, column 'format': required with `{column}`; use one of {', '.join(FORMATS)}."
        raise RegistryError(msg)
    files = _file_specs(row, column, at=at, base=base, fmt=fmt, sample=sample, n=n)
    return {"member": None, "format": fmt, "files": files, **options}


def _file_specs(
    row: dict[str, Any], column: str, *, at: str, base: Path, fmt: str, sample: str, n: int
) -> list[dict]:
    locations = [p.strip() for p in _text(row[column]).split(";") if p.strip()]
    hashes = [h.strip().lower() for h in _text(row.get("sha256")).split(";")]
    hashes = hashes if any(hashes) else [""] * len(locations)
    if len(locations) > 1 and fmt != "10x_mtx":
        msg = f"{at}, column '{column}': several files are only for a 10x triplet (10x_mtx)."
        raise RegistryError(msg)
    if len(hashes) != len(locations):
        msg = f"{at}, column 'sha256': {len(hashes)} checksums for {len(locations)} files."
        raise RegistryError(msg)
    specs = []
    for location, digest in zip(locations, hashes, strict=True):
        spec = {"role": "counts", "format": fmt, "sample": sample, "row": n}
        if column == "file":
            path = Path(location).expanduser()
            path = path if path.is_absolute() else (base / path).resolve()
            if not path.exists():
                msg = f"{at}, column 'file': {path} does not exist; fix the path."
                raise RegistryError(msg)
            spec.update(path=str(path), filename=path.name)
        else:
            if not re.match(r"^(https?|ftp)://", location):
                msg = f"{at}, column 'url': {location!r} is not an http(s) or ftp URL."
                raise RegistryError(msg)
            spec.update(url=location, filename=location.rstrip("/").rsplit("/", 1)[-1])
        if digest and not re.match(r"^[0-9a-f]{64}$", digest):
            msg = f"{at}, column 'sha256': {digest!r} is not a sha256 (64 hex digits)."
            raise RegistryError(msg)
        spec["sha256"] = digest or None
        specs.append(spec)
    names = [s["filename"] for s in specs]
    if len(set(names)) != len(names):
        msg = f"{at}, column '{column}': two files share the name {names}; rename one."
        raise RegistryError(msg)
    return specs


def _check_unique(samples: list[dict], *, where: str) -> None:
    first: dict[str, int] = {}
    for s in samples:
        if s["sample"] in first:
            msg = (
                f"{where}, rows {first[s['sample']]} and {s['row']}, column 'sample': the "
                f"sample id '{s['sample']}' is used twice; sample ids must be unique."
            )
            raise RegistryError(msg)
        first[s["sample"]] = s["row"]


def _check_unpaired(samples: list[dict], *, where: str) -> None:
    seen: dict[str, dict] = {}
    for s in samples:
        other = seen.setdefault(s["donor"], s)
        if other["condition"] != s["condition"]:
            msg = (
                f"{where}, rows {other['row']} and {s['row']}, column 'donor': donor "
                f"'{s['donor']}' is in two conditions ('{other['condition']}' and "
                f"'{s['condition']}'). If the same donor really was sampled in both (a paired "
                "design), set `paired: true` in the registry entry; else fix the donor ids."
            )
            raise RegistryError(msg)


def design_rows(samples: list[dict]) -> list[dict]:
    """The design of a study, one dict per sample: sample, donor, condition, covariates."""
    return [
        {"sample": s["sample"], "donor": s["donor"], "condition": s["condition"], **s["covariates"]}
        for s in samples
    ]


def study_covariates(samples: list[dict]) -> dict[str, str]:
    """Covariate name -> ``"numeric"`` or ``"categorical"``, from parsed sample records."""
    names = list(dict.fromkeys(k for s in samples for k in s["covariates"]))
    return {
        name: "numeric"
        if any(isinstance(s["covariates"][name], float) for s in samples)
        else "categorical"
        for name in names
    }
