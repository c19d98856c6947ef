"""The index page (``results/index.html``): every dataset with a report under ``results/``.

The datasets of the current run come first, in the order of the run's ``datasets``; datasets
whose reports an earlier run left under ``results/`` follow in alphabetical order, marked as
such, so that one index lists everything there is to read. Only files on disk are read, so the
same ``results/`` gives the same page.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from osteoimmune.report import index_row, key_signature_block, render, software_versions
from osteoimmune.report_conditions import top_changes, top_genes
from osteoimmune.samples import read_parts

# The files the index reads of a dataset, relative to results/ (the report_index rule's inputs
# for the datasets of the run).
FILES = {
    "report": "{dataset}/report.html",
    "h5ad": "{dataset}/{dataset}.h5ad",
    "by_group": "{dataset}/tables/scores_by_group.tsv",
    "coverage": "{dataset}/tables/signature_coverage.tsv",
    "de_summary": "{dataset}/tables/pseudobulk_summary.tsv",
    "de_results": "{dataset}/tables/pseudobulk_de.tsv.gz",
    "composition": "{dataset}/tables/composition_test.tsv",
    "communication": "{dataset}/tables/communication_comparison.tsv",
}


def dataset_files(results: Path, dataset: str) -> dict[str, Path]:
    """The paths of :data:`FILES` for one dataset under ``results``."""
    return {key: Path(results) / path.format(dataset=dataset) for key, path in FILES.items()}


def earlier_datasets(results: Path, *, current: list[str]) -> list[str]:
    """Datasets with a report under ``results`` that are not in ``current``, sorted."""
    found = {path.parent.name for path in Path(results).glob(FILES["report"].format(dataset="*"))}
    return sorted(found - set(current))


def read_table(path: Path, **kwargs) -> pd.DataFrame:
    """A TSV, or an empty table when the file is empty or absent (older runs lack some)."""
    try:
        return pd.read_csv(path, sep="\t", **kwargs)
    except (pd.errors.EmptyDataError, FileNotFoundError):
        return pd.DataFrame()


def dataset_row(files: dict[str, Path], *, dataset: str, entry: dict | None) -> dict:
    """One dataset's row of the index: summary, key signatures and top changes."""
    # annotations only: the matrices and the graph are not read
    adata = read_parts(files["h5ad"], x=False)
    row = index_row(adata, entry=entry or {"title": "(not in the registry)", "species": ""})
    coverage = read_table(files["coverage"], index_col=0)
    row["key"] = key_signature_block(
        read_table(files["by_group"], dtype={"group": str}),
        coverage=None if coverage.empty else coverage,
    )
    row["changes"] = top_changes(
        de_summary=read_table(files["de_summary"]),
        de_top=top_genes(read_table(files["de_results"]), n=1),
        composition=read_table(files["composition"]),
        communication=read_table(files["communication"]),
    )
    return row


def unreadable_row(dataset: str, *, entry: dict | None, error: Exception) -> dict:
    """A row for an earlier run's dataset whose results could not be summarised."""
    return {
        "dataset": dataset,
        "title": (entry or {}).get("title", "(not in the registry)"),
        "species": (entry or {}).get("species", ""),
        "problem": f"its results could not be read ({type(error).__name__}: {error}); "
        f"rerun it with datasets=[{dataset!r}]",
        "means": {},
        "key": {"sets": [], "rows": [], "notes": []},
        "changes": [],
    }


def index_page(results: Path, *, current: list[str], entries: dict) -> str:
    """Render ``results/index.html``: the run's datasets, then those of earlier runs.

    Parameters
    ----------
    results
        The results folder (``results/``) holding ``{dataset}/report.html`` and its tables.
    current
        The datasets of this run, in order (their files must exist).
    entries
        The registry: dataset id -> entry (title, species).

    Returns
    -------
    str
        The HTML page; a dataset of an earlier run that cannot be read gets a row saying so.
    """
    rows = []
    for dataset in current:
        row = dataset_row(dataset_files(results, dataset), dataset=dataset, entry=entries[dataset])
        rows.append(row | {"earlier": False})
    for dataset in earlier_datasets(results, current=current):
        entry = entries.get(dataset)
        try:
            row = dataset_row(dataset_files(results, dataset), dataset=dataset, entry=entry)
        except (OSError, KeyError, ValueError) as error:
            row = unreadable_row(dataset, entry=entry, error=error)
        rows.append(row | {"earlier": True})
    signatures = sorted({name for row in rows for name in row["means"]})
    return render("index.html", rows=rows, signatures=signatures, versions=software_versions())
