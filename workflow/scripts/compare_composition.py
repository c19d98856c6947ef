"""Snakemake rule compare_composition: cell-type proportions per sample, tested per cell type."""

from osteoimmune.composition import composition_test, sample_proportions
from osteoimmune.runlog import logged
from osteoimmune.samples import comparison_unit, read_parts


def main(*, h5ad, params, reference, paired, proportions_out, test_out):
    adata = read_parts(h5ad, x=False)
    obs, covariates = adata.obs.copy(), list(adata.uns["osteoimmune"].get("covariates", []))
    group_key, unit = params["group_key"], comparison_unit(obs)
    reference = reference or obs["condition"].cat.categories[0]
    proportions = sample_proportions(obs, group_key=group_key, sample_key=unit)
    proportions.to_csv(proportions_out, sep="\t", index=False)
    composition_test(
        obs,
        sample_key=unit,
        group_key=group_key,
        reference=reference,
        covariates=covariates,
        paired=paired,
        min_samples=params["min_samples"],
    ).to_csv(test_out, sep="\t", index=False)


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            params=snakemake.params.composition,
            reference=snakemake.params.reference,
            paired=snakemake.params.paired,
            proportions_out=snakemake.output.proportions,
            test_out=snakemake.output.test,
        )
