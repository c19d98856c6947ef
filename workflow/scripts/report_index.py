"""Snakemake rule report_index: results/index.html linking every dataset's report."""

from pathlib import Path

from osteoimmune.registry import load_registry
from osteoimmune.report_index import index_page
from osteoimmune.runlog import logged


def main(*, datasets, registry, html):
    # results/: this run's datasets are the rule's inputs; earlier runs' reports are found there
    results = Path(html).parent
    page = index_page(results, current=list(datasets), entries=load_registry(registry))
    Path(html).write_text(page, encoding="utf-8")


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            datasets=snakemake.params.datasets,
            registry=snakemake.params.registry,
            html=snakemake.output.html,
        )
