"""A user's own small dataset with a minimal registry entry runs to its report.

Test input rebuilt from the mirror's bytes: real bone-marrow cells drawn from the Luecken 2021
CITE-seq counts, registered with only the entry's required fields (no doi, accession, records,
author labels) as a user's own local file.
"""

import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, snakemake

pytestmark = pytest.mark.e2e

CITE = "luecken2021_bmmc_cite/openproblems_bmmc_cite_starter.output_rna.h5ad"


def run_user_dataset(mirror, tmp_path, *, name: str, n_cells: int, seed: int, config: dict):
    """``n_cells`` drawn from the CITE-seq counts, run fetch to report as dataset ``name``.

    ``config`` is merged over the repository's config. Returns the dataset's results folder.
    """
    source = ad.read_h5ad(mirror / CITE)
    cells = np.sort(np.random.default_rng(seed).choice(source.n_obs, n_cells, replace=False))
    part = ad.AnnData(X=source.layers["counts"][cells], var=source.var[[]])
    part.obs_names = source.obs_names[cells]
    part.write_h5ad(tmp_path / f"{name}.h5ad")
    entry = {  # the schema's required fields only: every optional field left out
        "title": f"{n_cells} cells",
        "species": "human",
        "tissue": "bone marrow",
        "paper": f"test input: {n_cells} cells of Luecken et al. 2021",
        "license": "CC-BY-4.0",
        "values": "counts",
        "metadata": {k: {"constant": v} for k, v in (("sample", "s1"), ("donor", "d1"))}
        | {"condition": {"constant": "c"}},
        "files": [{"role": "counts", "format": "h5ad", "path": str(tmp_path / f"{name}.h5ad")}],
    }
    registry = tmp_path / "datasets.yaml"
    registry.write_text(yaml.safe_dump({"datasets": {name: entry}}, sort_keys=False))
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump(config))
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = snakemake(
        workdir,
        f"registry={registry}",
        "datasets=all",
        options=["--configfile", str(REPO / "config" / "config.yaml"), str(extra)],
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir / "results" / name


def test_ten_cells_with_a_minimal_entry_get_a_caveat_and_one_cluster(mirror, tmp_path):
    # as the QC error advises for so few cells: a lower minimum per sample
    config = {"qc": {"min_cells_per_sample": 5}}
    results = run_user_dataset(mirror, tmp_path, name="tiny", n_cells=10, seed=0, config=config)
    adata = ad.read_h5ad(results / "tiny.h5ad", backed="r")
    assert adata.obs["leiden"].nunique() == 1  # no clustering grid on 10 cells
    assert pd.read_csv(results / "tables" / "cluster_stability.tsv", sep="\t").empty
    page = re.sub(r"\s+", " ", (results / "report.html").read_text())
    caveat = page[page.index('id="small-dataset"') :][:600]
    assert "Small dataset." in caveat and "exploratory" in caveat
    assert f"Only {adata.n_obs} cells after QC" in caveat and "one cluster" in caveat
    assert "doi" not in page[page.index("<h2>Provenance") : page.index("<h2>Design")]
    assert "tiny/report.html" in (results.parent / "index.html").read_text()


def test_marker_cap_is_recorded_in_the_h5ad_and_said_in_the_report(mirror, tmp_path):
    """A low marker cap, set by the user, reaches the final h5ad and the report's markers.

    300 cells, so that clusters have more than the cap's 25 cells.
    """
    config = {"cluster": {"marker_max_cells_per_cluster": 25}}
    results = run_user_dataset(mirror, tmp_path, name="part", n_cells=300, seed=1, config=config)
    adata = ad.read_h5ad(results / "part.h5ad", backed="r")
    sizes = adata.obs["leiden"].value_counts()
    assert sizes.max() > 25  # so the cap applied
    params = adata.uns["rank_genes_groups"]["params"]
    assert params["max_cells_per_group"] == 25 and "seed" in params
    page = re.sub(r"\s+", " ", (results / "report.html").read_text())
    assert "Clusters of more than 25 cells were tested on 25 of their cells" in page
    table = pd.read_csv(results / "tables" / "markers.tsv", sep="\t", dtype={"cluster": str})
    assert set(table["cluster"]) == set(sizes.index.astype(str))
