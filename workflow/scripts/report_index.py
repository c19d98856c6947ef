"""Snakemake rule report_index: results/index.html linking every dataset's report."""

from pathlib import Path

from osteoimmune.report_index import index_page
from osteoimmune.runlog import logged


def main(*, datasets, entries, html):
    # results/: this run's datasets are the rule's inputs; earlier runs' reports are found there
    results = Path(html).parent
    page = index_page(results, current=list(datasets), entries=entries)
    Path(html).write_text(page, encoding="utf-8")


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            datasets=snakemake.params.datasets,
            entries=snakemake.params.entries,
            html=snakemake.output.html,
        )
