"""Report rendering: escaping, embedded figures, index rows, on synthetic AnnData."""

import base64
import io
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from osteoimmune import figures
from osteoimmune.compare import (
    compare_conditions,
    comparison_plot_data,
    design_note,
    donor_aggregates,
)
from osteoimmune.report import (
    AXIS_GENES,
    GENE_ALIASES,
    cell_type_calls,
    dataset_report,
    index_row,
    key_signature_block,
    markers_note,
    rankl_opg_note,
    render,
)
from osteoimmune.report_conditions import top_changes
from osteoimmune.report_index import dataset_files, earlier_datasets, index_page


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    n = 60
    adata = ad.AnnData(
        X=sp.random(n, 30, density=0.2, format="csr", dtype=np.float32, random_state=0)
    )
    adata.obs_names = [f"c{i}" for i in range(n)]
    adata.obs["sample"] = pd.Categorical(["s1"] * n)
    adata.obs["condition"] = pd.Categorical(["a", "b"] * (n // 2))
    # four donors per condition, ids like "a0" ... "b3"
    adata.obs["donor"] = [f"{c}{(i // 2) % 4}" for i, c in enumerate(adata.obs["condition"])]
    adata.obs["author_cell_type"] = pd.Categorical(["<b>T</b>", "Mono"] * (n // 2))
    adata.obs["leiden"] = pd.Categorical(rng.integers(0, 3, n).astype(str))
    adata.obs["cell_lineage"] = pd.Categorical(["myeloid"] * n)
    adata.obs["cell_type"] = pd.Categorical(["classical monocyte"] * n)
    for metric in ("total_counts", "n_genes_by_counts", "pct_counts_mt"):
        adata.obs[metric] = rng.random(n) * 100
    adata.obs["score_M1"] = rng.normal(size=n)
    adata.obs["z_M1"] = adata.obs["score_M1"] + 2.0 * (adata.obs["condition"] == "b")
    adata.obsm["X_umap"] = rng.normal(size=(n, 2))
    adata.uns["osteoimmune"] = {
        "dataset": "toy",
        "species": "mouse",
        "value_type": "tpm",
        "normalization": "log1p",
        "qc_note": "values are tpm",
        "integration": "none",
        "seed": 0,
        "pca_input": "log1p",
        "clustering": {"resolution": 0.4, "n_clusters": 3, "reason": "most stable"},
    }
    return adata


def test_dataset_report_escapes_text_and_embeds_every_figure(scored, tmp_path):
    entry = {
        "title": "<script>alert(1)</script>",
        "species": "mouse",
        "tissue": "bm",
        "paper": "P & Q",
        "doi": None,
        "accession": None,
        "license": "MIT",
    }
    manifest = {
        "files": [
            {
                "filename": "x.h5ad",
                "role": "counts",
                "url": "https://e.org/x",
                "sha256": "0" * 64,
                "bytes": 1,
                "source": "mirror",
            }
        ]
    }
    by_group = pd.DataFrame(
        {
            "grouping": ["cell_type"] * 2,
            "value": ["score", "z"],
            "group": ["classical monocyte"] * 2,
            "n_cells": [60, 60],
            "M1": [0.1, 1.2],
        }
    )
    tables = {
        "design": pd.DataFrame(
            {
                "sample": ["s1"],
                "donor": ["d1"],
                "condition": ["c"],
                "age": [61.0],
                "cells_read": [70],
                "cells_after_qc": [60],
            }
        ),  # fmt: skip
        "qc": pd.DataFrame({"cells_in": [60]}),
        "lineage": pd.DataFrame({"sample": ["s1"], "qc_group": ["0"], "cells": [60]}),
        "stability": pd.DataFrame(
            {
                "resolution": [0.2, 0.4],
                "n_clusters": [2, 3],
                "mean_ari": [0.9, 0.95],
                "sd_ari": [0.01, 0.02],
            }
        ),
        "markers": pd.DataFrame(
            {"cluster": ["0", "0", "1"], "rank": [1, 2, 1], "gene": ["Lyz2", "Cd14", "Cd3e"]}
        ),
        "coverage": pd.DataFrame({"scored": [True]}, index=["M1"]),
        "by_group": by_group,
        "method_agreement": pd.DataFrame(
            {"spearman": [0.9], "n_cells": [60]}, index=pd.Index(["M1"], name="set")
        ),
        "states": pd.DataFrame(),
        "genes": pd.DataFrame(
            {
                "cell_type": ["classical monocyte"],
                "gene": ["Tnfsf11"],
                "mean": [0.5],
                "fraction": [0.3],
                "n_cells": [60],
                "present": [True],
            }
        ),
        "qc_cells": scored.obs.assign(qc_pass=True),
        "agreement": pd.DataFrame(
            {
                "level": ["lineage"],
                "metric": ["accuracy"],
                "reference": ["<i>authors</i>"],
                "annotation": [0.9],
            }
        ),
        "confusion": pd.DataFrame(
            {
                "author_lineage": ["myeloid"],
                "author_cell_type": ["x"],
                "n_cells": [60],
                "classical monocyte": [60],
            },
            index=pd.Index(["Mono"], name="author_label"),
        ),
        "composition": pd.DataFrame(
            {
                "sample": "s1",
                "cell_lineage": "myeloid",
                "cell_type": ["classical monocyte"],
                "n_cells": [60],
                "fraction": [1.0],
            }
        ),
        "panel_coverage": pd.DataFrame(
            {
                c: ["x"]
                for c in (
                    "lineage",
                    "cell_type",
                    "n_genes",
                    "n_present",
                    "used",
                    "complete",
                    "reason",
                    "sources",
                )
            },
            index=["mono"],
        ),
        "qc_thresholds": pd.DataFrame(
            {
                "sample": "s1",
                "scope": "sample",
                "metric": ["total_counts", "pct_counts_mt"],
                "lower": [5.0, None],
                "upper": [90.0, 20.0],
                "cells": scored.n_obs,
            }
        ),
    }
    for key in ("de_results", "de_summary", "de_genes", "de_enrichment", "composition_props",
                "composition_test", "communication", "communication_axes",
                "communication_comparison"):  # fmt: skip
        tables[key] = pd.DataFrame()  # no case-control result: sections say so
    aggregates = donor_aggregates(scored.obs, score_columns=["z_M1"], min_cells=3)
    tables["aggregates"] = aggregates
    tables["comparison"] = compare_conditions(aggregates)
    tables["prerank"] = pd.DataFrame(
        {
            "cell_type": ["classical monocyte", "classical monocyte"],
            "term": ["M1", "<u>M2</u>"],
            "es": [0.8, -0.5],
            "nes": [1.9, -1.2],
            "pval": [0.001, 0.2],
            "fdr": [0.002, 0.3],
            "n_genes": [10, 8],
            "n_ranked": [30, 30],
            "lead_genes": ["Il1b;Tnf", "Mrc1"],
        }
    )
    tables["ora"] = pd.DataFrame(
        {
            "leiden": ["0"],
            "term": ["M1"],
            "overlap": ["2/10"],
            "n_overlap": [2],
            "set_size": [10],
            "n_query": [5],
            "pval": [0.01],
            "fdr": [0.02],
            "odds_ratio": [9.0],
            "genes": ["Il1b;Tnf"],
        }
    )
    config = {"seed": 0, "compare": {"group_key": "cell_type", "min_donors": 3}}
    scored.uns["rank_genes_groups"] = {"params": {"max_cells_per_group": 2000, "seed": 0}}
    html = dataset_report(
        scored,
        entry=entry,
        manifest=manifest,
        tables=tables,
        group_key="cell_type",
        enrichment_key="cell_type",
        composition_key="cell_type",
        communication_key="cell_type",
        min_donors=3,
        pseudobulk_min_cells=10,
        pseudobulk_min_counts=1000,
        pseudobulk_min_samples=2,
        pseudobulk_n_top=30,
        shown_config=config,
        fig_dir=tmp_path / "figures",
        design_note=design_note(aggregates) + " <b>x</b>",
        sources=pd.read_csv(io.StringIO(SOURCES_TSV), sep="\t", dtype={"flag": str}),
    )
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    # no header-only table: an empty one is a sentence saying why
    assert not re.search(r"<tbody>\s*</tbody>", html)
    assert "No polarization states: no M1 and M2 set were both scored" in html
    assert "No osteoimmune axis between the cell types of this dataset." in html
    # the cell type calls, flags in a warning box
    calls = html[html.index('id="cell-type-calls"') : html.index("<h3>Composition per sample")]
    assert '<div class="warning">' in calls and "<strong>osteoclast</strong>: bone cell" in calls
    assert "CD14 92%, LYZ 99%" in calls
    # the toy data have RANKL only: OPG is said to be absent, plainly
    assert "OPG (TNFRSF11B) is absent from this dataset" in html
    assert "RANKL (Tnfsf11) is shown in the dot plot" in html
    assert "P &amp; Q" in html
    sources = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    files = re.findall(r'data-file="figures/([^"]+)"', html)
    # stability, leiden, labels, condition, lineage, type, composition, confusion, cell type x
    # signature heatmap, RANKL/OPG dot plot, donor comparison, enrichment top terms (no
    # case-control table: no figure of those sections; tpm values: no QC count figures)
    assert len(sources) == len(files) == 12
    assert "rankl_opg_cytokines.png" in files
    assert {"donor_comparison.png", "enrichment_top_terms.png"} <= set(files)
    assert "2 conditions: a (4 donors), b (4 donors)." in html and "&lt;b&gt;x" in html
    assert "Welch" not in html  # the shown columns; the test name is in the TSV
    assert "&lt;u&gt;M2&lt;/u&gt;" in html and "Il1b;Tnf" in html
    # views that cannot be drawn say why
    assert "M1/M2 state map: no M1 and M2 set both reached the coverage threshold" in html
    assert "Trained immunity by lineage: no trained-immunity set was scored." in html
    assert "One condition only: no composition test." in html
    assert "No osteoimmune axis between the cell types of this dataset." in html
    assert "&lt;i&gt;authors&lt;/i&gt;" in html
    assert "Lyz2, Cd14" in html
    # the Leiden markers' cap, recorded by osteoimmune.cluster.markers, is said
    assert "Clusters of more than 2,000 cells were tested on 2,000 of their cells" in html
    for data, name in zip(sources, files, strict=True):
        assert base64.b64decode(data) == (tmp_path / "figures" / name).read_bytes()
        svg = (tmp_path / "figures" / name).with_suffix(".svg")
        assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
        assert f'href="figures/{svg.name}"' in html


def test_index_row_and_page(scored):
    row = index_row(scored, entry={"title": "Toy", "species": "mouse"})
    assert row["value_type"] == "tpm" and row["author_labels"] == 2
    assert row["means"] == {"M1": pytest.approx(scored.obs["score_M1"].mean())}
    by_group = pd.DataFrame(
        {
            "grouping": ["cell_type"] * 4,
            "value": ["score", "z", "z", "z"],
            "group": ["macrophage", "macrophage", "<i>B</i>", "osteoclast"],
            "n_cells": [50, 50, 20, 30],
            "macrophage_M1_classical_core": [0.3, 3.0, -1.0, np.nan],
        }
    )
    coverage = pd.DataFrame(
        {"scored": [True, False], "reason": ["", "20% of genes present (2/10), below 50%"]},
        index=pd.Index(["macrophage_M1_classical_core", "macrophage_M2a_alternative_core"]),
    )
    row["key"] = key_signature_block(by_group, coverage=coverage)
    assert row["key"]["sets"][:2] == ["M1", "M2a"]
    first = row["key"]["rows"][0]
    assert first["cell_type"] == "macrophage" and first["n_cells"] == 50  # z rows only
    assert first["cells"][0] == ("3.00", "rgb(255,85,85)", "")  # capped at +2: strongest red
    # M2a not scored: "not scored" (never "n.s.", read as "not significant"), with the reason
    assert first["cells"][1] == (
        "not scored", "#f3f3f3", "not scored: 20% of genes present (2/10), below 50%"
    )  # fmt: skip
    assert "species" in first["cells"][2][2]  # no coverage row: not a set of this species
    assert row["key"]["rows"][1]["cells"][0][0] == "no value"  # osteoclast: M1 scored, no mean
    assert row["key"]["rows"][2]["cells"][0] == ("-1.00", "rgb(170,170,255)", "")
    assert "M2a (macrophage_M2a_alternative_core): 20% of genes present" in row["key"]["notes"][0]
    row["changes"] = top_changes(
        de_summary=pd.DataFrame(
            {"group": ["NK", "B"], "contrast": "op vs ctrl", "tested": [True, False],
             "n_significant": [3, 0], "reason": ["", "1 sample in op: no test"]}
        ),
        de_top=pd.DataFrame(
            {"group": ["NK"], "contrast": ["op vs ctrl"], "gene": ["TNFSF11"],
             "log2fc_shrunk": [1.5], "padj": [0.001]}
        ),
        composition=pd.DataFrame({"cell_type": ["NK", "B"], "fdr": [0.01, 0.5]}),
        communication=pd.DataFrame(),
    )  # fmt: skip
    assert row["changes"] == [
        "DE: 3 gene(s) at FDR < 0.05 in 1 of 1 cell type x contrast tests; top: TNFSF11 in NK "
        "(op vs ctrl, shrunken log2FC 1.50)",
        "composition: 1 change(s) at FDR < 0.05; top: NK",
    ]
    html = render("index.html", rows=[row], signatures=["M1"], versions={"osteoimmune": "0"})
    assert "top: TNFSF11 in NK" in html
    assert "&lt;i&gt;B&lt;/i&gt;" in html and "background: rgb(255,85,85)" in html
    assert "n.s." not in html
    assert 'title="not scored: 20% of genes present (2/10), below 50%">not scored</td>' in html
    assert "Not scored in this dataset: M2a (macrophage_M2a_alternative_core): 20%" in html
    assert 'href="toy/report.html"' in html and "<td>tpm</td>" in html


def test_donor_plot_copes_with_a_condition_without_values():
    """A score mean needs min_cells per donor: a condition may have no donor value at all."""
    obs = pd.DataFrame(
        {
            "donor": ["d1"] * 12 + ["d2"] * 3,
            "condition": ["a"] * 12 + ["b"] * 3,
            "cell_type": "macrophage",
            "z_M1": np.linspace(0, 1, 15),
        }
    )
    aggregates = donor_aggregates(obs, score_columns=["z_M1"], min_cells=10)
    comparison = compare_conditions(aggregates)
    data = comparison_plot_data(aggregates)
    assert set(data.loc[data["variable"] == "z_M1", "condition"]) == {"a"}
    fig = figures.donor_comparison_plot(data, comparison)
    assert len(fig.axes) == len(comparison)


def test_index_lists_this_run_then_earlier_runs_found_on_disk(scored, tmp_path):
    """results/index.html lists every dataset with a report, earlier runs' marked as such."""
    results = tmp_path / "results"
    z_rows = pd.DataFrame(
        {"grouping": "cell_type", "value": "z", "group": ["macrophage"], "n_cells": [60],
         "macrophage_M1_classical_core": [0.5]}
    )  # fmt: skip
    for dataset in ("zeta", "alpha", "beta"):
        files = dataset_files(results, dataset)
        files["by_group"].parent.mkdir(parents=True)
        files["report"].write_text("<html></html>")
        if dataset == "beta":  # an earlier run's folder without its AnnData
            continue
        adata = scored.copy()
        adata.uns["osteoimmune"] = scored.uns["osteoimmune"] | {"dataset": dataset}
        adata.write_h5ad(files["h5ad"])
        z_rows.to_csv(files["by_group"], sep="\t", index=False)
    entries = {d: {"title": f"Title {d}", "species": "mouse"} for d in ("zeta", "alpha")}
    assert earlier_datasets(results, current=["zeta"]) == ["alpha", "beta"]
    page = index_page(results, current=["zeta"], entries=entries)
    links = re.findall(r'<a href="(\w+)/report.html">\w+</a></td><td>([a-z ]+)</td>', page)
    assert links[:3] == [("zeta", "this run"), ("alpha", "earlier run"), ("beta", "earlier run")]
    assert "Title alpha" in page and "(not in the registry)" in page
    assert "Not summarised: its results could not be read" in page and "rerun it with" in page
    assert page == index_page(results, current=["zeta"], entries=entries)  # deterministic


SOURCES_TSV = """cell_type\tcell_lineage\tn_cells\tsource_both\tsource_reference\tsource_markers\t\
median_confidence\tmarker_evidence\tcontradicted\tflag
classical monocyte\tmyeloid\t50\t40\t6\t4\t0.91\tCD14 92%, LYZ 99%\t2\t
osteoclast\tbone\t10\t0\t10\t0\t0.55\tACP5 10%\t7\tbone cell type in a dataset whose \
tissue is not bone
"""


def test_cell_type_calls_render_with_flags_and_say_when_absent(tmp_path):
    path = tmp_path / "annotation_sources.tsv"
    path.write_text(SOURCES_TSV)
    calls = cell_type_calls(pd.read_csv(path, sep="\t", dtype={"flag": str}))
    assert calls["calls_flags"] == [
        ("osteoclast", "bone cell type in a dataset whose tissue is not bone")
    ]
    table = calls["calls_table"]
    assert "<th>reference and markers agree</th>" in table and "CD14 92%, LYZ 99%" in table
    assert "<td>nan</td>" not in table  # an empty flag is an empty cell
    absent = cell_type_calls(None)
    assert absent["calls_flags"] == [] and "<table" not in absent["calls_table"]
    assert "did not record where each call came from" in absent["calls_table"]


def test_rankl_opg_are_named_present_or_plainly_absent():
    def genes(present):
        return pd.DataFrame(
            {"cell_type": "macrophage", "gene": ["Il1b", "Tnfrsf11b", "Tnfsf11"],
             "mean": 0.5, "fraction": 0.4, "n_cells": 30, "present": present}
        )  # fmt: skip

    assert rankl_opg_note(genes([True, True, True])).startswith(
        "RANKL (Tnfsf11) and OPG (Tnfrsf11b) are both in the data"
    )
    note = rankl_opg_note(genes([True, False, False]))
    assert note.startswith("RANKL (Tnfsf11) and OPG (Tnfrsf11b) are absent from this dataset")
    assert "OPG (Tnfrsf11b) is shown" in rankl_opg_note(genes([True, True, False]))
    assert "no cell type has enough cells" in rankl_opg_note(pd.DataFrame())
    fig = figures.dot_plot(
        genes([True, False, True]), group_col="cell_type", title="t",
        always=AXIS_GENES, aliases=GENE_ALIASES,
    )  # fmt: skip
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["Tnfsf11 (RANKL)", "Tnfrsf11b (OPG)\nnot in data", "Il1b"]
    legend = fig.axes[1].get_legend()
    assert legend.get_title().get_text().startswith("fraction of cells")
    assert [t.get_text() for t in legend.get_texts()] == ["10%", "25%", "50%", "75%", "100%"]


def _overlaps(labels) -> bool:
    boxes = [label.get_window_extent() for label in labels if label.get_text()]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


@pytest.mark.parametrize("n_groups", [1, 2, 90])
def test_heatmaps_stay_readable_and_labels_never_overlap(n_groups):
    rng = np.random.default_rng(1)
    names = [f"a_long_signature_set_name_number_{i}_of_the_library" for i in range(12)]
    groups = [f"cell type {i} with a long name" for i in range(n_groups)]
    means = pd.DataFrame(rng.normal(size=(n_groups, 12)), index=groups, columns=names)
    fig = figures.score_heatmap(means, title="t")
    width, height = fig.get_size_inches()
    assert height >= 2.6 and width >= 3.6  # one or two groups: not a sliver
    fig.canvas.draw()
    ax = fig.axes[0]
    assert not _overlaps(ax.get_xticklabels()) and not _overlaps(ax.get_yticklabels())
    # with one or two groups a z across groups would be 0 or +-1: the means are written out
    assert (len(ax.texts) == means.size) == (n_groups <= 2)
    assert all(len(line) <= 42 for t in ax.get_xticklabels() for line in t.get_text().split("\n"))


def test_large_scatter_plots_are_drawn_as_one_image_in_the_svg(tmp_path):
    """Above RASTERIZE_POINTS cells the UMAP points are an embedded image, not one path each."""

    def umap_svg(n_cells):
        rng = np.random.default_rng(0)
        adata = ad.AnnData(obs=pd.DataFrame({"g": pd.Categorical(rng.choice(["a", "b"], n_cells))}))
        adata.obs["v"] = rng.normal(size=n_cells)
        adata.obsm["X_umap"] = rng.normal(size=(n_cells, 2))
        path = tmp_path / f"umap_{n_cells}.png"
        figures.save(figures.umap_categorical(adata, "g", title="g"), path)
        categorical = path.with_suffix(".svg").read_text()
        figures.save(figures.umap_continuous(adata, "v", title="v"), path)
        return categorical, path.with_suffix(".svg").read_text()

    small = umap_svg(figures.RASTERIZE_POINTS)
    large = umap_svg(figures.RASTERIZE_POINTS + 1)
    for svg in small:  # one marker per point
        assert svg.count("<use ") >= figures.RASTERIZE_POINTS
    for svg, vector in zip(large, small, strict=True):  # the points are one image
        assert "<image" in svg and svg.count("<use ") < 100
        assert len(svg) < len(vector) / 5


def test_markers_note_says_when_large_clusters_were_subsampled():
    assert markers_note({}) == ""
    assert markers_note({"rank_genes_groups": {"params": {"method": "wilcoxon"}}}) == ""
    note = markers_note({"rank_genes_groups": {"params": {"max_cells_per_group": 2000, "seed": 7}}})
    assert "more than 2,000 cells were tested on 2,000" in note and "seed 7" in note
