"""List the dataset registry: design, size and whether each entry can be fetched and verified here.

Run ``python -m osteoimmune.catalog [--registry FILE] [--mirror DIR] [--lock FILE] [--tsv]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from osteoimmune.checksums import Recorded, default_lock, read_lock
from osteoimmune.errors import OsteoimmuneError
from osteoimmune.fetch import find_in_mirror, resolve_mirror
from osteoimmune.registry import SCHEMA_DIR, load_registry

COLUMNS = ["id", "species", "tissue", "design", "cells", "size", "status", "default"]
DEFAULT_REGISTRY = SCHEMA_DIR.parent / "datasets.yaml"
_UNITS = ("B", "kB", "MB", "GB", "TB")


def registry_table(
    registry: dict, *, mirror: Path | None, lock: str | os.PathLike | None
) -> pd.DataFrame:
    """Return one row per registry entry: what it holds and whether it can be fetched here.

    Parameters
    ----------
    registry
        Dataset id -> entry, as returned by :func:`osteoimmune.registry.load_registry`.
    mirror
        The mirror folder searched by file name as :func:`osteoimmune.fetch.find_in_mirror`
        does, or ``None``.
    lock
        The checksum lock (a missing file is empty), or ``None``.

    Returns
    -------
    pandas.DataFrame
        Columns ``id``, ``species``, ``tissue``, ``design`` (``S samples x D donors x C
        conditions``, ``?`` where only the data can tell), ``cells`` (``?`` when the entry does
        not state it), ``size`` (``?`` when unknown), ``status`` and ``default`` (``yes``/``no``).
        ``status`` is ``mirrored here`` when every file is in the mirror (a local ``path`` file:
        when it exists), else ``checksum known`` when every downloaded file has a ``sha256`` in
        the registry, ``recorded`` when the others are in the lock, else ``unknown``.
    """
    recorded = read_lock(lock) if lock is not None else {}
    rows = []
    for name, entry in registry.items():
        files = _all_files(entry)
        found = [_on_disk(spec, mirror=mirror, dataset=name) for spec in files]
        rows.append(
            {
                "id": name,
                "species": entry.get("species", "?"),
                "tissue": entry.get("tissue", "?"),
                "design": _design(entry),
                "cells": str(entry["cells"]) if entry.get("cells") is not None else "?",
                "size": _size(files, found),
                "status": _status(files, found, recorded=recorded),
                "default": "yes" if entry.get("default", True) else "no",
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def format_table(table: pd.DataFrame) -> str:
    """Return a table as aligned plain text: a header line, then one line per row.

    Parameters
    ----------
    table
        Any table of printable cells, e.g. from :func:`registry_table`.

    Returns
    -------
    str
        Left-aligned columns separated by two spaces, ending in a newline.
    """
    cells = [list(map(str, table.columns))] + [list(map(str, row)) for row in table.to_numpy()]
    widths = [max(len(line[i]) for line in cells) for i in range(len(table.columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the registry table (see :func:`registry_table`); return the exit status.

    Parameters
    ----------
    argv
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0; a bad registry, mirror or lock exits with status 1 and its message.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        registry = load_registry(args.registry)
        mirror = resolve_mirror(args.mirror)
        lock = Path(args.lock) if args.lock else default_lock(args.registry)
        table = registry_table(registry, mirror=mirror, lock=lock)
    except OsteoimmuneError as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    sys.stdout.write(table.to_csv(sep="\t", index=False) if args.tsv else format_table(table))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m osteoimmune.catalog", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--registry", default=str(DEFAULT_REGISTRY), help="the dataset registry (YAML)"
    )
    parser.add_argument(
        "--mirror", help="a folder of dataset files (default: $OSTEOIMMUNE_MIRROR, if set)"
    )
    parser.add_argument(
        "--lock", help="the checksum lock (default: checksums.lock.tsv beside the registry)"
    )
    parser.add_argument("--tsv", action="store_true", help="write tab-separated values")
    return parser


def _all_files(entry: dict) -> list[dict]:
    """The dataset's files, then each sample's (fetched by their own jobs)."""
    files = list(entry.get("files") or [])
    for sample in entry.get("samples") or []:
        files.extend(sample.get("files") or [])
    return files


def _design(entry: dict) -> str:
    """``S samples x D donors x C conditions`` from the samplesheet, or the metadata sources."""
    samples = entry.get("samples")
    if samples:
        counts = [
            len(samples),
            len({str(s["donor"]) for s in samples if s.get("donor") is not None}),
            len({str(s["condition"]) for s in samples if s.get("condition") is not None}),
        ]
    else:
        # A constant source means one value; a column or cell-name source is known from the data.
        metadata = entry.get("metadata") or {}
        counts = [
            1 if "constant" in (metadata.get(key) or {}) else "?"
            for key in ("sample", "donor", "condition")
        ]
    return "{} samples x {} donors x {} conditions".format(*counts)


def _on_disk(spec: dict, *, mirror: Path | None, dataset: str) -> Path | None:
    """The file this machine holds for a spec: a local ``path`` that exists, or a mirror file."""
    if "path" in spec:
        path = Path(spec["path"])
        return path if path.is_file() else None
    if mirror is None:
        return None
    return find_in_mirror(Path(mirror), name=spec["filename"], dataset=dataset)


def _size(files: list[dict], found: list[Path | None]) -> str:
    """Sum of the files' ``bytes``, else their ``size`` text, else the size of the file here."""
    total, texts = 0, []
    for spec, path in zip(files, found, strict=True):
        if spec.get("bytes") is not None:
            total += int(spec["bytes"])
        elif spec.get("size"):
            texts.append(str(spec["size"]))
        elif path is not None:
            total += path.stat().st_size
        else:
            return "?"
    if not files:
        return "?"
    parts = ([_human(total)] if total or not texts else []) + texts
    return " + ".join(parts)


def _human(size: int) -> str:
    value, unit = float(size), 0
    while value >= 1000 and unit < len(_UNITS) - 1:
        value, unit = value / 1000, unit + 1
    return f"{size} B" if unit == 0 else f"{value:.1f} {_UNITS[unit]}"


def _status(files: list[dict], found: list[Path | None], *, recorded: dict[str, Recorded]) -> str:
    if not files:
        return "unknown"
    if all(path is not None for path in found):
        return "mirrored here"
    remote = [spec for spec in files if "path" not in spec]
    unpinned = [spec for spec in remote if not spec.get("sha256")]
    if not unpinned:
        return "checksum known"
    if all(spec.get("url") in recorded for spec in unpinned):
        return "recorded"
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
