"""Snakemake rule compare_conditions: per-donor aggregates and tests across donors."""

from osteoimmune.compare import compare_conditions, design_note, donor_aggregates
from osteoimmune.runlog import logged
from osteoimmune.samples import read_parts

PREFIX = {"z": "z_", "score": "score_"}


def main(*, h5ad, params, reference, aggregates_out, comparison_out, note_out):
    obs = read_parts(h5ad, x=False).obs
    group_key = params["group_key"]
    scores = [c for c in obs.columns if c.startswith(PREFIX[params["values"]])]
    aggregates = donor_aggregates(
        obs, score_columns=scores, group_key=group_key, min_cells=params["min_cells"]
    )
    comparison = compare_conditions(
        aggregates, reference=reference, group_key=group_key, min_donors=params["min_donors"]
    )
    aggregates.to_csv(aggregates_out, sep="\t", index=False)
    comparison.to_csv(comparison_out, sep="\t", index=False)
    with open(note_out, "w", encoding="utf-8") as handle:
        handle.write(design_note(aggregates, min_donors=params["min_donors"]) + "\n")


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            params=snakemake.params.compare,
            reference=snakemake.params.reference,
            aggregates_out=snakemake.output.aggregates,
            comparison_out=snakemake.output.comparison,
            note_out=snakemake.output.note,
        )
