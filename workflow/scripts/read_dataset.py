"""Snakemake rule read_dataset: read the fetched files into the standard AnnData, per sample."""

import logging

from osteoimmune.fetch import read_manifest
from osteoimmune.readers import read_dataset
from osteoimmune.runlog import logged
from osteoimmune.samples import split_by_sample, write_counts_once

log = logging.getLogger("osteoimmune")


def main(*, entry, dataset, manifest, out, samples, compression="gzip"):
    adata = read_dataset(entry, read_manifest(manifest), dataset=dataset)
    log.info("%s: %d cells x %d genes as read", dataset, adata.n_obs, adata.n_vars)
    write_counts_once(adata, out, compression=compression)
    table = split_by_sample(adata, samples)
    log.info("%d sample(s): %s", len(table), ", ".join(table["sample"]))


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            # the entry's fields, not the registry file: editing another entry does not rerun
            entry=snakemake.params.entry,
            dataset=snakemake.wildcards.dataset,
            manifest=snakemake.input.manifest,
            out=snakemake.output.h5ad,
            samples=snakemake.output.samples,
            compression=snakemake.params.compression,
        )
