"""End to end: Snakemake runs the workflow on mirrored real data through the fetch path."""

import base64
import hashlib
import json
import re
import zipfile

import anndata as ad
import h5py
import pandas as pd
import pytest
import yaml
from conftest import MANIFEST_SHAPES, REPO, snakemake
from score_signatures import main as score_rule
from sklearn.metrics import roc_auc_score

from osteoimmune.panels import LINEAGES
from osteoimmune.scoring import score_signatures
from osteoimmune.signatures import load_library

pytestmark = pytest.mark.e2e

SHAPES = MANIFEST_SHAPES
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
# Datasets where no default set reaches the coverage threshold: the Luecken files hold a random
# gene panel (no CD14, LYZ, FCGR3A, CD68 or CSF1R). Paul 2015 (240 genes) has one: NET cargo.
UNSCORED = {"luecken2021_bmmc_cite", "luecken2021_bmmc_multiome"}
LABELLED = set(SHAPES) - {"shalek2014_bmdc_lps"}
# The M1/M2 gate: monocytes and macrophages, with the macrophage states.
GATED = [
    "classical monocyte",
    "non-classical monocyte",
    "macrophage",
    "lipid-associated macrophage",
    "erythroblastic-island macrophage",
    "osteal macrophage",
]
NOT_COUNTS = {"shalek2014_bmdc_lps", "weinreb2020_larry_bm_culture"}  # tpm, normalized


@pytest.mark.parametrize("dataset", list(SHAPES))
def test_shapes_as_read_equal_the_manifest(run, dataset):
    adata = ad.read_h5ad(run / "results" / dataset / "intermediate" / "read.h5ad", backed="r")
    assert adata.shape == SHAPES[dataset]


def test_fetch_went_through_the_mirror_and_kept_the_bytes(run, mirror):
    manifest = pd.read_csv(mirror / "MANIFEST.tsv", sep="\t")
    for dataset in SHAPES:
        fetched = json.loads((run / "resources" / dataset / "fetch_manifest.json").read_text())
        for item in fetched["files"]:
            assert item["source"] == "mirror"
            row = manifest[(manifest.dataset == dataset) & (manifest.file == item["filename"])]
            digest = hashlib.sha256((run / item["path"]).read_bytes()).hexdigest()
            assert digest == row.sha256.item()


@pytest.mark.parametrize("dataset", list(SHAPES))
def test_final_anndata_has_clusters_scores_and_labels(run, dataset):
    adata = ad.read_h5ad(run / "results" / dataset / f"{dataset}.h5ad")
    assert adata.obs["leiden"].nunique() >= 2
    assert "X_umap" in adata.obsm
    assert {"dataset", "sample", "donor", "condition"} <= set(adata.obs.columns)
    scores = [c for c in adata.obs.columns if c.startswith("score_")]
    assert bool(scores) != (dataset in UNSCORED)
    assert ("author_cell_type" in adata.obs) == (dataset in LABELLED)
    if dataset in LABELLED:
        assert adata.obs["author_cell_type"].nunique() >= 5
    coverage = pd.read_csv(
        run / "results" / dataset / "tables" / "signature_coverage.tsv", sep="\t", index_col=0
    )
    assert set(coverage.index[coverage["scored"]]) == {s.removeprefix("score_") for s in scores}
    reasons = coverage.loc[~coverage["scored"], "reason"]
    assert all(isinstance(r, str) and "%" in r or "no gene" in r for r in reasons)


@pytest.mark.parametrize("dataset", list(SHAPES))
def test_final_anndata_has_annotation_and_qc_per_sample(run, dataset):
    folder = run / "results" / dataset
    adata = ad.read_h5ad(folder / f"{dataset}.h5ad")
    assert set(adata.obs["cell_lineage"]) <= {*LINEAGES, "unassigned"}
    assert adata.obs["cell_type"].notna().all() and "annotation_margin" in adata.obs
    for metric in ("total_counts", "n_genes_by_counts", "pct_counts_mt"):
        assert metric in adata.obs
    # doublets are scored on counts only (non-count input skips count-based QC with a note)
    assert ("doublet_score" in adata.obs) == (dataset not in NOT_COUNTS)
    samples = pd.read_csv(folder / "intermediate" / "samples" / "samples.tsv", sep="\t")
    assert samples["cells"].sum() == SHAPES[dataset][0]
    for slug in samples["slug"]:  # one qc_sample job per sample
        assert (run / "logs" / "qc_sample" / dataset / f"{slug}.log").is_file()
    thresholds = pd.read_csv(folder / "tables" / "qc_thresholds.tsv", sep="\t")
    assert set(thresholds["sample"].astype(str)) == set(samples["sample"].astype(str))
    agreement = pd.read_csv(folder / "tables" / "annotation_agreement.tsv", sep="\t")
    assert agreement.empty == (dataset not in LABELLED)


def test_cite_monocytes_carry_cd14_protein(run):
    agreement = pd.read_csv(
        run / "results" / "luecken2021_bmmc_cite" / "tables" / "annotation_agreement.tsv", sep="\t"
    ).set_index("metric")
    assert agreement.loc["CD14_auroc", "annotation"] >= 0.9


def test_lps_raises_the_m1_score_in_shalek_dendritic_cells(run):
    adata = ad.read_h5ad(run / "results" / "shalek2014_bmdc_lps" / "shalek2014_bmdc_lps.h5ad")
    lps = (adata.obs["condition"] == "LPS_6h").to_numpy()
    assert roc_auc_score(lps, adata.obs["score_macrophage_M1_classical_core"]) >= 0.98
    # the calibrated z-score keeps the separation
    assert roc_auc_score(lps, adata.obs["z_macrophage_M1_classical_core"]) >= 0.98


def test_bone_and_net_programs_do_not_follow_lps_in_shalek(run):
    adata = ad.read_h5ad(run / "results" / "shalek2014_bmdc_lps" / "shalek2014_bmdc_lps.h5ad")
    lps = (adata.obs["condition"] == "LPS_6h").to_numpy()
    assert 0.35 <= roc_auc_score(lps, adata.obs["score_neutrophil_NET_machinery"]) <= 0.65
    # the osteoclast (47% of genes present) and osteoblast (31%) sets fall below the 50%
    # coverage threshold here, so the workflow does not score them; scored with a lower
    # threshold they must not separate LPS from unstimulated cells either
    bone = ["osteoclast_differentiation_core", "osteoblast_lineage_core"]
    coverage = score_signatures(
        adata,
        load_library(),
        species="mouse",
        sets=bone,
        min_coverage=0.3,
        case_insensitive=True,
        seed=0,
    )
    assert coverage["scored"].all()
    for name in bone:
        assert 0.35 <= roc_auc_score(lps, adata.obs[f"score_{name}"]) <= 0.65, name


def test_lps_cells_are_called_m1_like_in_the_shalek_state_map(run):
    """The registry gates every Shalek cell (a GM-CSF culture by design) into the M1/M2 states."""
    folder = run / "results" / "shalek2014_bmdc_lps"
    adata = ad.read_h5ad(folder / "shalek2014_bmdc_lps.h5ad")
    polarization = adata.uns["osteoimmune"]["polarization"]
    assert polarization["gated_cells"] == adata.n_obs
    assert polarization["gate"].startswith("all cells, by design: every cell is a GM-CSF")
    states = adata.obs["polarization_state"].astype(str)
    lps = (adata.obs["condition"] == "LPS_6h").to_numpy()
    # M1 significant (M1-like, or mixed: LPS also induces some M2a-core genes) in most LPS
    # cells and in (almost) no unstimulated cell
    m1_called = states.isin(["M1-like", "mixed"]).to_numpy()
    assert m1_called[lps].mean() >= 0.5
    assert m1_called[~lps].mean() <= 0.1
    assert (states[lps] == "M1-like").sum() > (states[~lps] == "M1-like").sum()
    assert roc_auc_score(lps, adata.obs["polarization_index"]) >= 0.9
    html = (folder / "report.html").read_text()
    assert "m1_m2_state_map.png" in html and "Cells in the gate: all cells, by design" in html
    assert "M1/M2 state map:" not in html  # not listed under "Not shown for this dataset"


def test_user_gmt_set_is_scored_by_the_score_step(run, tmp_path):
    """signatures.user_sets through the workflow's score step, on the Shalek cells."""
    gmt = tmp_path / "mine.gmt"
    # interferon-stimulated genes that LPS induces in these cells (Shalek et al. 2014)
    gmt.write_text(
        "my_lps_isg\tinterferon response, user set\tIfit1\tIfit3\tIsg15\tRsad2"
        "\tCxcl10\tIrf7\tOasl1\tMx1\n"
    )
    params = {**CONFIG["signatures"], "user_sets": [{"path": str(gmt), "species": "mouse"}]}
    folder = run / "results" / "shalek2014_bmdc_lps"
    names = ("coverage", "agreement", "by_group", "states", "genes")
    tables = {name: tmp_path / f"{name}.tsv" for name in names}
    score_rule(
        matrices=folder / "intermediate" / "clustered.h5ad",
        h5ad=folder / "intermediate" / "annotated.h5ad",
        params=params,
        seed=0,
        out=tmp_path / "scored.h5ad",
        tables=tables,
    )
    adata = ad.read_h5ad(tmp_path / "scored.h5ad")
    lps = (adata.obs["condition"] == "LPS_6h").to_numpy()
    assert roc_auc_score(lps, adata.obs["z_my_lps_isg"]) >= 0.95
    coverage = pd.read_csv(tables["coverage"], sep="\t", index_col=0)
    assert bool(coverage.loc["my_lps_isg", "scored"])
    # the library's own defaults are still scored beside it
    assert "score_macrophage_M1_classical_core" in adata.obs


def test_matsushita_bone_programs_peak_in_the_authors_populations(run):
    path = run / "results" / "matsushita2023_bm_stroma" / "matsushita2023_bm_stroma.h5ad"
    obs = ad.read_h5ad(path).obs
    means = obs.groupby("author_cell_type", observed=True)[
        ["score_osteoblast_lineage_core", "score_bm_stromal_LEPR_CAR_niche"]
    ].mean()
    assert means["score_osteoblast_lineage_core"].idxmax() == "OS"
    assert means["score_bm_stromal_LEPR_CAR_niche"].idxmax() == "RE"


def test_final_h5ad_is_the_clustered_matrices_with_the_annotations_and_scores(run):
    """annotate_cells and score_signatures write annotations alone; export_h5ad joins them."""
    folder = run / "results" / "matsushita2023_bm_stroma"
    final = ad.read_h5ad(folder / "matsushita2023_bm_stroma.h5ad")
    clustered = ad.read_h5ad(folder / "intermediate" / "clustered.h5ad")
    annotated = ad.read_h5ad(folder / "intermediate" / "annotated.h5ad")
    scores = ad.read_h5ad(folder / "intermediate" / "scores.h5ad")
    for small in (annotated, scores):  # no matrices, no graph
        assert small.X is None and not small.layers and not small.obsp
    assert "cell_type" in annotated.obs and "cell_type" not in clustered.obs
    assert final.obs.equals(scores.obs) and "score_osteoblast_lineage_core" in final.obs
    assert final.obs[annotated.obs.columns].equals(annotated.obs)
    assert list(final.obsm) == list(scores.obsm) and "signature_p" in final.obsm
    assert (final.X != clustered.X).nnz == 0
    assert (final.layers["counts"] != clustered.layers["counts"]).nnz == 0
    assert (final.obsp["connectivities"] != clustered.obsp["connectivities"]).nnz == 0


def test_final_h5ad_is_written_with_gzip_at_level_1(run):
    """The h5ad a user opens: gzip, which every HDF5 reader has, at the fast level 1."""
    path = run / "results" / "matsushita2023_bm_stroma" / "matsushita2023_bm_stroma.h5ad"
    with h5py.File(path, "r") as f:
        data = f["X"]["data"] if isinstance(f["X"], h5py.Group) else f["X"]
        assert (data.compression, data.compression_opts) == ("gzip", 1)


@pytest.mark.parametrize("dataset", sorted(set(SHAPES) - UNSCORED))
def test_scores_are_calibrated_and_states_called_in_the_gate(run, dataset):
    folder = run / "results" / dataset
    adata = ad.read_h5ad(folder / f"{dataset}.h5ad")
    scored = [c.removeprefix("score_") for c in adata.obs if c.startswith("score_")]
    assert all(f"z_{name}" in adata.obs for name in scored)
    assert list(adata.obsm["signature_p"].columns) == scored
    agreement = pd.read_csv(folder / "tables" / "method_agreement.tsv", sep="\t", index_col=0)
    assert sorted(agreement.index) == sorted(scored)
    if "polarization_state" in adata.obs:
        # the gate's types and their states (lipid-associated macrophage is a macrophage)
        gated = adata.obs["cell_type"].isin(GATED)
        if dataset == "shalek2014_bmdc_lps":  # the registry's polarization_gate: all cells
            gated[:] = True
        assert adata.obs.loc[~gated, "polarization_state"].isna().all()
        assert set(adata.obs.loc[gated, "polarization_state"].dropna()) <= {
            "M1-like",
            "M2-like",
            "mixed",
            "unpolarized",
        }


@pytest.mark.parametrize("dataset", list(SHAPES))
def test_report_images_are_real_pngs_and_files_exist(run, dataset):
    folder = run / "results" / dataset
    html = (folder / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    files = re.findall(r'data-file="([^"]+)"', html)
    assert len(sources) >= 4 + (dataset not in UNSCORED) and len(files) == len(sources)
    for src, name in zip(sources, files, strict=True):
        png = base64.b64decode(src.removeprefix("data:image/png;base64,"))
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert (folder / name).read_bytes() == png
    assert "Provenance" in html and "sha256" in html


@pytest.mark.parametrize("dataset", list(SHAPES))
def test_every_report_figure_has_an_svg_copy(run, dataset):
    folder = run / "results" / dataset / "figures"
    pngs = sorted(folder.glob("*.png"))
    assert pngs
    for png in pngs:
        svg = png.with_suffix(".svg").read_text()
        assert "<svg" in svg and "</svg>" in svg


def test_conditions_are_compared_across_donors_not_cells(run):
    # Shalek: LPS vs unstimulated cells of one pool of mice (one donor): descriptive only
    tables = run / "results" / "shalek2014_bmdc_lps" / "tables"
    table = pd.read_csv(tables / "condition_comparison.tsv", sep="\t")
    assert not table.empty and table["descriptive_only"].all() and table["p_value"].isna().all()
    m1 = table[
        (table["variable"] == "z_macrophage_M1_classical_core")
        & (table["n_donors_a"] > 0)
        & (table["n_donors_b"] > 0)
    ]
    # the registry's reference condition comes first; LPS raises M1 in every cell type that
    # has cells of both conditions
    assert not m1.empty
    assert set(zip(m1["condition_a"], m1["condition_b"], strict=True)) == {
        ("Unstimulated", "LPS_6h")
    }
    assert (m1["difference"] > 0).all(), m1
    assert "descriptive" in (tables / "condition_design.txt").read_text()
    aggregates = pd.read_csv(tables / "donor_aggregates.tsv", sep="\t")
    assert set(aggregates["condition"]) == {"Unstimulated", "LPS_6h"}
    # one condition: an empty comparison and a note saying so
    paul = run / "results" / "paul2015_bm_myeloid" / "tables"
    assert (paul / "condition_design.txt").read_text().startswith("One condition only")
    html = (run / "results" / "shalek2014_bmdc_lps" / "report.html").read_text()
    assert "Comparison of conditions" in html and "donor_comparison.png" in html


def test_shalek_case_control_comparisons_stay_descriptive_saying_why(run):
    # one pool of mice in two conditions, TPM values: no pseudobulk DE, no composition test
    tables = run / "results" / "shalek2014_bmdc_lps" / "tables"
    de = pd.read_csv(tables / "pseudobulk_summary.tsv", sep="\t")
    assert not de["tested"].any() and de["reason"].str.contains("not raw counts").all()
    composition = pd.read_csv(tables / "composition_test.tsv", sep="\t")
    assert not composition.empty and not composition["tested"].any()
    assert composition["reason"].str.len().gt(0).all()
    communication = pd.read_csv(tables / "communication_comparison.tsv", sep="\t")
    assert communication.empty or communication["descriptive_only"].all()
    # Luecken CITE: two donors of one condition; DE needs two conditions
    cite = pd.read_csv(
        run / "results" / "luecken2021_bmmc_cite" / "tables" / "pseudobulk_summary.tsv", sep="\t"
    )
    assert not cite["tested"].any()


def test_liana_axes_reach_bone_lineage_receivers_in_the_stroma(run):
    # Matsushita's endosteal stroma: osteoblast-lineage, chondrocyte and CAR cells receive
    folder = run / "results" / "matsushita2023_bm_stroma"
    axes = pd.read_csv(folder / "tables" / "communication_axes.tsv", sep="\t")
    assert not axes.empty and set(axes["resource"]) <= {"mouseconsensus", "baccin2019"}
    rankl = axes[axes["ligand_complex"] == "Tnfsf11"]
    assert set(rankl["axis"]) & {"RANKL-RANK", "OPG decoy"}
    assert (axes["receiver_role"] == "bone lineage").any()
    assert "unassigned" not in set(axes["source"]) | set(axes["target"])
    html = (folder / "report.html").read_text()
    assert "Bone-lineage receivers:" in html and "none in this dataset" not in html


def test_enrichment_runs_offline_per_cell_type(run):
    tables = run / "results" / "weinreb2020_larry_bm_culture" / "tables"
    prerank = pd.read_csv(tables / "enrichment_prerank.tsv", sep="\t")
    assert {"immature neutrophil", "classical monocyte"} <= set(prerank["cell_type"])
    assert "unassigned" not in set(prerank["cell_type"])
    # only cell types with enough cells are ranked
    cells = (
        ad.read_h5ad(
            run / "results" / "weinreb2020_larry_bm_culture" / "weinreb2020_larry_bm_culture.h5ad"
        )
        .obs["cell_type"]
        .value_counts()
    )
    minimum = CONFIG["enrichment"]["min_cells"]
    assert set(prerank["cell_type"]) == set(cells.index[cells >= minimum]) - {"unassigned"}
    # granule proteins (Elane, Mpo, Prtn3, Ctsg) are made by promyelocytes and myelocytes
    immature = prerank[prerank["cell_type"] == "immature neutrophil"].set_index("term")
    assert immature.loc["neutrophil_NET_granule_cargo", "nes"] > 0
    assert immature.loc["neutrophil_NET_granule_cargo", "fdr"] < 0.05
    ora = pd.read_csv(tables / "enrichment_ora.tsv", sep="\t", dtype={"leiden": str})
    assert not ora.empty and (ora["fdr"] < 0.05).any()
    gmt = (tables / "gene_sets.gmt").read_text().splitlines()
    assert any(line.startswith("neutrophil_NET_granule_cargo\t") for line in gmt)
    html = (run / "results" / "weinreb2020_larry_bm_culture" / "report.html").read_text()
    assert "enrichment_top_terms.png" in html


def test_snakemake_report_builds_with_captions(run, tmp_path):
    out = tmp_path / "report.zip"
    result = snakemake(
        run,
        f"datasets={json.dumps(list(SHAPES))}",
        "offline=True",
        options=["--report", str(out)],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        page = archive.read("report/report.html").decode()
    assert sum(n.endswith("/condition_comparison.tsv") for n in names) == len(SHAPES)
    assert sum(n.endswith("/report.html") for n in names) >= len(SHAPES)
    for category in ("Quality control", "Cell types", "Signatures", "Enrichment"):
        assert category in page
    assert "Prerank GSEA (gseapy, offline) per cell type" in page  # a caption


def test_intermediate_files_use_the_configured_compression(run):
    folder = run / "results" / "paul2015_bm_myeloid"
    with h5py.File(folder / "intermediate" / "qc.h5ad", "r") as handle:
        # config intermediate_compression none: stored uncompressed and contiguous
        assert handle["X/data"].compression is None and handle["X/data"].chunks is None
    with h5py.File(folder / "paul2015_bm_myeloid.h5ad", "r") as handle:
        assert handle["X/data"].compression == "gzip"  # the final file, for any HDF5 reader


def test_index_links_every_report(run):
    html = (run / "results" / "index.html").read_text()
    links = set(re.findall(r'href="([^"]+/report\.html)"', html))
    assert links == {f"{d}/report.html" for d in SHAPES}
    assert all((run / "results" / link).is_file() for link in links)
    assert "<td>tpm</td>" in html and "<td>normalized</td>" in html


def test_offline_miss_fails_naming_the_files_and_leaves_nothing(tmp_path):
    empty = tmp_path / "empty_mirror"
    empty.mkdir()
    workdir = tmp_path / "run"
    result = snakemake(
        workdir,
        'datasets=["paul2015_bm_myeloid"]',
        f"mirror={empty}",
        "offline=True",
        targets=["resources/paul2015_bm_myeloid/fetch_manifest.json"],
    )
    assert result.returncode != 0
    log = (workdir / "logs" / "fetch_dataset" / "paul2015_bm_myeloid.log").read_text()
    assert "countMatrix.rda" in log and "celltype.rda" in log
    assert "https://raw.githubusercontent.com/statOmics/tradeSeq" in log
    leftovers = list((workdir / "resources").rglob("*")) if (workdir / "resources").exists() else []
    assert [p for p in leftovers if p.is_file()] == []


def test_report_shows_the_annotation_per_cluster_with_its_basis(run):
    html = (run / "results" / "paul2015_bm_myeloid" / "report.html").read_text()
    section = html[html.index("<h2>Cell types</h2>") : html.index("<h2>Signature scores</h2>")]
    for heading in (
        "Composition per sample",
        "Lineage per cluster",
        "Agreement with the authors' labels",
        "Confusion: author labels",
    ):
        assert f"<h3>{heading}" in section
    # the registry's progenitor sort, named where it made a lineage
    assert "<td>progenitor sort, no committed lineage</td>" in section
    assert "the registry says every cell was sorted Lin- c-Kit+ Sca-1-" in section
    cite = (run / "results" / "luecken2021_bmmc_cite" / "report.html").read_text()
    assert "Lineage per cluster" in cite and "progenitor sort" not in cite


def test_mirror_and_offline_do_not_rerun_finished_results(run, tmp_path):
    # where the files come from and whether the network may be used are run settings, not
    # inputs of any result: changing them plans nothing for a finished run
    dry = snakemake(
        run,
        f"datasets={json.dumps(list(SHAPES))}",
        f"mirror={tmp_path}",
        "offline=False",
        options=["--dry-run"],
    )
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = set(re.findall(r"^(?:local)?rule (\w+):", dry.stdout + dry.stderr, flags=re.M))
    assert planned == set(), planned


def test_gzipped_tables_carry_no_timestamp(run):
    # a gzip header's MTIME (bytes 4-8) is the write time unless set: two identical runs at
    # different times would differ byte for byte. Every gzipped table writes it as 0.
    tables = sorted((run / "results").glob("*/tables/*.gz"))
    assert {path.name for path in tables} >= {
        "qc_cells.tsv.gz",
        "pseudobulk_de.tsv.gz",
        "communication.tsv.gz",
    }
    stamped = [str(path) for path in tables if path.read_bytes()[4:8] != b"\0\0\0\0"]
    assert not stamped
