"""Snakemake rule export_h5ad: the h5ad a user opens, the clustered matrices with the scores."""

import logging

from osteoimmune.runlog import logged
from osteoimmune.samples import read_annotated

log = logging.getLogger("osteoimmune")


def main(*, matrices, scores, out):
    adata = read_annotated(matrices, scores, everything=True)
    # gzip, which every HDF5 reader has, at level 1: on 20,000 resampled cells 1.5x faster
    # to write than the default level 4 for a 20% larger file (bench/README.md). A job of its
    # own: at 100,000 cells this write takes ~27 s, now beside the later jobs, not before them.
    adata.write_h5ad(out, compression="gzip", compression_opts=1)
    log.info("%d cells x %d genes with their scores written to %s", *adata.shape, out)


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            matrices=snakemake.input.matrices,
            scores=snakemake.input.scores,
            out=snakemake.output.h5ad,
        )
