"""Writing the workflow's tables: tab-separated, gzipped byte-reproducibly."""

from __future__ import annotations

import os

import pandas as pd


def write_tsv(table: pd.DataFrame, path: str | os.PathLike, *, index: bool = False) -> None:
    """Write ``table`` as a TSV; a ``.gz`` path is gzipped with no timestamp in its header.

    pandas' gzip writes the current time into the header (MTIME), so two runs on the same
    input would differ byte for byte; here it is 0, and equal tables give equal files.
    """
    gzipped = os.fspath(path).endswith(".gz")
    compression = {"method": "gzip", "mtime": 0} if gzipped else None
    table.to_csv(path, sep="\t", index=index, compression=compression)
