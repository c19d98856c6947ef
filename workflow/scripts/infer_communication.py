"""Snakemake rule infer_communication: LIANA+ per condition and per sample, osteoimmune axes."""

import logging

from osteoimmune.communication import (
    communication,
    compare_communication,
    osteoimmune_axes,
    receivers,
    sample_design,
)
from osteoimmune.runlog import logged
from osteoimmune.samples import comparison_unit, read_annotated
from osteoimmune.tables import write_tsv

log = logging.getLogger("osteoimmune")


def main(*, matrices, h5ad, params, min_donors, reference, seed, out):
    # X only: no raw counts
    adata = read_annotated(matrices, h5ad)
    species, group_key = adata.uns["osteoimmune"]["species"], params["group_key"]
    bone = receivers(adata, groupby=group_key, min_cells=params["min_cells"])
    log.info("bone-lineage receivers: %s", ", ".join(bone) or "none in this dataset")
    options = dict(
        min_cells=params["min_cells"],
        expr_prop=params["expr_prop"],
        n_perms=params["n_perms"],
        max_cells_per_group=params["max_cells_per_group"],
        reuse={},  # a condition of one sample is ranked once
    )
    by_condition = communication(adata, species=species, groupby=group_key, seed=seed, **options)
    unit = comparison_unit(adata.obs)  # samples, or samples x conditions
    per_sample = communication(
        adata, species=species, groupby=group_key, by=unit, seed=seed, **options
    ).rename(columns={unit: "sample"})
    axes = osteoimmune_axes(by_condition, species=species, receivers=bone)
    comparison = compare_communication(
        osteoimmune_axes(per_sample, species=species, receivers=bone),
        sample_design(adata, sample=unit),
        reference=reference,
        min_donors=min_donors,
    )
    write_tsv(by_condition, out["results"])
    axes.to_csv(out["axes"], sep="\t", index=False)
    comparison.to_csv(out["comparison"], sep="\t", index=False)


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            matrices=snakemake.input.matrices,
            h5ad=snakemake.input.h5ad,
            params=snakemake.params.communication,
            min_donors=snakemake.params.min_donors,
            reference=snakemake.params.reference,
            seed=snakemake.params.seed,
            out={k: snakemake.output[k] for k in ("results", "axes", "comparison")},
        )
