"""LIANA+ communication per condition and sample, the osteoimmune axes, donor-level tests.

Real cells: the Matsushita et al. 2023 mouse bone-marrow stroma (osteoblast-lineage and
reticular cells, UMI counts) with the Shalek et al. 2014 bone-marrow-derived myeloid cells
(GM-CSF cultures, TPM), both from the mirror, normalised per 10k and log-transformed here.
Known truth: in pseudo-samples of these cells, Tnf raised in the myeloid cells of the case
samples only.
"""

import socket

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from conftest import REPO
from scipy import sparse

from osteoimmune.communication import (
    CYTOKINE_AXIS,
    KEY_COLUMNS,
    LIANA_COLUMNS,
    CommunicationError,
    axes_plot,
    communication,
    compare_communication,
    osteoimmune_axes,
    receivers,
    resources,
    sample_design,
)
from osteoimmune.readers import read_dataset
from osteoimmune.registry import load_registry

STROMA, MYELOID = "matsushita2023_bm_stroma", "shalek2014_bmdc_lps"
# GM-CSF bone-marrow cultures: macrophages and dendritic cells (Helft et al. 2015).
MYELOID_TYPE = "macrophage"
RUN = {"species": "mouse", "n_perms": 10, "seed": 0}
N_PER_CONDITION = 5
RUN_MIN_CELLS = 10  # communication()'s default min_cells
BOOST = ("Tnf", MYELOID_TYPE, 8.0)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _read(mirror, name: str) -> tuple[ad.AnnData, dict]:
    entry = load_registry(REPO / "config" / "datasets.yaml")[name]
    paths = {f["filename"]: mirror / name / f["filename"] for f in entry["files"]}
    return read_dataset(entry, paths, dataset=name), entry


def _label(stroma: ad.AnnData, entry: dict) -> None:
    label_map = entry["author_label_map"]
    labels = stroma.obs["author_cell_type"].astype(str)
    for key, column in (("cell_type", "cell_type"), ("lineage", "cell_lineage")):
        values = labels.map(lambda a, k=key: label_map[a][k] or "unassigned")
        stroma.obs[column] = values.to_numpy()


@pytest.fixture(scope="module")
def cells(mirror) -> ad.AnnData:
    """Stroma and myeloid cells on the stroma's genes, per 10k, not yet log-transformed."""
    (stroma, entry), (myeloid, _) = _read(mirror, STROMA), _read(mirror, MYELOID)
    _label(stroma, entry)
    # Chondrocytes left out: three assigned types keep the LIANA runs short.
    stroma = stroma[stroma.obs["cell_type"] != "chondrocyte"].copy()
    upper = {g.upper(): g for g in stroma.var_names}  # the myeloid source upper-cased symbols
    shared = [g for g in myeloid.var_names if g in upper]
    myeloid = myeloid[:, shared].copy()
    myeloid.var_names = [upper[g] for g in shared]
    myeloid.obs["cell_type"], myeloid.obs["cell_lineage"] = MYELOID_TYPE, "myeloid"
    sc.pp.normalize_total(stroma, target_sum=1e4)
    myeloid.X = sparse.csr_matrix(myeloid.X / 100, dtype=np.float32)  # TPM -> per 10k
    both = ad.concat([stroma, myeloid], join="outer", fill_value=0)
    both.obs = pd.concat([stroma.obs, myeloid.obs])[["cell_type", "cell_lineage"]]
    both.X = sparse.csr_matrix(both.X, dtype=np.float32)
    return both


def _boost(part: ad.AnnData, gene: str, cell_type: str, factor: float) -> None:
    matrix = part.X.tocsc(copy=True)
    j = part.var_names.get_loc(gene)
    start, end = matrix.indptr[j], matrix.indptr[j + 1]
    rows = np.isin(matrix.indices[start:end], np.flatnonzero(part.obs["cell_type"] == cell_type))
    matrix.data[start:end][rows] *= factor
    part.X = matrix.tocsr()


def pseudo_samples(cells: ad.AnnData, *, boost=None, seed: int = 0) -> ad.AnnData:
    """Samples s0..s9 (s0-s4 control, s5-s9 case), each a random half of every cell type.

    Random halves of one pool are exchangeable, so tests across them stay calibrated; with
    ``boost`` (gene, cell type, factor) the gene is raised in that type in the case samples.
    """
    rng = np.random.default_rng(seed)
    types = cells.obs["cell_type"].astype(str).to_numpy()
    parts = []
    for i in range(2 * N_PER_CONDITION):
        picks = [
            rng.choice(np.flatnonzero(types == t), size=(types == t).sum() // 2, replace=False)
            for t in sorted(set(types))
        ]
        part = cells[np.sort(np.concatenate(picks))].copy()
        part.obs_names = [f"s{i}_{name}" for name in part.obs_names]
        case = i >= N_PER_CONDITION
        part.obs["sample"], part.obs["donor"] = f"s{i}", f"d{i}"
        part.obs["condition"] = "case" if case else "control"
        if boost is not None and case:
            _boost(part, *boost)
        parts.append(part)
    out = ad.concat(parts)
    sc.pp.log1p(out)
    return out


@pytest.fixture(scope="module")
def null(cells):
    data = pseudo_samples(cells)
    return data, communication(data, by="sample", resource_names=["mouseconsensus"], **RUN)


@pytest.fixture(scope="module")
def boosted(cells, null):
    data = pseudo_samples(cells, boost=BOOST)
    null_data, null_results = null
    control = (data.obs["condition"] == "control").to_numpy()
    # Same seed, same cells: the control samples are those of the null run, and LIANA runs
    # on each sample alone, so only the case samples are run again.
    assert (data.X[control] != null_data.X[control]).nnz == 0
    case = communication(data[~control], by="sample", resource_names=["mouseconsensus"], **RUN)
    kept = null_results[null_results["sample"].isin(data.obs["sample"][control])]
    return data, pd.concat([kept, case], ignore_index=True)


@pytest.fixture(scope="module")
def by_condition(cells):
    data = cells.copy()
    sc.pp.log1p(data)
    data.obs["condition"] = np.where(np.arange(data.n_obs) % 2, "case", "control")
    return data


# --------------------------------------------------------------------------- resources


def test_resources_are_read_offline(no_network):
    human, mouse = resources(species="human"), resources(species="mouse")
    assert list(human) == ["consensus", "baccin2019"]
    assert list(mouse) == ["mouseconsensus", "baccin2019"]
    for table in [*human.values(), *mouse.values()]:
        assert list(table.columns) == ["ligand", "receptor"]
        assert len(table) > 1000 and not table.duplicated().any()
    pairs = {name: set(zip(t["ligand"], t["receptor"], strict=True)) for name, t in mouse.items()}
    assert ("Tnfsf11", "Tnfrsf11a") in pairs["mouseconsensus"]
    assert ("IL6", "IL6R_IL6ST") in set(zip(*human["consensus"].T.to_numpy(), strict=True))
    # Baccin 2019 in mouse symbols: orthologs from LIANA's own table, not upper-casing.
    assert {("Kitl", "Kit"), ("Il6", "Il6ra"), ("Cxcl12", "Cxcr4")} <= pairs["baccin2019"]
    mouse_symbols = pd.concat([mouse["baccin2019"]["ligand"], mouse["baccin2019"]["receptor"]])
    assert (mouse_symbols == mouse_symbols.str.upper()).mean() < 0.01
    human_symbols = pd.concat([human["baccin2019"]["ligand"], human["baccin2019"]["receptor"]])
    assert (human_symbols == human_symbols.str.upper()).all()


# --------------------------------------------------------------------------- communication


def test_communication_per_condition_offline(by_condition, no_network):
    results = communication(by_condition, **RUN)
    assert list(results.columns) == [
        "condition", "resource", *KEY_COLUMNS, "n_cells_source", "n_cells_target",
        *LIANA_COLUMNS,
    ]  # fmt: skip
    assert list(dict.fromkeys(results["condition"])) == ["case", "control"]
    assert set(results["resource"]) == {"mouseconsensus", "baccin2019"}
    groups = {"LEPR+ CAR stromal", "osteoblast lineage", MYELOID_TYPE}
    assert set(results["source"]) == groups and set(results["target"]) == groups
    assert (results[["n_cells_source", "n_cells_target"]] >= 10).all().all()
    assert results["magnitude_rank"].between(0, 1).all()
    keys = ["condition", "resource", *KEY_COLUMNS]
    assert not results.duplicated(keys).any()
    # The niche axis: CXCL12 from the reticular stroma to CXCR4+ myeloid cells.
    niche = results[
        (results["ligand_complex"] == "Cxcl12") & (results["receptor_complex"] == "Cxcr4")
    ]
    assert "LEPR+ CAR stromal" in set(niche["source"])


def test_unassigned_and_small_groups_are_left_out(by_condition, null):
    _, results = null
    assert "unassigned" in set(by_condition.obs["cell_type"])
    assert "unassigned" not in set(results["source"]) | set(results["target"])
    # Only the myeloid cells have 60 cells per condition: no unit left, no LIANA run.
    empty = communication(by_condition, min_cells=60, **RUN)
    assert empty.empty and "magnitude_rank" in empty.columns


def test_communication_is_deterministic(null):
    data, results = null
    again = communication(
        data[data.obs["sample"].isin(["s0", "s7"])], by="sample",
        resource_names=["mouseconsensus"], **RUN,
    )  # fmt: skip
    expected = results[results["sample"].isin(["s0", "s7"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(again, expected)


def test_a_unit_of_the_same_cells_is_ranked_once(by_condition, monkeypatch):
    """Per condition, then per sample where each condition is one sample: LIANA runs once."""
    from osteoimmune import communication as module

    data = by_condition.copy()
    data.obs["sample"] = data.obs["condition"].map({"case": "s_case", "control": "s_control"})
    calls = []
    rank = module._rank_aggregate
    monkeypatch.setattr(module, "_rank_aggregate", lambda *a, **k: calls.append(1) or rank(*a, **k))
    shared = {}
    options = dict(resource_names=["mouseconsensus"], reuse=shared, **RUN)
    per_condition = communication(data, **options)
    assert len(calls) == 2  # case and control
    per_sample = communication(data, by="sample", **options)
    assert len(calls) == 2  # no new LIANA run
    renamed = per_sample.drop(columns="sample")
    expected = per_condition.drop(columns="condition")
    pd.testing.assert_frame_equal(renamed, expected)
    fresh = communication(data, by="sample", resource_names=["mouseconsensus"], **RUN)
    pd.testing.assert_frame_equal(per_sample, fresh)
    assert len(calls) == 4


def test_large_groups_are_ranked_on_a_seeded_subsample(by_condition, monkeypatch):
    """max_cells_per_group caps the cells LIANA sees per type; sizes reported stay full."""
    from osteoimmune import communication as module

    seen = []
    rank = module._rank_aggregate

    def spy(unit, *args, **kwargs):
        seen.append(unit.obs["cell_type"].value_counts())
        return rank(unit, *args, **kwargs)

    monkeypatch.setattr(module, "_rank_aggregate", spy)
    options = dict(resource_names=["mouseconsensus"], **RUN)
    full = communication(by_condition, **options)
    capped = communication(by_condition, max_cells_per_group=12, **options)
    assert max(seen[0]) > 12 and all(max(sizes) <= 12 for sizes in seen[2:])
    assert all(sizes.min() >= RUN_MIN_CELLS for sizes in seen[2:])
    key = ["condition", "source", "target"]
    sizes = full.drop_duplicates(key).set_index(key)["n_cells_source"]
    assert (
        capped.drop_duplicates(key)
        .set_index(key)["n_cells_source"]
        .equals(sizes.loc[capped.drop_duplicates(key).set_index(key).index])
    )  # full sizes reported
    again = communication(by_condition, max_cells_per_group=12, **options)
    pd.testing.assert_frame_equal(capped, again)  # seeded
    assert not capped["magnitude_rank"].equals(full["magnitude_rank"])


def test_liana_positions_lookup_gives_liana_own_result(by_condition, monkeypatch):
    """The indexed gene lookup swapped into LIANA 1.10 changes nothing in the results."""
    from liana.method._pipe_utils import _get_mean_perms as liana_module

    from osteoimmune import communication as module

    original = liana_module._get_positions
    calls = []
    indexed = module._indexed_positions
    monkeypatch.setattr(module, "_indexed_positions", lambda *a: calls.append(1) or indexed(*a))
    options = dict(resource_names=["mouseconsensus", "baccin2019"], **RUN)
    fast = communication(by_condition, **options)
    assert calls and liana_module._get_positions is original  # used, then put back
    monkeypatch.setattr(module, "LIANA_POSITIONS_VERSION", "another release")
    calls.clear()
    own = communication(by_condition, **options)
    assert not calls  # another LIANA version runs its own lookup
    assert len(fast) > 100
    pd.testing.assert_frame_equal(fast, own)


def test_indexed_positions_match_liana_helper():
    """Same dicts as LIANA's per-row scan: first position of a gene, IndexError when absent."""
    from liana.method._pipe_utils._get_mean_perms import _get_positions

    from osteoimmune.communication import _indexed_positions

    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(50)]
    obs = pd.DataFrame({"@label": pd.Categorical(["b", "a", "c", "a"] * 5)})
    adata = ad.AnnData(X=np.zeros((20, 50), dtype=np.float32), obs=obs)
    adata.var_names = genes
    lr_res = pd.DataFrame(
        {"ligand": rng.choice(genes, 400), "receptor": rng.choice(genes[10:], 400)}
    )
    assert _indexed_positions(adata, lr_res) == _get_positions(adata, lr_res)
    lr_res.loc[7, "receptor"] = "absent"
    for helper in (_indexed_positions, _get_positions):
        with pytest.raises(IndexError):
            helper(adata, lr_res)


def test_liana_lookup_is_put_back_when_liana_fails(by_condition, monkeypatch):
    import liana as li
    from liana.method._pipe_utils import _get_mean_perms as liana_module

    original = liana_module._get_positions

    def fail(*args, **kwargs):
        assert liana_module._get_positions is not original  # swapped during the call
        raise RuntimeError("LIANA failed")

    monkeypatch.setattr(li.mt, "rank_aggregate", fail)
    with pytest.raises(RuntimeError, match="LIANA failed"):
        communication(by_condition, resource_names=["mouseconsensus"], **RUN)
    assert liana_module._get_positions is original


# --------------------------------------------------------------------------- axes


def _toy_results() -> pd.DataFrame:
    rows = [
        ("IL6", "IL6R_IL6ST"),
        ("IL17A_IL17F", "IL17RA_IL17RC"),
        ("TNFSF11", "TNFRSF11B"),
        ("TNFSF11", "TNFRSF11A"),
        ("CSF1_IL34", "CSF1R"),
        ("CXCL12", "CXCR4"),
        ("LGALS9", "PTPRC"),
        ("IL6", "IL6R2"),  # not IL6R: members match whole, not by prefix
    ]
    frame = pd.DataFrame(rows, columns=["ligand_complex", "receptor_complex"])
    return frame.assign(source="T cell", target="osteoblast lineage", magnitude_rank=0.1)


def test_axes_label_panel_pairs_within_complexes():
    axes = osteoimmune_axes(_toy_results(), species="human")
    names = axes["ligand_complex"] + ">" + axes["receptor_complex"]
    labels = dict(zip(names, axes["axis"], strict=True))
    assert labels == {
        "IL6>IL6R_IL6ST": CYTOKINE_AXIS,
        "IL17A_IL17F>IL17RA_IL17RC": CYTOKINE_AXIS,
        "TNFSF11>TNFRSF11B": "OPG decoy",
        "TNFSF11>TNFRSF11A": "RANKL-RANK",
        "CSF1_IL34>CSF1R": "CSF1-CSF1R",
        "CXCL12>CXCR4": "CXCL12-CXCR4 niche",
    }
    il6 = axes[axes["ligand_complex"] == "IL6"].iloc[0]
    assert il6["panel_pair"] == "IL6-IL6R; IL6-IL6ST" and il6["kind"] == "signalling"
    assert axes.loc[axes["axis"] == "OPG decoy", "kind"].item() == "decoy"
    assert (axes["receiver_role"] == "bone lineage").all()
    # Upper-cased mouse symbols match the mouse panel.
    upper = osteoimmune_axes(_toy_results(), species="mouse")
    assert "TNFSF11>TNFRSF11A" in set(upper["ligand_complex"] + ">" + upper["receptor_complex"])


def test_receivers(by_condition):
    assert receivers(by_condition) == ["LEPR+ CAR stromal", "osteoblast lineage"]
    myeloid = by_condition[by_condition.obs["cell_type"] == MYELOID_TYPE]
    assert receivers(myeloid) == []


def test_axes_plot(by_condition):
    results = communication(by_condition, resource_names=["baccin2019"], **RUN)
    axes = osteoimmune_axes(results, species="mouse", receivers=receivers(by_condition))
    assert {"CXCL12-CXCR4 niche", CYTOKINE_AXIS} <= set(axes["axis"])
    fig = axes_plot(axes, n=12)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["case", "control"]
    assert len(fig.axes[0].collections[0].get_offsets()) > 0
    plt.close(fig)


# --------------------------------------------------------------------------- comparison


def test_raised_ligand_is_found_up_in_case(boosted):
    data, results = boosted
    axes = osteoimmune_axes(results, species="mouse", receivers=receivers(data))
    tnf = axes[(axes["ligand_complex"] == "Tnf") & (axes["receptor_complex"] == "Tnfrsf1a")]
    assert set(tnf["axis"]) == {CYTOKINE_AXIS} and set(tnf["panel_pair"]) == {"Tnf-Tnfrsf1a"}
    roles = dict(zip(tnf["target"], tnf["receiver_role"], strict=False))
    assert roles["osteoblast lineage"] == "bone lineage"
    assert roles[MYELOID_TYPE] == "osteoclast lineage"
    table = compare_communication(axes, sample_design(data), reference="control")
    assert (table["condition_a"] == "control").all() and not table["descriptive_only"].any()
    hits = table[table["fdr"] < 0.05]
    assert set(hits["source"]) == {MYELOID_TYPE} and set(hits["ligand_complex"]) == {"Tnf"}
    assert (hits["difference"] > 0).all() and set(hits["axis"]) == {CYTOKINE_AXIS}
    assert "osteoblast lineage" in set(hits["target"])


def test_no_change_gives_nothing_significant(null):
    data, results = null
    axes = osteoimmune_axes(results, species="mouse")
    design = sample_design(data)
    table = compare_communication(axes, design, reference="control")
    assert len(table) > 5 and table["p_value"].notna().all()
    assert (table["n_donors_a"] == N_PER_CONDITION).all()
    assert (table["fdr"] >= 0.05).all()
    ranks = compare_communication(
        axes, design, reference="control", score="magnitude_rank", resource="mouseconsensus"
    )
    assert (ranks["score"] == "magnitude_rank").all() and not (ranks["fdr"] < 0.05).any()


def test_too_few_donors_is_descriptive(null):
    data, results = null
    design = sample_design(data)
    design["donor"] = design["condition"] + design["sample"].str[1:].astype(int).mod(2).astype(str)
    table = compare_communication(osteoimmune_axes(results, species="mouse"), design,
                                  reference="control")  # fmt: skip
    assert table["descriptive_only"].all() and table["p_value"].isna().all()
    assert (table["n_donors_a"] == 2).all()
    assert table["note"].str.contains("fewer than 3 donors").all()


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_rejected(by_condition, null):
    data, results = null
    with pytest.raises(CommunicationError, match="Unknown species 'rat'"):
        communication(by_condition, species="rat")
    with pytest.raises(CommunicationError, match="no column 'batch'"):
        communication(by_condition, species="mouse", by="batch")
    with pytest.raises(CommunicationError, match="min_cells"):
        communication(by_condition, species="mouse", min_cells=0)
    with pytest.raises(CommunicationError, match="Unknown mouse resources"):
        communication(by_condition, species="mouse", resource_names=["consensus"])
    design = sample_design(data)
    with pytest.raises(CommunicationError, match="Unknown score"):
        compare_communication(results, design, reference="control", score="lrscore")
    two = pd.concat([results, results.assign(resource="baccin2019")])
    with pytest.raises(CommunicationError, match="pass resource"):
        compare_communication(two, design, reference="control", score="magnitude_rank")
    with pytest.raises(CommunicationError, match="s9 of the results are not in the design"):
        compare_communication(results, design[design["sample"] != "s9"], reference="control")


def test_upper_cased_mouse_symbols_are_matched(by_condition):
    # Sources that upper-case mouse symbols (as the myeloid one does) are matched upper-cased.
    unique = ~by_condition.var_names.str.upper().duplicated(keep=False)
    upper = by_condition[by_condition.obs["condition"] == "control", unique].copy()
    upper.var_names = upper.var_names.str.upper()
    upper.uns["osteoimmune"] = {"gene_symbol_case": "upper"}
    results = communication(upper, resource_names=["baccin2019"], **RUN)
    assert len(results) > 100
    assert (results["ligand_complex"] == results["ligand_complex"].str.upper()).all()
    axes = osteoimmune_axes(results, species="mouse")
    assert "CXCL12-CXCR4 niche" in set(axes["axis"])
