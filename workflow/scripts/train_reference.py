"""Snakemake rule train_reference: a CellTypist model from a labelled reference dataset."""

import logging

import anndata as ad

from osteoimmune.agreement import AUTHOR_KEY
from osteoimmune.reference import log_cp10k, train_model, training_labels
from osteoimmune.runlog import logged

log = logging.getLogger("osteoimmune")


def main(*, h5ad, label_map, min_cells, model_out, labels_out):
    adata = ad.read_h5ad(h5ad)
    dataset = adata.uns["osteoimmune"].get("dataset", h5ad)
    if AUTHOR_KEY not in adata.obs or adata.obs[AUTHOR_KEY].isna().all():
        msg = (
            f"Reference {dataset}: no author labels (registry `author_label`); a dataset with "
            "`reference: true` needs them. Remove `reference: true` or add its labels."
        )
        raise ValueError(msg)
    labels = training_labels(adata.obs[AUTHOR_KEY], min_cells=min_cells)
    unmapped = sorted(set(labels.dropna()) - set(map(str, label_map)))
    if unmapped:
        log.warning("reference labels missing from author_label_map: %s", unmapped)
    model = train_model(log_cp10k(adata), labels)
    log.info(
        "trained on %d cells, %d labels, %d genes",
        labels.notna().sum(),
        labels.nunique(),
        len(model.features),
    )
    summary = labels.value_counts().rename_axis("label").rename("n_cells").sort_index()
    summary.to_csv(labels_out, sep="\t")
    model.write(model_out)  # CellTypist's own format, as a registered model file


if __name__ == "__main__":
    with logged(snakemake.log[0]):
        main(
            h5ad=snakemake.input.h5ad,
            label_map=snakemake.params.label_map,
            min_cells=snakemake.params.min_cells,
            model_out=snakemake.output.model,
            labels_out=snakemake.output.labels,
        )
