"""Reference-based typing (CellTypist) and its reconciliation with the marker panels."""

import hashlib
import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, snakemake
from scipy import sparse

from osteoimmune.panels import UNASSIGNED
from osteoimmune.reference import (
    leave_one_donor_out,
    load_model,
    log_cp10k,
    predict,
    reconcile,
    sources_table,
    train_model,
    training_labels,
    vocabulary_calls,
)
from osteoimmune.registry import load_registry

CITE = "luecken2021_bmmc_cite"
PARENTS = {"CD4 T": "T cell", "CD8 T": "T cell"}


def _obs(marker_types, marker_lineages, margin=1.0):
    return pd.DataFrame(
        {
            "cell_type": marker_types,
            "cell_lineage": marker_lineages,
            "annotation_margin": margin,
        },
        index=[f"c{i}" for i in range(len(marker_types))],
    )


def _calls(types, lineages, confidence):
    return pd.DataFrame(
        {
            "reference_label": types,
            "reference_cell_type": types,
            "reference_lineage": lineages,
            "reference_confidence": confidence,
        },
        index=[f"c{i}" for i in range(len(types))],
    )


def _reconcile(obs, calls, **kwargs):
    settings = {
        "reference_types": {"classical monocyte", "cDC2", "CD4 T", "CD8 T", "mature B", "NK"},
        "reference_lineages": {"myeloid", "lymphoid"},
        "parents": PARENTS,
        "min_confidence": 0.5,
    }
    return reconcile(obs, calls, **{**settings, **kwargs})


def test_reference_decides_the_type_within_the_markers_lineage():
    obs = _obs(["classical monocyte", "classical monocyte", "NK"], ["myeloid"] * 2 + ["lymphoid"])
    calls = _calls(["cDC2", "classical monocyte", "NK"], ["myeloid", "myeloid", "lymphoid"], 0.9)
    final = _reconcile(obs, calls)
    assert final["cell_type"].tolist() == ["cDC2", "classical monocyte", "NK"]
    assert final["cell_type_source"].astype(str).tolist() == ["reference", "both", "both"]
    # The markers' monocyte call that the reference overrides is flagged, not hidden.
    assert final["cell_type_contradicted"].tolist() == [True, False, False]
    assert final["cell_type_confidence"].tolist() == [0.9, 0.9, 0.9]


def test_markers_keep_their_lineage_and_types_the_reference_lacks():
    obs = _obs(
        ["erythrocyte", "osteoclast", "LEPR+ CAR stromal", "classical monocyte"],
        ["erythroid", "myeloid", "stromal", "myeloid"],
    )
    calls = _calls(["NK", "classical monocyte", "classical monocyte", "cDC2"], None, 0.95)
    calls["reference_lineage"] = ["lymphoid", "myeloid", "myeloid", "myeloid"]
    final = _reconcile(obs, calls, reference_lineages={"myeloid", "lymphoid", "erythroid"})
    # erythroid: the reference (which knows erythroid) disagrees -> markers, flagged;
    # osteoclast: a type the reference has no label for -> markers;
    # stromal: a lineage the reference has no label for -> markers, not a contradiction.
    assert final["cell_type"].tolist() == [
        "erythrocyte",
        "osteoclast",
        "LEPR+ CAR stromal",
        "cDC2",
    ]
    assert final["cell_type_source"].astype(str).tolist() == [
        "markers",
        "markers",
        "markers",
        "reference",
    ]
    assert final["cell_type_contradicted"].tolist() == [True, False, False, True]


def test_cd4_cd8_only_with_the_markers_evidence():
    obs = _obs(["T cell", "CD8 T", "CD4 T", "T cell"], ["lymphoid"] * 4)
    calls = _calls(["CD4 T", "CD4 T", "CD4 T", "T cell"], ["lymphoid"] * 4, 0.9)
    final = _reconcile(obs, calls, reference_types={"CD4 T", "CD8 T", "T cell"})
    # No CD4 evidence -> T cell; markers' CD8 evidence wins over the reference's CD4 call;
    # agreement -> CD4 T; markers refine the reference's T cell.
    assert final["cell_type"].tolist() == ["T cell", "CD8 T", "CD4 T", "T cell"]
    assert final["cell_type_source"].astype(str).tolist() == ["both"] * 4


def test_unconfident_or_missing_reference_leaves_the_markers_call():
    obs = _obs(["classical monocyte", UNASSIGNED], ["myeloid", UNASSIGNED], margin=[3.0, 0.0])
    calls = _calls(["cDC2", None], ["myeloid", None], [0.3, np.nan])
    final = _reconcile(obs, calls)
    assert final["cell_type"].tolist() == ["classical monocyte", UNASSIGNED]
    assert final["cell_type_source"].astype(str).tolist() == ["markers", "markers"]
    # Marker confidence: lineage margin m as m / (1 + m).
    assert final["cell_type_confidence"].tolist() == [0.75, 0.0]
    assert not final["cell_type_contradicted"].any()


def test_vocabulary_calls_sum_fine_labels_of_one_type():
    vocabulary = pd.DataFrame(
        {"cell_type": ["CD4 T", "CD4 T", "NK", None], "lineage": ["lymphoid"] * 3 + ["hspc"]},
        index=["CD4 naive", "CD4 activated", "NK", "HSC"],
    )
    # NK is the single most likely label (0.4), but the two CD4 labels add up to 0.5.
    probabilities = np.array([[0.25, 0.25, 0.4, 0.1]])
    decisions = pd.DataFrame(np.log(probabilities), columns=vocabulary.index, index=["c0"])
    call, confidence = vocabulary_calls(decisions, vocabulary)
    assert call.tolist() == ["CD4 T"]
    assert confidence == pytest.approx([0.5])
    decisions.loc["c0"] = np.log([0.1, 0.1, 0.1, 0.7])
    call, _ = vocabulary_calls(decisions, vocabulary)
    assert call.tolist() == ["lineage: hspc"]


def test_log_cp10k_from_counts_and_from_log_normalised_values():
    counts = sparse.csr_matrix(np.array([[1, 0, 3], [0, 2, 2]], dtype=np.float32))
    adata = ad.AnnData(X=counts.copy(), layers={"counts": counts})
    expected = np.log1p(counts.toarray() / counts.toarray().sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(log_cp10k(adata).X.toarray(), expected, rtol=1e-6)
    # TPM-scale log values (no counts layer) are rescaled to 10,000 per cell.
    tpm = counts.toarray() / counts.toarray().sum(1, keepdims=True) * 1e6
    logged = ad.AnnData(X=sparse.csr_matrix(np.log1p(tpm)))
    np.testing.assert_allclose(log_cp10k(logged).X.toarray(), expected, rtol=1e-5)
    assert sparse.issparse(log_cp10k(logged).X)


def test_sources_table():
    obs = pd.DataFrame(
        {
            "cell_type": ["classical monocyte"] * 3 + ["NK"],
            "cell_lineage": ["myeloid"] * 3 + ["lymphoid"],
            "cell_type_source": ["both", "reference", "markers", "markers"],
            "cell_type_confidence": [0.9, 0.8, 0.5, 0.2],
            "cell_type_contradicted": [False, True, False, False],
        }
    )
    evidence = {"classical monocyte": "CD14 67%, LYZ 67%"}
    table = sources_table(obs, evidence=evidence, flags={"NK": "a caveat"})
    mono = table.set_index("cell_type").loc["classical monocyte"]
    assert (mono["n_cells"], mono["source_both"], mono["source_reference"]) == (3, 1, 1)
    assert (mono["median_confidence"], mono["contradicted"]) == (0.8, 1)
    assert table.set_index("cell_type").loc["NK", "flag"] == "a caveat"


@pytest.fixture(scope="module")
def cite(mirror):
    """Luecken CITE (2 donors, authors' labels), log1p CP10k from its raw counts."""
    entry = load_registry(REPO / "config" / "datasets.yaml")[CITE]
    path = mirror / CITE / "openproblems_bmmc_cite_starter.output_rna.h5ad"
    raw = ad.read_h5ad(path)
    raw.X = raw.layers["counts"]
    label_map = entry["author_label_map"]
    truth = (
        raw.obs["cell_type"].astype(str).map(lambda x: (label_map.get(x) or {}).get("cell_type"))
    )
    return log_cp10k(raw), raw.obs, label_map, truth


def test_cite_donor_to_donor_transfer(cite):
    """Donor 1 as the reference labels donor 2, and the reverse, with the authors' labels."""
    expression, obs, label_map, truth = cite
    donors = obs["batch"].astype(str)
    table, note = leave_one_donor_out(
        expression,
        obs["cell_type"],
        donors,
        label_map=label_map,
        min_cells=5,
        min_shared_genes=100,
    )
    assert "2 donors" in note
    assert table["reference_confidence"].between(0, 1).all()
    typed = truth.notna()
    for donor in sorted(donors.unique()):
        cells = typed & (donors == donor)
        called = table.loc[cells, "reference_cell_type"].astype(str)
        accuracy = (called == truth[cells]).mean()
        # Measured 0.64 (s1d1) and 0.61 (s1d2): the random 1,000-gene panel has no CD4, CD8A or
        # CD3E, so the reference alone mixes CD4 and CD8 T cells (the markers' CITE proteins
        # settle them; test_workflow_reference_typing). Bar set after measuring: a regression
        # check, not a target.
        assert accuracy > 0.55, (donor, accuracy)
        lineage = table.loc[cells, "reference_lineage"].astype(str)
        truth_lineage = obs.loc[cells, "cell_type"].map(
            lambda x: (label_map.get(str(x)) or {}).get("lineage")
        )
        assert (lineage == truth_lineage).mean() > 0.8


def test_a_model_sharing_too_few_genes_is_not_used(cite):
    expression, obs, _, _ = cite
    labels = training_labels(obs["cell_type"], min_cells=5)
    model = train_model(expression[:, :150].copy(), labels)
    table, note = predict(expression, model, label_map={}, min_shared_genes=200)
    assert "reference not used: only 150" in note
    assert table["reference_cell_type"].isna().all()


def test_workflow_reference_typing(run):
    """The default run: CITE typed donor by donor, mouse datasets by the Weinreb model."""
    results = run / "results"
    assert (results / "references" / "weinreb2020_larry_bm_culture" / "model.pkl").is_file()
    cite = ad.read_h5ad(results / CITE / f"{CITE}.h5ad")
    label_map = load_registry(REPO / "config" / "datasets.yaml")[CITE]["author_label_map"]
    truth = (
        cite.obs["author_cell_type"]
        .astype(str)
        .map(lambda x: (label_map.get(x) or {}).get("cell_type"))
    )
    assert "each of its 2 donors" in cite.uns["annotation"]["reference"]["note"]
    for donor in sorted(cite.obs["donor"].unique()):
        cells = truth.notna() & (cite.obs["donor"] == donor)
        accuracy = (cite.obs.loc[cells, "cell_type"].astype(str) == truth[cells]).mean()
        # Bar set before measuring: 0.70 (measured 0.90 for s1d1 and 0.82 for s1d2).
        assert accuracy >= 0.70, (donor, accuracy)
    sources = pd.read_csv(results / CITE / "tables" / "annotation_sources.tsv", sep="\t")
    assert sources["source_both"].sum() > sources["source_markers"].sum()
    assert (
        sources.loc[sources["cell_type"] == "classical monocyte", "marker_evidence"]
        .str.contains("%")
        .all()
    )
    # Matsushita's stroma: lineages the blood reference has no label for stay the markers'.
    stroma = pd.read_csv(
        results / "matsushita2023_bm_stroma" / "tables" / "annotation_sources.tsv", sep="\t"
    )
    assert stroma["source_reference"].sum() == 0 and stroma["contradicted"].sum() == 0


def _model_registry(folder, *, url, sha256):
    """The shipped registry's CITE entry plus a registered model at ``url``."""
    registry = yaml.safe_load((REPO / "config" / "datasets.yaml").read_text())
    entry = registry["datasets"][CITE]
    model = {
        "title": "test model: CellTypist trained on Luecken CITE donor s1d1",
        "species": "human",
        "source": "this test, from the mirror's Luecken 2021 CITE-seq counts and labels",
        "license": "CC BY 4.0",
        "file": {"url": url, "sha256": sha256, "format": "celltypist"},
        "label_map": entry["author_label_map"],
    }
    path = folder / "datasets.yaml"
    path.write_text(
        yaml.safe_dump({"datasets": {CITE: entry}, "models": {"bm_model": model}}, sort_keys=False)
    )
    return path


def test_registered_model_is_fetched_by_url_and_types_the_cells(
    cite, mirror, tmp_path, http_folder
):
    """A model file named in the registry (URL + sha256) is fetched, cached and used.

    The model is trained here on donor s1d1's cells (real mirror data) and served over HTTP,
    as a CellTypist atlas model would be; the workflow types donor s1d2 with it.
    """
    expression, obs, _, _ = cite
    donors = obs["batch"].astype(str)
    first = (donors == "s1d1").to_numpy()
    labels = training_labels(obs["cell_type"][first], min_cells=5)
    folder, base = http_folder
    train_model(expression[first].copy(), labels).write(str(folder / "bm_model.pkl"))
    served = (folder / "bm_model.pkl").read_bytes()
    assert load_model(folder / "bm_model.pkl", reference="bm_model").cell_types.size > 2
    sha = hashlib.sha256(served).hexdigest()
    registry = _model_registry(tmp_path, url=f"{base}/bm_model.pkl", sha256=sha)
    workdir = tmp_path / "work"
    target = f"results/{CITE}/intermediate/annotated.h5ad"
    settings = (f"registry={registry}", f'datasets=["{CITE}"]', f"mirror={mirror}")
    result = snakemake(workdir, *settings, targets=[target])
    assert result.returncode == 0, result.stderr[-5000:]

    # fetched once, verified, cached under resources/models; no model trained from the dataset
    manifest = json.loads((workdir / "resources/models/bm_model/fetch_manifest.json").read_text())
    (row,) = manifest["files"]
    assert (row["source"], row["checksum"], row["sha256"]) == ("download", "registry", sha)
    assert (workdir / row["path"]).read_bytes() == served
    assert not (workdir / "results" / "references").exists()
    annotated = ad.read_h5ad(workdir / target)
    reference = annotated.uns["annotation"]["reference"]
    assert reference["id"] == "bm_model" and reference["note"].startswith("reference used")
    # donor s1d2, never seen by the model, against its authors' labels
    label_map = load_registry(registry)[CITE]["author_label_map"]
    typed = (
        annotated.obs["author_cell_type"]
        .astype(str)
        .map(lambda x: (label_map.get(x) or {}).get("cell_type"))
    )
    cells = (annotated.obs["donor"].astype(str) == "s1d2") & typed.notna()
    final = (annotated.obs.loc[cells, "cell_type"].astype(str) == typed[cells]).mean()
    # bar set before measuring, as for the donor-to-donor transfer of the default run
    assert final >= 0.70, final
    assert (annotated.obs["cell_type_source"].astype(str) == "both").mean() > 0.3

    # a model whose bytes do not match the registry's sha256 is refused, naming it
    (folder / "bm_model.pkl").write_bytes(served + b"tampered")
    shutil.rmtree(workdir / "resources" / "models")
    again = snakemake(workdir, *settings, targets=["resources/models/bm_model/fetch_manifest.json"])
    assert again.returncode != 0
    log = (workdir / "logs" / "fetch_model" / "bm_model.log").read_text()
    assert "bm_model" in log and "sha256" in log
    assert not list((workdir / "resources" / "models").rglob("*.pkl"))


def test_a_file_that_is_not_a_celltypist_model_is_refused_naming_it(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"Reference 'atlas'.*model.pkl is not a CellTypist model"):
        load_model(path, reference="atlas")
