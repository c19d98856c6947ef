"""Macrophage polarization states, per-gene tables and the immune-to-bone ligand-receptor panel.

State calls use the calibrated signature results of :func:`osteoimmune.calibration.calibrate`
(per-cell z-scores and empirical p-values), never raw scores, and only within the gate of
monocytes and macrophages from the annotation. The per-gene tables and the ligand-receptor
panel read a few genes as sparse column slices of the log-normalised matrix; the cells x genes
matrix is never densified.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from osteoimmune.errors import StateError
from osteoimmune.panels import FAMILIES, UNASSIGNED, gene_positions
from osteoimmune.signatures import SPECIES, SignatureLibrary, load_library

GATE_TYPES = ("classical monocyte", "non-classical monocyte", "macrophage")
STATES = ("M1-like", "M2-like", "mixed", "unpolarized")
STATE_COLUMNS = ("polarization_index", "polarization_state")
# Reported gene by gene per cell type (:func:`per_gene_genes`): the RANKL/OPG axis and the
# cytokines that push osteoclasts on or hold them back.
PER_GENE_SETS = (
    "osteoimmune_RANKL_OPG_axis",
    "osteoclastogenic_inflammatory_cytokines",
    "anti_osteoclastogenic_cytokines",
)

log = logging.getLogger("osteoimmune")


def gate_mask(obs: pd.DataFrame, *, cell_types: Sequence[str] = GATE_TYPES) -> np.ndarray:
    """Return which cells are in the polarization gate (monocytes and macrophages).

    A type whose family (:data:`osteoimmune.panels.FAMILIES`) is in ``cell_types`` is in the
    gate too: the macrophage states (lipid-associated, erythroblastic-island, osteal).

    Parameters
    ----------
    obs
        Cell annotations with a ``cell_type`` column.
    cell_types
        Cell types in the gate.

    Returns
    -------
    numpy.ndarray
        Boolean, one value per row of ``obs``.
    """
    _require_columns(obs, ["cell_type"], what="obs")
    # States of a gated type (a lipid-associated or erythroblastic-island macrophage is a
    # macrophage) are in the gate with it.
    members = {*cell_types, *(t for t, family in FAMILIES.items() if family in cell_types)}
    return obs["cell_type"].isin(sorted(members)).to_numpy(dtype=bool)


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], *, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        msg = (
            f"{what} has no column {', '.join(map(repr, missing))} (columns: "
            f"{', '.join(map(str, frame.columns)) or 'none'})."
        )
        raise StateError(msg)


def _check_polarization_input(z, p, gate, m1, m2, alpha) -> np.ndarray:
    for frame, what in ((z, "z-scores"), (p, "p-values")):
        missing = [name for name in (m1, m2) if name not in frame.columns]
        if missing:
            msg = (
                f"Calibrated {what} have no set {', '.join(map(repr, missing))}; it was not "
                "scored. Check the signature coverage table (sets under the coverage threshold "
                "are not scored) and the set names."
            )
            raise StateError(msg)
    if not z.index.equals(p.index):
        msg = "z-scores and p-values are not for the same cells in the same order."
        raise StateError(msg)
    gate = np.asarray(gate)
    if gate.dtype != bool or gate.shape != (len(z),):
        msg = f"gate must be a boolean array with one value per cell ({len(z)}), got {gate.shape}."
        raise StateError(msg)
    if not 0 < alpha < 1:
        msg = f"alpha must be between 0 and 1, got {alpha}."
        raise StateError(msg)
    return gate


def polarization(
    z: pd.DataFrame,
    p: pd.DataFrame,
    *,
    gate: np.ndarray,
    m1: str,
    m2: str,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Call M1/M2 polarization per cell from calibrated M1 and M2 signature results.

    Parameters
    ----------
    z, p
        Per-cell z-scores and empirical p-values, cells x sets (``Calibration.z``/``.p``).
    gate
        Boolean per cell: the cells to call (see :func:`gate_mask`).
    m1, m2
        Names of the M1 and M2 sets.
    alpha
        A set is significant in a cell when its empirical p is below ``alpha``.

    Returns
    -------
    pandas.DataFrame
        Indexed like ``z``: ``polarization_index`` = z[m1] - z[m2] and ``polarization_state``,
        categorical with categories :data:`STATES`: M1-like (only M1 significant), M2-like
        (only M2), mixed (both), unpolarized (neither). Both are NaN outside the gate; the
        state is also NaN where a p-value is NaN, the index where a z-score is (or both are
        infinite).
    """
    gate = _check_polarization_input(z, p, gate, m1, m2, alpha)
    p1, p2 = p[m1].to_numpy(dtype=float), p[m2].to_numpy(dtype=float)
    sig1, sig2 = p1 < alpha, p2 < alpha
    codes = np.select([sig1 & ~sig2, ~sig1 & sig2, sig1 & sig2], [0, 1, 2], default=3)
    callable_ = gate & ~np.isnan(p1) & ~np.isnan(p2)
    state = pd.Categorical.from_codes(np.where(callable_, codes, -1), categories=list(STATES))
    index = (z[m1].astype(float) - z[m2].astype(float)).where(gate)
    return pd.DataFrame(
        {"polarization_index": index.to_numpy(), "polarization_state": state}, index=z.index
    )


def _group_order(values: pd.Series) -> list:
    # Categories in their own order, other values sorted: the same input, the same rows.
    seen = pd.unique(values.dropna())
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [c for c in values.cat.categories if c in set(seen)]
    return sorted(seen, key=str)


def _states_of(obs: pd.DataFrame) -> pd.Series:
    states = obs["polarization_state"]
    unknown = set(states.dropna().astype(str)) - set(STATES)
    if unknown:
        msg = f"Unknown polarization states {sorted(unknown)}; expected {', '.join(STATES)}."
        raise StateError(msg)
    return pd.Series(pd.Categorical(states, categories=list(STATES)), index=obs.index)


def state_table(obs_with_states: pd.DataFrame, *, groupby: str = "sample") -> pd.DataFrame:
    """Count polarization states per group among gated cells.

    Parameters
    ----------
    obs_with_states
        Cell annotations with ``groupby`` and the columns of :func:`polarization`.
    groupby
        Column to group by (``sample``, ``cell_type``, ...).

    Returns
    -------
    pandas.DataFrame
        Tidy, one row per group and state (all four states, groups in order): ``groupby``,
        ``state``, ``n_cells``, ``n_gated`` (cells with a state in the group), ``fraction``
        (``n_cells / n_gated``; NaN without gated cells) and ``mean_polarization_index`` of the
        group's gated cells (over finite values), repeated on the group's rows.
    """
    _require_columns(obs_with_states, [groupby, *STATE_COLUMNS], what="obs")
    obs = obs_with_states[obs_with_states[groupby].notna()]
    states = _states_of(obs)
    gated = states.notna().to_numpy()
    groups = _group_order(obs[groupby])
    rows = pd.MultiIndex.from_product([groups, list(STATES)], names=[groupby, "state"])
    keys = [obs[groupby].to_numpy()[gated], states.astype(str).to_numpy()[gated]]
    counts = pd.Series(1, index=pd.MultiIndex.from_arrays(keys)).groupby(level=[0, 1]).size()
    table = counts.reindex(rows, fill_value=0).rename("n_cells").reset_index()
    table["n_gated"] = table.groupby(groupby, sort=False)["n_cells"].transform("sum")
    with np.errstate(invalid="ignore", divide="ignore"):
        table["fraction"] = table["n_cells"] / table["n_gated"].replace(0, np.nan)
    index = obs["polarization_index"].astype(float).where(gated)
    means = index[np.isfinite(index)].groupby(obs[groupby], observed=True).mean()
    table["mean_polarization_index"] = table[groupby].map(means).astype(float)
    table["state"] = pd.Categorical(table["state"], categories=list(STATES))
    return table


def _kept_groups(
    obs: pd.DataFrame, *, groupby: str, min_cells: int, exclude: Sequence[str]
) -> tuple[list, np.ndarray, np.ndarray]:
    # Groups with at least min_cells cells; codes per cell (-1: not in a kept group); sizes.
    _require_columns(obs, [groupby], what="obs")
    if int(min_cells) != min_cells or min_cells < 1:
        msg = f"min_cells must be a positive integer, got {min_cells}."
        raise StateError(msg)
    values, excluded = obs[groupby], set(exclude)
    counts = values.value_counts()
    groups = [g for g in _group_order(values) if g not in excluded and counts[g] >= min_cells]
    codes = pd.Index(groups).get_indexer(values.to_numpy())
    return groups, codes, counts.reindex(groups).to_numpy(dtype=float)


def _column_slice(matrix, columns: np.ndarray) -> sparse.csr_matrix:
    # Only the requested columns, as CSR; a dense X is sliced before it is converted.
    if sparse.issparse(matrix):
        return sparse.csr_matrix(matrix[:, columns])
    return sparse.csr_matrix(np.asarray(matrix[:, columns]))


def _group_stats(matrix, codes: np.ndarray, columns: np.ndarray, sizes: np.ndarray):
    # Group x gene mean and fraction > 0: an indicator (groups x cells) product with the slice.
    cells = np.flatnonzero(codes >= 0)
    indicator = sparse.csr_matrix(
        (np.ones(len(cells)), (codes[cells], cells)), shape=(len(sizes), len(codes))
    )
    block = _column_slice(matrix, columns).astype(np.float64)
    sums = (indicator @ block).toarray()
    expressing = (indicator @ (block > 0).astype(np.float64)).toarray()
    return sums / sizes[:, None], expressing / sizes[:, None]


def gene_table(
    adata: AnnData,
    genes: Sequence[str],
    *,
    groupby: str = "cell_type",
    min_cells: int = 10,
    case_insensitive: bool = False,
    exclude: Sequence[str] = (UNASSIGNED,),
) -> pd.DataFrame:
    """Mean expression and fraction of expressing cells of a few genes per group.

    Parameters
    ----------
    adata
        Log-normalised expression in ``X`` (sparse stays sparse; only the genes' columns are
        read) and ``groupby`` in ``obs``.
    genes
        Gene symbols, e.g. ``load_library().genes("osteoimmune_RANKL_OPG_axis", species)``.
    groupby
        Column of ``obs`` to group by.
    min_cells
        Groups with fewer cells are dropped.
    case_insensitive
        Match symbols case-insensitively (``uns['osteoimmune']['gene_symbol_case'] ==
        'upper'``: mouse symbols stored upper-cased).
    exclude
        Groups left out (cells not assigned a type).

    Returns
    -------
    pandas.DataFrame
        Tidy, one row per gene and group (genes in the given order, groups in ``obs`` order):
        ``groupby``, ``gene`` (as given), ``n_cells``, ``mean`` (mean log-normalised
        expression), ``fraction`` (of cells with expression > 0) and ``present``; genes absent
        from the dataset have NaN ``mean`` and ``fraction`` and ``present`` False.
    """
    genes = list(dict.fromkeys(genes))
    groups, codes, sizes = _kept_groups(
        adata.obs, groupby=groupby, min_cells=min_cells, exclude=exclude
    )
    positions = gene_positions(adata, case_insensitive=case_insensitive)
    key = str.upper if case_insensitive else str
    columns = np.array([positions.get(key(g), -1) for g in genes], dtype=np.int64)
    present = columns >= 0
    mean = np.full((len(groups), len(genes)), np.nan)
    fraction = mean.copy()
    if groups and present.any():
        mean[:, present], fraction[:, present] = _group_stats(
            adata.X, codes, columns[present], sizes
        )
    return pd.DataFrame(
        {
            groupby: np.tile(np.array(groups, dtype=object), len(genes)),
            "gene": np.repeat(np.array(genes, dtype=object), len(groups)),
            "n_cells": np.tile(sizes, len(genes)).astype(np.int64),
            "mean": mean.T.ravel(),
            "fraction": fraction.T.ravel(),
            "present": np.repeat(present, len(groups)),
        }
    )


class LRPair(NamedTuple):
    """A ligand and its receptor (or co-receptor, or decoy receptor) with a short note."""

    ligand: str
    receptor: str
    kind: str  # "signalling", "co-receptor" or "decoy"
    note: str


_PAIR_NOTES = {
    "RANKL-RANK": "RANKL drives osteoclast differentiation through RANK",
    "RANKL-OPG": (
        "decoy: OPG made by the receiver binds RANKL and blocks RANK signalling; a high "
        "score means inhibition"
    ),
    "CSF1-CSF1R": "M-CSF: survival and proliferation of osteoclast precursors and macrophages",
    "IL1B-IL1R1": "pro-osteoclastogenic cytokine",
    "IL6-IL6R": "classic IL-6 signalling needs membrane IL-6R on the receiver",
    "IL6-IL6ST": (
        "co-receptor: gp130 is the signalling subunit of the IL-6 receptor; trans-signalling "
        "through soluble IL-6R needs only gp130 on the receiver"
    ),
    "TNF-TNFR1": "pro-osteoclastogenic cytokine",
    "IL17A-IL17RA": "Th17 cytokine; induces RANKL in osteoblast-lineage and stromal cells",
    "SEMA4D-PLXNB1": "osteoclast Sema4D suppresses bone formation through Plexin-B1",
    "EFNB2-EPHB4": "bidirectional ephrinB2-EphB4 coupling of osteoclasts and osteoblasts",
    "CXCL12-CXCR4": "CXCL12 from the stromal niche retains CXCR4+ cells in the marrow",
}
# Pair -> (human ligand, human receptor, mouse ligand, mouse receptor, kind); mouse symbols
# are the MGI ones, not case-converted human ones (human IL6R is mouse Il6ra).
_PAIR_GENES = {
    "RANKL-RANK": ("TNFSF11", "TNFRSF11A", "Tnfsf11", "Tnfrsf11a", "signalling"),
    "RANKL-OPG": ("TNFSF11", "TNFRSF11B", "Tnfsf11", "Tnfrsf11b", "decoy"),
    "CSF1-CSF1R": ("CSF1", "CSF1R", "Csf1", "Csf1r", "signalling"),
    "IL1B-IL1R1": ("IL1B", "IL1R1", "Il1b", "Il1r1", "signalling"),
    "IL6-IL6R": ("IL6", "IL6R", "Il6", "Il6ra", "signalling"),
    "IL6-IL6ST": ("IL6", "IL6ST", "Il6", "Il6st", "co-receptor"),
    "TNF-TNFR1": ("TNF", "TNFRSF1A", "Tnf", "Tnfrsf1a", "signalling"),
    "IL17A-IL17RA": ("IL17A", "IL17RA", "Il17a", "Il17ra", "signalling"),
    "SEMA4D-PLXNB1": ("SEMA4D", "PLXNB1", "Sema4d", "Plxnb1", "signalling"),
    "EFNB2-EPHB4": ("EFNB2", "EPHB4", "Efnb2", "Ephb4", "signalling"),
    "CXCL12-CXCR4": ("CXCL12", "CXCR4", "Cxcl12", "Cxcr4", "signalling"),
}
LR_PAIRS: dict[str, tuple[LRPair, ...]] = {
    "human": tuple(
        LRPair(ligand, receptor, kind, _PAIR_NOTES[name])
        for name, (ligand, receptor, _, _, kind) in _PAIR_GENES.items()
    ),
    "mouse": tuple(
        LRPair(ligand, receptor, kind, _PAIR_NOTES[name])
        for name, (_, _, ligand, receptor, kind) in _PAIR_GENES.items()
    ),
}
# Library sets whose members are cited as the source of a pair's genes.
LR_SOURCE_SETS = (
    "osteoimmune_RANKL_OPG_axis",
    "osteoimmune_coupling_semaphorin_ephrin",
    "osteoclastogenic_inflammatory_cytokines",
)
SPEC_SOURCE = "pair as named in the product spec (issue 5)"


def _check_species(species: str) -> None:
    if species not in SPECIES:
        msg = f"Unknown species '{species}'; allowed: {', '.join(SPECIES)}."
        raise StateError(msg)


def _pair_source(pair: LRPair, members: dict[str, set[str]]) -> tuple[str, list[str]]:
    # Short source (sets holding the pair's genes) and the names of those sets.
    parts, sets, covered = [], [], set()
    for name, genes in members.items():
        hit = [g for g in (pair.ligand, pair.receptor) if g.upper() in genes]
        if hit:
            parts.append(f"{name} ({', '.join(hit)})")
            sets.append(name)
            covered.update(hit)
    if not parts:
        return SPEC_SOURCE, sets
    rest = [g for g in (pair.ligand, pair.receptor) if g not in covered]
    if rest:
        parts.append(f"{', '.join(rest)}: {SPEC_SOURCE}")
    return "; ".join(parts), sets


def lr_pairs(*, species: str, library: SignatureLibrary | None = None) -> pd.DataFrame:
    """The ligand-receptor pairs of the panel with their sources in the signature library.

    Parameters
    ----------
    species
        ``human`` or ``mouse`` (species-correct symbols from :data:`LR_PAIRS`).
    library
        The signature library; default :func:`osteoimmune.signatures.load_library`.

    Returns
    -------
    pandas.DataFrame
        One row per pair in :data:`LR_PAIRS` order: ``ligand``, ``receptor``, ``kind``,
        ``source`` (the sets of :data:`LR_SOURCE_SETS` that hold the pair's genes, else
        :data:`SPEC_SOURCE`), ``citation`` (those sets' citations, each once) and ``note``.
    """
    _check_species(species)
    library = load_library() if library is None else library
    members = {n: {g.upper() for g in library.genes(n, species)} for n in LR_SOURCE_SETS}
    rows = []
    for pair in LR_PAIRS[species]:
        source, sets = _pair_source(pair, members)
        cited = dict.fromkeys(c for name in sets for c in library.sets[name]["citations"])
        rows.append({**pair._asdict(), "source": source, "citation": "; ".join(cited)})
    return pd.DataFrame(rows, columns=["ligand", "receptor", "kind", "source", "citation", "note"])


def first_scored(preference: str | Sequence[str], scored) -> str | None:
    """The first set of a preference list (or a single name) among ``scored``, else None."""
    names = [preference] if isinstance(preference, str) else list(preference)
    return next((name for name in names if name in scored), None)


def polarization_gate(
    obs: pd.DataFrame, *, cell_types: Sequence[str] = GATE_TYPES, by_design: str | None = None
) -> tuple[np.ndarray, str]:
    """The cells in the M1/M2 gate, and how the gate was drawn.

    Parameters
    ----------
    obs
        Cell annotations with a ``cell_type`` column.
    cell_types
        Cell types in the gate (see :func:`gate_mask`).
    by_design
        Why every cell is in the gate: the experiment defines the population (a registry
        entry's ``polarization_gate.reason``). None gates by ``cell_types``.

    Returns
    -------
    tuple
        The boolean gate, one value per row of ``obs``, and its description for the report.
    """
    if by_design:
        return np.ones(len(obs), dtype=bool), f"all cells, by design: {by_design}"
    return gate_mask(obs, cell_types=cell_types), f"annotated {', '.join(cell_types)}"


def call_polarization(
    adata: AnnData,
    *,
    scored: Sequence[str],
    m1: str | Sequence[str],
    m2: str | Sequence[str],
    alpha: float,
    cell_types: Sequence[str] = GATE_TYPES,
    by_design: str | None = None,
) -> dict | None:
    """Call M1/M2 states in the gate, into ``adata.obs``, from the calibrated scores.

    Reads the z-scores (``obs['z_<set>']``) and empirical p-values (``obsm['signature_p']``)
    of :func:`osteoimmune.scoring.calibrated_scores`. Without a scored M1 or M2 set, no state
    is called.

    Parameters
    ----------
    adata
        Scored and calibrated cells, annotated (``obs['cell_type']``).
    scored
        The sets that were calibrated (the index of the method-agreement table).
    m1, m2
        The M1 and M2 set, or preference lists of them: the first one scored is used.
    alpha, cell_types, by_design
        See :func:`polarization` and :func:`polarization_gate`.

    Returns
    -------
    dict or None
        The sets used, the number of cells gated and the gate's description, also stored in
        ``adata.uns['osteoimmune']['polarization']``; None when no state was called.
    """
    gate, described = polarization_gate(adata.obs, cell_types=cell_types, by_design=by_design)
    m1, m2 = first_scored(m1, scored), first_scored(m2, scored)
    record = None
    if m1 and m2:
        states = polarization(
            adata.obs.filter(like="z_").rename(columns=lambda c: c.removeprefix("z_")),
            adata.obsm["signature_p"],
            gate=gate,
            m1=m1,
            m2=m2,
            alpha=alpha,
        )
        adata.obs[states.columns] = states
        record = {"m1": m1, "m2": m2, "gated_cells": int(gate.sum()), "gate": described}
        adata.uns.setdefault("osteoimmune", {})["polarization"] = record
    log.info("polarization gate: %d cells (%s)", gate.sum(), described)
    return record


def per_gene_genes(library: SignatureLibrary, *, species: str) -> list[str]:
    """The genes reported one by one per cell type: those of :data:`PER_GENE_SETS`, sorted."""
    return sorted({g for name in PER_GENE_SETS for g in library.genes(name, species)})
