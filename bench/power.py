"""Power and observed FDR of pseudobulk DE (issue 15) on pseudo-donor studies of real cells.

Each study: ``donors`` pseudo-donors per condition (healthy, osteoporosis), one sample each;
a sample's CD14+ monocytes are 50 Poisson resamples of the mirror's Luecken 2021 CITE-seq
monocytes (tests/pseudodonors.py, which reuses bench/resample.py), every gene of a donor
times a log-normal donor factor exp(N(0, ``--donor-sd``)), and in osteoporosis samples
``--spiked`` genes (at least 0.5 counts per cell) times the fold change, half up and half
down (balanced, as DESeq2's median-of-ratios normalisation assumes). The whole library path
runs: ``compare_expression`` (scanpy pseudobulk, filterByExpr, PyDESeq2 Wald, BH).

Power = spiked genes with padj < 0.05 / spiked genes; observed FDR = calls among unspiked
genes / all calls, both pooled over the ``--reps`` studies of a cell. Fold change 1 is the
complete null: its cell gives the calls per study.

    .venv/bin/python bench/power.py            # 3 fold changes + null x 3 donor counts x 2 reps
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from pseudodonors import make_study, pick_genes, real_cells, score  # noqa: E402

from osteoimmune.pseudobulk import compare_expression  # noqa: E402

MIRROR = Path(os.environ.get("OSTEOIMMUNE_MIRROR") or ROOT.parent / "shared" / "data")
OUT = ROOT / "bench" / "out"
CELL_TYPE = "CD14+ Mono"


def one_study(cells, *, fold_change: float, donors: int, n_spiked: int, donor_sd: float, seed):
    """Score one pseudo-donor study; returns the counts behind power and FDR."""
    genes = pick_genes(cells, CELL_TYPE, n=n_spiked, min_mean=0.5, seed=seed)
    folds = np.where(np.arange(n_spiked) % 2 == 0, fold_change, 1 / fold_change)
    adata, truth = make_study(
        cells,
        cell_types=[CELL_TYPE],
        n_donors_per_condition=donors,
        spike={CELL_TYPE: (genes, folds)},
        donor_effect_sd=donor_sd,
        seed=seed,
    )
    if fold_change == 1:  # the complete null: nothing is spiked
        truth = truth.iloc[:0]
    results, summary, _ = compare_expression(adata, reference="healthy", alpha=0.05)
    found = score(results, truth, alpha=0.05)
    found["genes_tested"] = int(summary["genes_tested"].iloc[0])
    return found


def run(cells, *, fold_changes, donor_counts, reps, n_spiked, donor_sd, seed) -> pd.DataFrame:
    rows = []
    for fold_change in fold_changes:
        for donors in donor_counts:
            for rep in range(reps):
                start = time.perf_counter()
                found = one_study(
                    cells,
                    fold_change=fold_change,
                    donors=donors,
                    n_spiked=n_spiked,
                    donor_sd=donor_sd,
                    seed=seed + 1000 * rep + 10 * donors,
                )
                found.update(
                    fold_change=fold_change,
                    donors=donors,
                    rep=rep,
                    seconds=time.perf_counter() - start,
                )
                print(found, flush=True)
                rows.append(found)
    return pd.DataFrame(rows)


def cell_text(part: pd.DataFrame) -> str:
    if part["n_true"].sum() == 0:
        return f"null: {part['n_called'].mean():.1f} calls/study"
    power = part["found"].sum() / part["n_true"].sum()
    called = part["n_called"].sum()
    fdr = part["false"].sum() / called if called else 0.0
    return f"{power:.2f} / {fdr:.3f}"


def markdown(table: pd.DataFrame) -> str:
    grid = {
        f"{d} + {d} donors": {
            f"{fc:g}": cell_text(table[(table["fold_change"] == fc) & (table["donors"] == d)])
            for fc in sorted(table["fold_change"].unique())
        }
        for d in sorted(table["donors"].unique())
    }
    frame = pd.DataFrame(grid)
    frame.index.name = "fold change"
    return frame.to_markdown()


def machine_note(seconds: float) -> str:
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, load average "
        f"{load} at the end; {seconds:.0f} s in all, PyDESeq2 n_cpus=1"
    )


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold-changes", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--donors", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--spiked", type=int, default=40)
    parser.add_argument("--donor-sd", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # PyDESeq2's small-n notes
    start = time.perf_counter()
    cells = real_cells(MIRROR)
    table = run(
        cells,
        fold_changes=args.fold_changes,
        donor_counts=args.donors,
        reps=args.reps,
        n_spiked=args.spiked,
        donor_sd=args.donor_sd,
        seed=args.seed,
    )
    OUT.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT / "power.tsv", sep="\t", index=False)
    print("\nPower / observed FDR at padj < 0.05 (pooled over reps):\n")
    print(markdown(table))
    print(f"\n{machine_note(time.perf_counter() - start)}")
    return table


if __name__ == "__main__":
    main()
