"""Snakemake rule report_dataset: the self-contained HTML report of one dataset."""

import json
from pathlib import Path

import anndata as ad
import pandas as pd

from osteoimmune.registry import load_registry
from osteoimmune.report import dataset_report
from osteoimmune.runlog import logged


def main(*, h5ad, manifest, qc, coverage, by_group, registry, config, html, fig_dir):
    adata = ad.read_h5ad(h5ad)
    dataset = adata.uns["osteoimmune"]["dataset"]
    page = dataset_report(
        adata,
        entry=load_registry(registry)[dataset],
        manifest=json.loads(Path(manifest).read_text()),
        qc=pd.read_csv(qc, sep="\t", index_col=0),
        coverage=pd.read_csv(coverage, sep="\t", index_col=0),
        by_group=pd.read_csv(by_group, sep="\t", dtype={"group": str}),
        config=config,
        fig_dir=Path(fig_dir),
    )
    Path(html).write_text(page, encoding="utf-8")


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            manifest=snakemake.input.manifest,
            qc=snakemake.input.qc,
            coverage=snakemake.input.coverage,
            by_group=snakemake.input.by_group,
            registry=snakemake.params.registry,
            config=dict(snakemake.config),
            html=snakemake.output.html,
            fig_dir=snakemake.output.figures,
        )
