"""Immune-to-bone cell-cell communication per condition or sample with LIANA+ rank aggregate.

:func:`communication` runs ``liana.mt.rank_aggregate`` on the cells of each condition (or
sample), once per ligand-receptor resource of :func:`resources`, all offline from the tables
LIANA ships. :func:`osteoimmune_axes` keeps the rows of the osteoimmune axes, with the
hand-made panel of :func:`osteoimmune.states.lr_pairs` as the filter on LIANA's output, and
:func:`compare_communication` tests them across conditions with one value per donor, through
:func:`osteoimmune.compare.compare_conditions`.

Resources per species (see :data:`RESOURCE_NOTES`): LIANA's ``consensus`` for human and
``mouseconsensus`` for mouse, plus the bone-marrow niche resource of Baccin et al. 2019
(``baccin2019``) for both. LIANA ships Baccin 2019, a mouse resource, in OmniPath's human
translation (human UniProt IDs and symbols): human data use it as shipped; for mouse data its
symbols are mapped back to mouse ones through the human UniProt -> mouse symbol pairs of
LIANA's own ``mouseconsensus`` table, and genes that table does not cover take the mouse case
of the human symbol (``KITLG`` -> ``Kitl``, ``IL6R`` -> ``Il6ra`` come from the table).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from osteoimmune.compare import (
    COMPARISON_COLUMNS,
    CONDITION,
    DONOR,
    MIN_DONORS,
    compare_conditions,
)
from osteoimmune.errors import CommunicationError
from osteoimmune.figures import plt
from osteoimmune.panels import CELL_TYPES, UNASSIGNED
from osteoimmune.samples import capped_cells
from osteoimmune.states import lr_pairs

log = logging.getLogger(__name__)

RESOURCES = {"human": ("consensus", "baccin2019"), "mouse": ("mouseconsensus", "baccin2019")}
RESOURCE_NOTES = {
    "consensus": "LIANA consensus resource (human), as shipped with LIANA",
    "mouseconsensus": "LIANA consensus resource translated to mouse by LIANA, as shipped",
    "baccin2019": (
        "Baccin et al. 2019 Nat Cell Biol bone-marrow niche resource (curated in mouse), "
        "shipped by LIANA in OmniPath's human translation; used as shipped for human data and "
        "mapped back to mouse symbols for mouse data"
    ),
}
BONE_LINEAGES = ("osteolineage", "stromal")
# Monocytes and macrophages are the osteoclast precursors of the annotation vocabulary.
OSTEOCLAST_LINEAGE = ("classical monocyte", "non-classical monocyte", "macrophage", "osteoclast")
CYTOKINE_AXIS = "IL1/IL6/TNF/IL17 to osteoclast precursors / osteoblast lineage"
# Axis of each panel pair, by the upper-cased ligand (the same in human and mouse) and kind.
AXES = {
    ("TNFSF11", "signalling"): "RANKL-RANK",
    ("TNFSF11", "decoy"): "OPG decoy",
    ("CSF1", "signalling"): "CSF1-CSF1R",
    ("IL1B", "signalling"): CYTOKINE_AXIS,
    ("IL6", "signalling"): CYTOKINE_AXIS,
    ("IL6", "co-receptor"): CYTOKINE_AXIS,
    ("TNF", "signalling"): CYTOKINE_AXIS,
    ("IL17A", "signalling"): CYTOKINE_AXIS,
    ("SEMA4D", "signalling"): "osteoclast-osteoblast coupling",
    ("EFNB2", "signalling"): "osteoclast-osteoblast coupling",
    ("CXCL12", "signalling"): "CXCL12-CXCR4 niche",
}
KEY_COLUMNS = ("source", "target", "ligand_complex", "receptor_complex")
LIANA_COLUMNS = (
    "lr_means", "cellphone_pvals", "expr_prod", "scaled_weight", "lr_logfc", "spec_weight",
    "lrscore", "specificity_rank", "magnitude_rank",
)  # fmt: skip
LIANA_NOISE = (
    "Trying to modify attribute `.obs` of view",
    "Setting element `.layers",
    "The default of observed=False is deprecated",
    "zero-centering a sparse array/matrix densifies it",
)
# What liana 1.10 raises when no interaction of a unit passes expr_prop (an empty table).
LIANA_EMPTY = "cannot set a frame with no defined index and a scalar"
# Scores compare_communication can compare; the ranks enter as 1 - rank (higher: stronger).
SCORES = ("lr_means", "magnitude_rank", "specificity_rank")


def _check_species(species: str) -> None:
    if species not in RESOURCES:
        msg = f"Unknown species '{species}'; allowed: {', '.join(RESOURCES)}."
        raise CommunicationError(msg)


def _omni_table() -> pd.DataFrame:
    # Debt: LIANA's bundled OmniPath table (liana 1.10, liana/resource/omni_resource.csv) is
    # read directly for its UniProt columns, which liana.resource.select_resource drops; only
    # the mouse symbols of Baccin 2019 need them.
    import liana.resource

    path = Path(liana.resource.__file__).parent / "omni_resource.csv"
    return pd.read_csv(path, index_col=False, dtype=str)


def _mouse_symbols(table: pd.DataFrame) -> dict[str, str]:
    # Human symbol -> mouse symbol through the human UniProt IDs of single proteins.
    def ids(rows: pd.DataFrame) -> pd.DataFrame:
        frames = [rows[[i, s]].set_axis(["id", "symbol"], axis=1) for i, s in
                  (("source", "source_genesymbol"), ("target", "target_genesymbol"))]  # fmt: skip
        both = pd.concat(frames).drop_duplicates()
        return both[~both["id"].str.startswith("COMPLEX:")]

    mouse = ids(table[table["resource"] == "mouseconsensus"])
    human = ids(table[(table["resource"] != "mouseconsensus")])
    human = human[human["symbol"] == human["symbol"].str.upper()]
    pairs = human.merge(mouse, on="id", suffixes=("_human", "_mouse"))
    mapping = {}
    for symbol, group in pairs.groupby("symbol_human", sort=True):
        candidates = sorted(set(group["symbol_mouse"]))
        # One-to-many orthologs: the one spelled like the human symbol, else the first.
        same = [c for c in candidates if c.upper() == symbol]
        mapping[symbol] = same[0] if same else candidates[0]
    return mapping


def _translate(names: pd.Series, mapping: dict[str, str]) -> pd.Series:
    def one(name: str) -> str:
        return "_".join(mapping.get(g, g[:1] + g[1:].lower()) for g in name.split("_"))

    return names.map(one)


def resources(*, species: str) -> dict[str, pd.DataFrame]:
    """The LIANA ligand-receptor resources used for a species, read offline from LIANA.

    Parameters
    ----------
    species
        ``human`` or ``mouse``.

    Returns
    -------
    dict of str to pandas.DataFrame
        Resource name (:data:`RESOURCES` order) -> unique ``ligand``, ``receptor`` rows in the
        species' symbols (complexes joined by ``_``, e.g. ``IL6R_IL6ST``). Human: LIANA's
        ``consensus`` and ``baccin2019`` as shipped; mouse: ``mouseconsensus`` and
        ``baccin2019`` mapped to mouse symbols (module docstring, :data:`RESOURCE_NOTES`).
    """
    import liana as li

    _check_species(species)
    mapping = _mouse_symbols(_omni_table()) if species == "mouse" else None
    out = {}
    for name in RESOURCES[species]:
        rows = li.resource.select_resource(name)[["ligand", "receptor"]].astype(str)
        if mapping is not None and name == "baccin2019":
            rows = rows.apply(_translate, mapping=mapping)
        out[name] = rows.drop_duplicates().reset_index(drop=True)
    return out


def _usable(resource: pd.DataFrame, genes: pd.Index) -> pd.DataFrame:
    # Interactions with every subunit in the data (LIANA drops the rest itself); filtering
    # here keeps LIANA's whole-resource coverage check from failing on small gene panels.
    def covered(column: str) -> np.ndarray:
        members = resource[column].str.split("_")
        return np.array([all(g in genes for g in m) for m in members], dtype=bool)

    return resource[covered("ligand") & covered("receptor")]


def _unit(
    adata: AnnData,
    mask: np.ndarray,
    *,
    groupby: str,
    min_cells: int,
    max_cells: int | None = None,
    seed: int = 0,
) -> tuple[AnnData | None, pd.Series]:
    # The unit's cells of groups with at least min_cells cells; X rows only, no layers. A
    # group of more than max_cells cells is represented by max_cells of them (seeded).
    # Returns the unit and the groups' sizes before that subsampling.
    labels = adata.obs[groupby].astype(str).to_numpy()
    keep = mask & (labels != UNASSIGNED) & adata.obs[groupby].notna().to_numpy()
    counts = pd.Series(labels[keep]).value_counts()
    groups = sorted(counts.index[counts >= min_cells])
    if len(groups) < 2:  # LIANA's log2FC needs a rest to compare each group against
        return None, counts
    rows = capped_cells(labels, groups, max_cells=max_cells, seed=seed, within=keep)
    obs = pd.DataFrame(
        {groupby: pd.Categorical(labels[rows], categories=groups)}, index=adata.obs_names[rows]
    )
    return AnnData(X=adata.X[rows], obs=obs, var=pd.DataFrame(index=adata.var_names)), counts


def _check_communication_input(adata, *, species, groupby, by, min_cells, expr_prop, n_perms):
    _check_species(species)
    missing = [c for c in (groupby, by) if c not in adata.obs.columns]
    if missing:
        msg = f"obs has no column {', '.join(map(repr, missing))}; the annotation sets them."
        raise CommunicationError(msg)
    if int(min_cells) != min_cells or min_cells < 1:
        msg = f"min_cells must be a positive integer, got {min_cells}."
        raise CommunicationError(msg)
    if not 0 <= expr_prop <= 1:
        msg = f"expr_prop must be between 0 and 1, got {expr_prop}."
        raise CommunicationError(msg)
    if int(n_perms) != n_perms or n_perms < 1:
        msg = f"n_perms must be a positive integer, got {n_perms}."
        raise CommunicationError(msg)
    if not adata.var_names.is_unique:
        msg = "var_names are not unique; make them unique before the communication analysis."
        raise CommunicationError(msg)


def _species_resources(adata: AnnData, species: str, *, names) -> dict[str, pd.DataFrame]:
    tables = resources(species=species)
    unknown = sorted(set(names or ()) - set(tables))
    if unknown:
        msg = f"Unknown {species} resources {unknown}; allowed: {', '.join(tables)}."
        raise CommunicationError(msg)
    tables = {name: t for name, t in tables.items() if names is None or name in names}
    if adata.uns.get("osteoimmune", {}).get("gene_symbol_case") == "upper":
        # The source upper-cased mouse symbols: the resource follows the data.
        tables = {name: t.apply(lambda c: c.str.upper()) for name, t in tables.items()}
    usable = {name: _usable(t, adata.var_names) for name, t in tables.items()}
    for name, table in usable.items():
        if table.empty:
            log.warning("No interaction of resource %s has all its genes in the data.", name)
    # A gene panel (a few hundred genes) may hold no whole interaction: nothing to rank then,
    # and communication() returns an empty table (the reader already checked the species).
    return {name: t for name, t in usable.items() if not t.empty}


def communication(
    adata: AnnData,
    *,
    species: str,
    groupby: str = "cell_type",
    by: str = "condition",
    min_cells: int = 10,
    expr_prop: float = 0.1,
    n_perms: int = 100,
    seed: int = 0,
    resource_names: Sequence[str] | None = None,
    max_cells_per_group: int | None = None,
    reuse: dict | None = None,
) -> pd.DataFrame:
    """LIANA+ rank aggregate of ligand-receptor interactions per condition (or sample).

    Parameters
    ----------
    adata
        Log-normalised expression in ``X`` (sparse; layers are not read), ``groupby`` and
        ``by`` in ``obs``. Only a unit's rows of ``X`` are copied; LIANA's Connectome step
        z-scores the unit's cells x resource genes densely (a few thousand genes). Symbols
        upper-cased by the source (``uns['osteoimmune']['gene_symbol_case'] == 'upper'``)
        are matched upper-cased.
    species
        ``human`` or ``mouse``: which resources of :func:`resources` are used.
    groupby
        The cell grouping; cells labelled ``unassigned`` (or NaN) are left out.
    by
        Run LIANA separately on the cells of each value of this column (``condition`` or
        ``sample``).
    min_cells
        Groups with fewer cells in a unit are left out of that unit; a unit with fewer than
        two such groups is skipped (logged).
    expr_prop
        LIANA's minimum fraction of a group's cells expressing the ligand (receptor).
    n_perms, seed
        Permutations of LIANA's CellPhoneDB step and their seed: the same input and seed
        give the same table.
    resource_names
        Run only these of the species' resources (:data:`RESOURCES`); None runs all.
    max_cells_per_group
        A group with more cells in a unit is ranked on this many of them, drawn at random
        (seeded): LIANA's means, expression fractions and permutations grow with the cells,
        and a few thousand cells estimate a group's mean and fraction to within ~1%
        (CellPhoneDB subsamples large datasets for the same reason). None ranks every cell.
        ``n_cells_source`` and ``n_cells_target`` stay the groups' full sizes.
    reuse
        A dict shared between calls: a unit of the very same cells (and settings) as one
        already ranked is not ranked again (e.g. a condition of one sample, run per condition
        and per sample). LIANA's result depends only on the unit's cells, so it is the same.

    Returns
    -------
    pandas.DataFrame
        One row per ``by`` value x resource x ``source`` x ``target`` x ``ligand_complex`` x
        ``receptor_complex``: columns ``by``, ``resource``, :data:`KEY_COLUMNS`,
        ``n_cells_source``, ``n_cells_target`` and LIANA's :data:`LIANA_COLUMNS`
        (``magnitude_rank``, ``specificity_rank``: small is strong). ``by`` values in their
        order (categories, else sorted), resources in :data:`RESOURCES` order, then by
        ``magnitude_rank`` and the keys.
    """
    _check_communication_input(
        adata, species=species, groupby=groupby, by=by, min_cells=min_cells,
        expr_prop=expr_prop, n_perms=n_perms,
    )  # fmt: skip
    tables = _species_resources(adata, species, names=resource_names)
    frames = []
    for value in _ordered(adata.obs[by]):
        mask = (adata.obs[by] == value).to_numpy()
        unit, sizes = _unit(
            adata,
            mask,
            groupby=groupby,
            min_cells=min_cells,
            max_cells=max_cells_per_group,
            seed=seed,
        )
        if unit is None:
            log.info("%s %s: fewer than two %s groups of %d cells; skipped.", by, value,
                     groupby, min_cells)  # fmt: skip
            continue
        cells = hashlib.sha256(np.packbits(mask).tobytes()).hexdigest()
        for name, table in tables.items():
            key = (cells, name, groupby, min_cells, max_cells_per_group, expr_prop, n_perms, seed)
            if reuse is not None and key in reuse:
                log.info("%s %s, %s: the same cells as a unit ranked before; reused.", by,
                         value, name)  # fmt: skip
                result = reuse[key]
            else:
                result = _rank_aggregate(
                    unit,
                    table,
                    groupby=groupby,
                    expr_prop=expr_prop,
                    n_perms=n_perms,
                    seed=seed,
                    sizes=sizes,
                )
                if reuse is not None:
                    reuse[key] = result
            if result is None:
                log.info("%s %s, %s: no interaction passes expr_prop %g.", by, value, name,
                         expr_prop)  # fmt: skip
                continue
            frames.append(result.assign(**{by: value, "resource": name}))
    return _tidy(frames, by=by)


def _ordered(values: pd.Series) -> list:
    present = set(values.dropna())
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [c for c in values.cat.categories if c in present]
    return sorted(present, key=str)


# The LIANA release whose _get_positions (liana/method/_pipe_utils/_get_mean_perms.py)
# _indexed_positions reproduces; another version runs LIANA's own.
LIANA_POSITIONS_VERSION = "1.10.0"


def _indexed_positions(adata, lr_res) -> tuple[dict, dict, dict]:
    """LIANA 1.10's ``_get_positions``, by one index lookup per distinct gene.

    LIANA compares ``var_names`` with each entity of each row of its long table (source x
    target x interaction rows): ~30% of a rank_aggregate run at 25 cell types. Same dicts
    (IndexError for an entity not in var_names, as LIANA); var_names are unique
    (:func:`communication` checks).
    """
    labels = adata.obs["@label"].cat.categories

    def positions(entities: pd.Series) -> dict:
        unique = pd.unique(entities)
        found = adata.var_names.get_indexer(unique)
        if (found < 0).any():
            raise IndexError(f"{unique[found < 0][0]!r} is not in var_names")
        return dict(zip(unique, found.astype(np.int64), strict=True))

    labels_pos = {labels[pos]: pos for pos in range(labels.shape[0])}
    return positions(lr_res["ligand"]), positions(lr_res["receptor"]), labels_pos


@contextlib.contextmanager
def _fast_positions() -> Iterator[None]:
    # Debt: swaps a private LIANA helper for the duration of one call, for the pinned version
    # only (tests/test_communication.py checks that both give the same result).
    from liana.method._pipe_utils import _get_mean_perms as module

    if version("liana") != LIANA_POSITIONS_VERSION:
        yield
        return
    original = module._get_positions
    module._get_positions = _indexed_positions
    try:
        yield
    finally:
        module._get_positions = original


def _rank_aggregate(
    unit, resource, *, groupby, expr_prop, n_perms, seed, sizes=None
) -> pd.DataFrame | None:
    """LIANA's rank aggregate on one unit; None when no interaction passes ``expr_prop``."""
    import liana as li

    with warnings.catch_warnings(), _fast_positions():
        # LIANA's internals on its own copies (views, pandas defaults, Connectome's scaling
        # of the resource genes): nothing the caller can act on.
        for message in LIANA_NOISE:
            warnings.filterwarnings("ignore", message=message)
        try:
            result = li.mt.rank_aggregate(
                unit, groupby=groupby, resource=resource, expr_prop=expr_prop, min_cells=1,
                use_raw=False, n_perms=n_perms, seed=seed, inplace=False, verbose=False,
            )  # fmt: skip
        except ValueError as err:
            # liana 1.10 fails this way when no interaction passes expr_prop in the unit
            if LIANA_EMPTY not in str(err):
                raise
            return None
    result = result.sort_values(["magnitude_rank", *KEY_COLUMNS], kind="mergesort")
    if sizes is None:
        sizes = unit.obs[groupby].value_counts()
    source, target = result["source"].astype(str), result["target"].astype(str)
    return result.assign(
        source=source,
        target=target,
        n_cells_source=source.map(sizes).astype(np.int64),
        n_cells_target=target.map(sizes).astype(np.int64),
    )


def _tidy(frames: list[pd.DataFrame], *, by: str) -> pd.DataFrame:
    columns = [by, "resource", *KEY_COLUMNS, "n_cells_source", "n_cells_target", *LIANA_COLUMNS]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True).reindex(columns=columns)


def _panel(species: str) -> pd.DataFrame:
    # The hand-made panel with each pair's axis; the filter on LIANA's output.
    pairs = lr_pairs(species=species)
    keys = zip(pairs["ligand"].str.upper(), pairs["kind"], strict=True)
    pairs["axis"] = [AXES.get(key, "other") for key in keys]
    return pairs


def _member(names: pd.Series, gene: str) -> np.ndarray:
    # Whether the gene is one of the complex's subunits, case-insensitively.
    pattern = rf"(?:^|_){re.escape(gene.upper())}(?:_|$)"
    return names.astype(str).str.upper().str.contains(pattern, regex=True).to_numpy(bool)


def _pair_hits(results: pd.DataFrame, pairs: pd.DataFrame) -> np.ndarray:
    # Panel pairs x result rows: the ligand and the receptor are members of the complexes.
    # A table repeats each complex for every pair of cell types: each distinct name is
    # tested once, and the answer spread to its rows.
    ligands, ligand_names = pd.factorize(results["ligand_complex"].astype(str))
    receptors, receptor_names = pd.factorize(results["receptor_complex"].astype(str))
    ligand_names, receptor_names = pd.Series(ligand_names), pd.Series(receptor_names)
    hits = [
        _member(ligand_names, ligand)[ligands] & _member(receptor_names, rec)[receptors]
        for ligand, rec in zip(pairs["ligand"], pairs["receptor"], strict=True)
    ]
    return np.array(hits, dtype=bool).reshape(len(pairs), len(results))


def _receiver_roles(targets: pd.Series, bone: set[str]) -> np.ndarray:
    return np.select(
        [targets.isin(bone), targets.isin(OSTEOCLAST_LINEAGE)],
        ["bone lineage", "osteoclast lineage"],
        default="other",
    )


def osteoimmune_axes(
    results: pd.DataFrame, *, species: str, receivers: Sequence[str] | None = None
) -> pd.DataFrame:
    """The rows of LIANA's results on the osteoimmune axes, each labelled with its axis.

    The axes come from the hand-made panel :func:`osteoimmune.states.lr_pairs` (RANKL-RANK,
    the RANKL-OPG decoy, CSF1-CSF1R, IL1B/IL6/TNF/IL17A, SEMA4D/EFNB2 coupling,
    CXCL12-CXCR4), which thereby becomes a filter on LIANA's output. A row matches a panel
    pair when the pair's ligand is a member of ``ligand_complex`` and its receptor a member of
    ``receptor_complex`` (``IL6`` -> ``IL6R_IL6ST`` matches IL6-IL6R and IL6-IL6ST), compared
    case-insensitively.

    Parameters
    ----------
    results
        The table of :func:`communication`.
    species
        ``human`` or ``mouse``: the panel's symbols.
    receivers
        Bone-lineage cell types (:func:`receivers`); None takes the types of the annotation
        vocabulary whose lineage is in :data:`BONE_LINEAGES`.

    Returns
    -------
    pandas.DataFrame
        The matching rows with all their columns plus ``axis``, ``panel_pair`` (the matching
        panel pairs, e.g. ``IL6-IL6R; IL6-IL6ST``), ``kind`` (signalling, co-receptor or
        decoy: a high OPG decoy score means inhibition of RANK signalling), ``note`` and
        ``receiver_role`` (``bone lineage``, ``osteoclast lineage``: monocytes, macrophages and
        osteoclasts, or ``other``). One row per result row and axis, in the results' order.
    """
    panel = _panel(species)
    if receivers is None:
        receivers = [t for t, lineage in CELL_TYPES.items() if lineage in BONE_LINEAGES]
    frames = []
    for axis, pairs in panel.groupby("axis", sort=False):
        hit = _pair_hits(results, pairs)
        rows = np.flatnonzero(hit.any(axis=0))
        matched = [hit[:, r] for r in rows]
        names = (pairs["ligand"] + "-" + pairs["receptor"]).to_numpy()
        frames.append(results.iloc[rows].assign(
            axis=axis,
            panel_pair=["; ".join(names[m]) for m in matched],
            kind=[_kind(pairs["kind"].to_numpy()[m]) for m in matched],
            note=["; ".join(dict.fromkeys(pairs["note"].to_numpy()[m])) for m in matched],
            _row=rows,
        ))  # fmt: skip
    table = pd.concat(frames).sort_values("_row", kind="mergesort").drop(columns="_row")
    table["receiver_role"] = _receiver_roles(table["target"], set(receivers))
    return table.reset_index(drop=True)


def _kind(kinds: np.ndarray) -> str:
    # A row matching a signalling pair and its co-receptor (IL6R_IL6ST) is signalling.
    return "signalling" if (kinds == "signalling").any() else str(kinds[0])


def sample_design(adata: AnnData, *, sample: str = "sample") -> pd.DataFrame:
    """One row per sample with its condition and donor, for :func:`compare_communication`.

    Parameters
    ----------
    adata
        ``sample``, ``condition`` and ``donor`` in ``obs``.
    sample
        The sample column.

    Returns
    -------
    pandas.DataFrame
        Columns ``sample``, ``condition``, ``donor``; a sample with more than one condition or
        donor is an error.
    """
    columns = [sample, CONDITION, DONOR]
    missing = [c for c in columns if c not in adata.obs.columns]
    if missing:
        msg = f"obs has no column {', '.join(map(repr, missing))}; the reader sets them."
        raise CommunicationError(msg)
    design = adata.obs[columns].drop_duplicates()
    mixed = design[sample][design[sample].duplicated()].astype(str).unique()
    if len(mixed):
        msg = f"Samples {', '.join(mixed)} have cells of more than one condition or donor."
        raise CommunicationError(msg)
    return design.rename(columns={sample: "sample"}).reset_index(drop=True)


def _check_compare_input(per_sample, design, score, resource) -> pd.DataFrame:
    if score not in SCORES:
        msg = f"Unknown score '{score}'; allowed: {', '.join(SCORES)}."
        raise CommunicationError(msg)
    for frame, columns, what in (
        (per_sample, ["sample", "resource", *KEY_COLUMNS, score], "per-sample results"),
        (design, ["sample", CONDITION], "design"),
    ):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            msg = f"The {what} have no column {', '.join(map(repr, missing))}."
            raise CommunicationError(msg)
    if resource is not None:
        per_sample = per_sample[per_sample["resource"] == resource]
    if score != "lr_means" and per_sample["resource"].nunique() > 1:
        msg = (
            f"The ranks of '{score}' depend on the resource and the table holds "
            f"{', '.join(per_sample['resource'].unique())}: pass resource=... to pick one."
        )
        raise CommunicationError(msg)
    unknown = sorted(set(per_sample["sample"].astype(str)) - set(design["sample"].astype(str)))
    if unknown:
        msg = f"Samples {', '.join(unknown)} of the results are not in the design."
        raise CommunicationError(msg)
    return per_sample


def _sample_values(per_sample, *, keys, score, fill_undetected) -> pd.DataFrame:
    # Interactions x samples; the ranks enter as 1 - rank (higher: stronger).
    values = per_sample[score] if score == "lr_means" else 1 - per_sample[score]
    # lr_means does not depend on the resource: one value per interaction and sample.
    wide = per_sample.assign(_value=values.astype(float), sample=per_sample["sample"].astype(str))
    wide = wide.pivot_table(index=keys, columns="sample", values="_value", aggfunc="first")
    if fill_undetected:
        # Both groups were tested in the sample (they appear in its rows) but LIANA did not
        # return the interaction (below expr_prop): no detected communication, 0.
        tested = per_sample.melt(id_vars="sample", value_vars=["source", "target"])
        tested = tested.groupby(tested["sample"].astype(str))["value"].agg(set)
        for sample in wide.columns:
            groups = tested[sample]
            both = wide.index.get_level_values("source").isin(groups) & (
                wide.index.get_level_values("target").isin(groups)
            )
            wide.loc[both & wide[sample].isna().to_numpy(), sample] = 0.0
    return wide


def _donor_aggregates(wide: pd.DataFrame, design: pd.DataFrame, score: str) -> pd.DataFrame:
    # The table compare_conditions takes: one value per donor (mean of its samples).
    design = design.assign(sample=design["sample"].astype(str))
    if DONOR not in design.columns:
        design = design.assign(**{DONOR: design["sample"]})
    long = wide.reset_index(drop=True).rename_axis("interaction").reset_index()
    long = long.melt(id_vars="interaction", var_name="sample", value_name=score).dropna()
    long = long.merge(design[["sample", CONDITION, DONOR]], on="sample", how="left")
    # n_cells is a column compare_conditions carries along; here it counts samples.
    table = long.groupby(["interaction", DONOR, CONDITION], observed=True, sort=True).agg(
        **{score: (score, "mean"), "n_cells": ("sample", "size")}
    )
    table = table.reset_index()
    if isinstance(design[CONDITION].dtype, pd.CategoricalDtype):
        table[CONDITION] = pd.Categorical(
            table[CONDITION], categories=design[CONDITION].cat.categories
        )
    return table


def compare_communication(
    per_sample: pd.DataFrame,
    design: pd.DataFrame,
    *,
    reference: str | None,
    min_donors: int = MIN_DONORS,
    score: str = "lr_means",
    resource: str | None = None,
    fill_undetected: bool = True,
) -> pd.DataFrame:
    """Compare interactions across conditions with one value per donor.

    Parameters
    ----------
    per_sample
        :func:`communication` with ``by="sample"``, usually through :func:`osteoimmune_axes`
        (then ``axis`` is kept and the tests and FDR cover the axis rows only).
    design
        One row per sample: ``sample``, ``condition`` and ``donor`` (:func:`sample_design`);
        without ``donor`` each sample is its own donor.
    reference
        The condition compared against (``condition_a``); None takes the first.
    min_donors
        Fewer donors with a value in a condition and the row is descriptive only, as in
        :func:`osteoimmune.compare.compare_conditions`.
    score
        ``lr_means`` (LIANA's mean of ligand and receptor expression; the same in every
        resource, so the resources' rows are merged) or ``magnitude_rank`` /
        ``specificity_rank``, compared as 1 - rank and for one ``resource`` only.
    resource
        Keep this resource's rows only; None keeps all.
    fill_undetected
        An interaction LIANA did not return for a sample in which both its groups were tested
        (below ``expr_prop``) counts as 0; else it has no value there. A sample without one of
        the groups never has a value.

    Returns
    -------
    pandas.DataFrame
        One row per interaction (``axis`` when given, :data:`KEY_COLUMNS`) with
        ``resources`` (those returning it), ``score``, ``n_samples_detected`` and the columns
        of :data:`osteoimmune.compare.COMPARISON_COLUMNS` but ``variable``: donor means
        ``mean_a``/``mean_b``, ``difference`` (b - a), Hedges' g, Welch's t-test ``p_value``,
        ``p_mannwhitney``, ``fdr`` (Benjamini-Hochberg over the table), ``descriptive_only``.
    """
    per_sample = _check_compare_input(per_sample, design, score, resource)
    keys = (["axis"] if "axis" in per_sample.columns else []) + list(KEY_COLUMNS)
    tested = [c for c in COMPARISON_COLUMNS if c != "variable"]
    empty = pd.DataFrame(columns=[*keys, "resources", "n_samples_detected", "score", *tested])
    if per_sample.empty:
        return empty
    wide = _sample_values(per_sample, keys=keys, score=score, fill_undetected=fill_undetected)
    aggregates = _donor_aggregates(wide, design, score)
    if reference is not None and reference not in set(aggregates[CONDITION].astype(str)):
        # no sample of the reference condition has any of these interactions' cell types
        log.info("No interaction has a value in the reference condition %s.", reference)
        return empty
    table = compare_conditions(
        aggregates, reference=reference, group_key="interaction", min_donors=min_donors
    )
    found = per_sample.groupby(keys, sort=False).agg(
        resources=("resource", lambda r: "; ".join(dict.fromkeys(r))),
        n_samples_detected=("sample", "nunique"),
    )
    index = wide.index.to_frame(index=False).join(found, on=keys)
    out = index.iloc[table["interaction"].to_numpy(int)].reset_index(drop=True)
    table = table.drop(columns=["interaction", "variable"]).reset_index(drop=True)
    return pd.concat([out.assign(score=score), table], axis=1)


def receivers(
    adata: AnnData,
    *,
    groupby: str = "cell_type",
    lineages: Sequence[str] = BONE_LINEAGES,
    min_cells: int = 1,
) -> list[str]:
    """The cell types that count as bone-lineage receivers in a dataset.

    Parameters
    ----------
    adata
        ``groupby`` and ``cell_lineage`` in ``obs``.
    groupby
        The cell grouping used in :func:`communication`.
    lineages
        Lineages of bone-lineage cells: osteoblast lineage (osteolineage) and stroma.
    min_cells
        Types with fewer cells of these lineages are not counted (use the ``min_cells`` of
        :func:`communication` to list only types it tests).

    Returns
    -------
    list of str
        The types (sorted) with at least ``min_cells`` cells of these lineages, ``unassigned``
        never; empty when the dataset has no bone-lineage cells (say so in the report).
    """
    missing = [c for c in (groupby, "cell_lineage") if c not in adata.obs.columns]
    if missing:
        msg = f"obs has no column {', '.join(map(repr, missing))}; the annotation sets them."
        raise CommunicationError(msg)
    obs = adata.obs[[groupby, "cell_lineage"]].dropna().astype(str)
    bone = obs[obs["cell_lineage"].isin(list(lineages)) & (obs[groupby] != UNASSIGNED)]
    counts = bone[groupby].value_counts()
    return sorted(counts.index[counts >= min_cells])


def _plot_rows(axes: pd.DataFrame, *, by: str, n: int) -> pd.DataFrame:
    # Best ranks over resources per interaction and by value; the n best routes x pairs.
    keys = [by, *KEY_COLUMNS]
    rows = axes.groupby(keys, sort=False, observed=True)[["magnitude_rank", "specificity_rank"]]
    rows = rows.min().astype(float).reset_index()
    rows["route"] = rows["source"] + " -> " + rows["target"]
    rows["pair"] = rows["ligand_complex"] + " -> " + rows["receptor_complex"]
    best = rows.groupby(["route", "pair"])["magnitude_rank"].min().nsmallest(n, keep="first")
    return rows.merge(best.index.to_frame(index=False), on=["route", "pair"])


def axes_plot(axes: pd.DataFrame, *, by: str = "condition", n: int = 30) -> plt.Figure:
    """Dot plot of the osteoimmune axes: sender -> receiver (rows) x pair, one panel per group.

    Parameters
    ----------
    axes
        :func:`osteoimmune_axes` of :func:`communication` results.
    by
        The column of the panels (``condition`` or ``sample``).
    n
        Route x pair combinations drawn: those with the best magnitude rank in any panel.

    Returns
    -------
    matplotlib.figure.Figure
        Dot size: -log10 specificity rank; colour: -log10 magnitude rank (the best rank over
        the resources); pairs grouped by axis along the x axis.
    """
    rows = _plot_rows(axes, by=by, n=n)
    panels = _ordered(axes[by]) or ["no interaction on the axes"]
    order = axes.sort_values("axis", kind="mergesort")
    pairs = list(dict.fromkeys(order["ligand_complex"] + " -> " + order["receptor_complex"]))
    pairs = [p for p in pairs if p in set(rows["pair"])]
    routes = sorted(set(rows["route"]))
    fig, grid = plt.subplots(
        1, len(panels), squeeze=False, sharey=True,
        figsize=(1.5 + len(panels) * (1 + 0.35 * len(pairs)), 1.5 + 0.3 * len(routes)),
    )  # fmt: skip
    rows["colour"] = -np.log10(rows["magnitude_rank"].astype(float).clip(lower=1e-6))
    rows["size"] = 10 + 30 * -np.log10(rows["specificity_rank"].astype(float).clip(lower=1e-6))
    vmax = max(float(rows["colour"].max()), 1.0) if len(rows) else 1.0
    for ax, panel in zip(grid[0], panels, strict=True):
        mine = rows[rows[by] == panel]
        points = ax.scatter(
            mine["pair"].map({p: i for i, p in enumerate(pairs)}),
            mine["route"].map({r: i for i, r in enumerate(routes)}),
            s=mine["size"], c=mine["colour"], cmap="viridis", vmin=0, vmax=vmax,
        )  # fmt: skip
        ax.set_xticks(range(len(pairs)), pairs, rotation=70, ha="right", fontsize=6)
        ax.set_yticks(range(len(routes)), routes, fontsize=7)
        ax.set_title(str(panel), fontsize=9)
    fig.colorbar(points, ax=grid[0].tolist(), shrink=0.7, label="-log10 magnitude rank")
    fig.suptitle("Osteoimmune axes (dot size: -log10 specificity rank)", fontsize=9)
    return fig
