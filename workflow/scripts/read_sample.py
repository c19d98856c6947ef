"""Snakemake rule read_sample: read one sample of a study (a samplesheet row) into AnnData."""

import logging

from osteoimmune.fetch import read_manifest
from osteoimmune.readers import read_study_sample
from osteoimmune.runlog import logged
from osteoimmune.samples import write_counts_once

log = logging.getLogger("osteoimmune")


def main(*, dataset, sample, settings, manifest, out, compression="gzip"):
    adata = read_study_sample(sample, read_manifest(manifest), dataset=dataset, settings=settings)
    log.info("%s, sample %s: %d cells x %d genes", dataset, sample["sample"], *adata.shape)
    write_counts_once(adata, out, compression=compression)


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            dataset=snakemake.wildcards.dataset,
            sample=snakemake.params.sample,
            settings=snakemake.params.settings,
            manifest=snakemake.input.manifest,
            out=snakemake.output.h5ad,
            compression=snakemake.params.compression,
        )
