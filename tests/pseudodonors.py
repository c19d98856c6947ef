"""Pseudo-donor studies from real cells, with a known truth, for pseudobulk DE tests and bench.

Each pseudo-donor's sample of a cell type is a Poisson resample of real cells of that type
(``bench/resample.py``: cells drawn with replacement, counts ~ Poisson(original counts)). The
truth is put in before the Poisson draw, by scaling the drawn cells' expected counts:

- spike: in samples of the case condition, chosen genes of one cell type times a known fold
  change (counts stay integers: Poisson(fold change x original counts));
- shift: more (or fewer) cells of one cell type in case samples (a composition change only);
- donor effect: per donor, every gene times a log-normal factor exp(N(0, sd)), the same in
  all of the donor's samples (and so in both conditions of a paired donor).

Only the spiked genes differ between conditions; every other gene is a true null.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from resample import read_source, resample  # noqa: E402

SOURCE = "luecken2021_bmmc_cite"
LABEL = "author_cell_type"


def real_cells(mirror: Path, dataset: str = SOURCE) -> ad.AnnData:
    """A mirrored raw-count dataset read by the pipeline's reader, CSR counts."""
    cells = read_source(dataset, mirror=mirror)
    cells.layers["counts"] = sparse.csr_matrix(cells.layers["counts"], dtype=np.float32)
    return cells


def pick_genes(
    cells: ad.AnnData, cell_type: str, *, n: int, min_mean: float = 1.0, seed: int = 0
) -> list[str]:
    """``n`` random genes with at least ``min_mean`` counts per cell in ``cell_type``."""
    counts = cells.layers["counts"][(cells.obs[LABEL] == cell_type).to_numpy()]
    means = np.asarray(counts.mean(axis=0)).ravel()
    candidates = np.flatnonzero(means >= min_mean)
    if len(candidates) < n:
        msg = f"{cell_type}: only {len(candidates)} genes have {min_mean} counts per cell."
        raise ValueError(msg)
    chosen = np.random.default_rng(seed).choice(candidates, size=n, replace=False)
    return sorted(cells.var_names[chosen].astype(str))


def _design(n_donors: int, conditions: Sequence[str], *, paired: bool) -> pd.DataFrame:
    rows = []
    for i in range(n_donors):
        for condition in conditions:
            donor = f"donor{i + 1}" if paired else f"{condition}_donor{i + 1}"
            sample = f"{donor}_{condition}" if paired else donor
            rows.append({"donor": donor, "condition": condition, "sample": sample})
    return pd.DataFrame(rows).sort_values("sample").reset_index(drop=True)


def _gene_factors(cells, cell_type, *, condition, case, donor_factor, spike) -> np.ndarray:
    factors = donor_factor.copy()
    if condition == case and cell_type in spike:
        genes, fold_change = spike[cell_type]
        where = cells.var_names.get_indexer(list(genes))
        factors[where] *= np.broadcast_to(np.asarray(fold_change, dtype=float), len(where))
    return factors


def _block(source: ad.AnnData, factors: np.ndarray, *, n_cells: int, seed: int):
    """Poisson resample of ``n_cells`` cells whose expected counts are scaled by ``factors``."""
    scaled = ad.AnnData(
        X=None,
        obs=source.obs[["donor"]],
        var=pd.DataFrame(index=source.var_names),
        uns={"osteoimmune": source.uns["osteoimmune"]},
        layers={"counts": source.layers["counts"] @ sparse.diags(factors.astype(np.float32))},
    )
    return resample(scaled, n_cells=n_cells, seed=seed).layers["counts"]


def make_study(
    cells: ad.AnnData,
    *,
    cell_types: Sequence[str],
    n_donors_per_condition: int = 3,
    cells_per_sample: int = 50,
    conditions: Sequence[str] = ("healthy", "osteoporosis"),
    spike: Mapping[str, tuple[Sequence[str], float | Sequence[float]]] | None = None,
    shift: Mapping[str, float] | None = None,
    donor_effect_sd: float = 0.0,
    paired: bool = False,
    seed: int = 0,
) -> tuple[ad.AnnData, pd.DataFrame]:
    """A study in the pipeline's final form: pseudo-donors of real cells, with a known truth.

    ``conditions[0]`` is the reference, ``conditions[1]`` (if any) the case that gets
    ``spike`` and ``shift``. Unpaired: ``n_donors_per_condition`` different donors per
    condition; paired: that many donors, each with a sample in every condition. Returns the
    AnnData (CSR float32 ``layers['counts']``, log-normalised ``X``, obs ``cell_type``,
    ``sample``, ``donor``, ``condition``) and the truth: one row per spiked ``cell_type`` x
    ``gene`` with its ``fold_change``.
    """
    spike, shift = dict(spike or {}), dict(shift or {})
    rng = np.random.default_rng(seed)
    design = _design(n_donors_per_condition, conditions, paired=paired)
    donors = sorted(design["donor"].unique())
    donor_factor = {d: np.exp(rng.normal(0, donor_effect_sd, cells.n_vars)) for d in donors}
    sources = {t: cells[(cells.obs[LABEL] == t).to_numpy()] for t in cell_types}
    case = conditions[1] if len(conditions) > 1 else None
    blocks, obs = [], []
    for row in design.itertuples(index=False):
        for cell_type in cell_types:
            scale = shift.get(cell_type, 1.0) if row.condition == case else 1.0
            n_cells = round(cells_per_sample * scale)
            factors = _gene_factors(
                cells,
                cell_type,
                condition=row.condition,
                case=case,
                donor_factor=donor_factor[row.donor],
                spike=spike,
            )
            block_seed = int(rng.integers(2**31))
            blocks.append(_block(sources[cell_type], factors, n_cells=n_cells, seed=block_seed))
            labels = {**row._asdict(), "cell_type": cell_type}
            obs.append(pd.DataFrame(labels, index=range(n_cells)))
    adata = _assemble(cells, blocks, obs, conditions=conditions, paired=paired)
    return adata, _truth(spike)


def _assemble(cells, blocks, obs, *, conditions, paired) -> ad.AnnData:
    counts = sparse.csr_matrix(sparse.vstack(blocks), dtype=np.float32)
    obs = pd.concat(obs, ignore_index=True)
    obs.index = pd.Index([f"cell{i}" for i in range(len(obs))])
    for key in ("cell_type", "sample", "donor"):
        obs[key] = pd.Categorical(obs[key].astype(str))
    obs["condition"] = pd.Categorical(obs["condition"], categories=list(conditions))
    adata = ad.AnnData(X=counts.copy(), obs=obs, var=pd.DataFrame(index=cells.var_names))
    adata.layers["counts"] = counts
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    source = cells.uns["osteoimmune"]
    adata.uns["osteoimmune"] = {
        "dataset": f"pseudodonors_{source['dataset']}",
        "species": source["species"],
        "value_type": "counts",
        "covariates": [],
        "paired": paired,
        "note": "PSEUDO-DONORS: Poisson resamples of real cells with a spiked truth",
    }
    return adata


def _truth(spike) -> pd.DataFrame:
    rows = []
    for cell_type, (genes, fold_change) in spike.items():
        changes = np.broadcast_to(np.asarray(fold_change, dtype=float), len(genes))
        rows += [
            {"cell_type": cell_type, "gene": g, "fold_change": float(f)}
            for g, f in zip(genes, changes, strict=True)
        ]
    return pd.DataFrame(rows, columns=["cell_type", "gene", "fold_change"])


def score(results: pd.DataFrame, truth: pd.DataFrame, *, alpha: float = 0.05) -> dict:
    """Sensitivity over the spiked genes, false discoveries and FDP over every call."""
    called = results[results["padj"] < alpha]
    true = set(zip(truth["cell_type"], truth["gene"], strict=True))
    hits = {(g, x) for g, x in zip(called["group"], called["gene"], strict=True)}
    found = len(hits & true)
    false = len(hits - true)
    return {
        "n_true": len(true),
        "found": found,
        "sensitivity": found / len(true) if true else float("nan"),
        "n_called": len(hits),
        "false": false,
        "fdp": false / len(hits) if hits else 0.0,
    }
