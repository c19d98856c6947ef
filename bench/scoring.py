"""Benchmark signature scoring: rank (UCell/AUCell), null calibration and vectorised mean
scores against a loop of ``sc.tl.score_genes`` over the same sets on the same matrix.

    .venv/bin/python bench/scoring.py --cells 100000
    .venv/bin/python bench/scoring.py --cells 20000 --dataset matsushita2023_bm_stroma

Makes (or reuses) ``bench/out/scoring_{dataset}_{N}_lognorm.h5ad``: real cells of a raw-count
registry dataset from the mirror, resampled with Poisson noise by ``resample.py``, then
normalised (``normalize_total`` to 1e4, ``log1p``): CSR float32 in X, the input a scoring rule
gets (without the counts layer). Each run below starts a fresh Python process that reads the
file and scores the library's ``use: score`` sets for the dataset's species that pass the
pipeline's coverage threshold (50%), with their present genes:

- ``score_genes_loop``: one ``sc.tl.score_genes`` call per set (``ctrl_as_ref=False``, seed 0),
  as ``osteoimmune.scoring.score_signatures`` does;
- ``mean``: ``osteoimmune.calibration.mean_scores``, the same scores for all sets in one pass;
- ``rank``: ``osteoimmune.ranks.rank_scores`` (UCell, max_rank 1500);
- ``all``: every method with calibration: ``calibrate`` with ``ucell`` and with ``mean`` (score,
  z and p against 100 random sets per set), AUCell scores, and the UCell-vs-mean agreement.

Every process records its step times and its peak resident memory (``VmHWM`` of
``/proc/self/status``), also over the scoring steps alone (reset through
``/proc/self/clear_refs`` after reading), next to the size of the matrix (CSR data, indices
and indptr; the count matrix has the same size). ``VmHWM`` rather than ``ru_maxrss``: Linux
hands a child process its parent's ``ru_maxrss`` at exec, so a child of a process that had just
resampled 100k cells would report the parent's peak. Writes
``bench/out/scoring_{dataset}_{N}.tsv`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import resample
import scanpy as sc
from timing import StepTimer, peak_rss_mib, reset_peak_rss, rss_mib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

from osteoimmune.calibration import calibrate, mean_scores  # noqa: E402
from osteoimmune.ranks import method_agreement, rank_scores  # noqa: E402
from osteoimmune.registry import load_registry  # noqa: E402
from osteoimmune.scoring import coverage_table, gene_coverage  # noqa: E402
from osteoimmune.signatures import load_library  # noqa: E402

RUNS = ("score_genes_loop", "mean", "rank", "all")
DEFAULT_DATASET = "matsushita2023_bm_stroma"
SEED = 0


def prepare(dataset: str, n_cells: int, seed: int) -> Path:
    """Write (once) ``n_cells`` resampled cells of ``dataset``, log-normalised, as h5ad."""
    out = resample.OUT / f"scoring_{dataset}_{n_cells}_lognorm.h5ad"
    if out.exists():
        return out
    resample.OUT.mkdir(parents=True, exist_ok=True)
    adata = resample.resample(resample.read_source(dataset), n_cells=n_cells, seed=seed)
    del adata.layers["counts"]  # X holds the same counts; normalised below, as the rule gets it
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.write_h5ad(out)
    print(f"wrote {out}: {adata.n_obs} resampled cells x {adata.n_vars} genes", flush=True)
    return out


def scored_sets(adata: ad.AnnData, species: str) -> dict[str, list[str]]:
    """The ``use: score`` sets that pass 50% coverage, each with its present genes."""
    library = load_library()
    names = library.names(use=("score",), species=species)
    table = coverage_table(adata, library, species=species, sets=names, min_coverage=0.5)
    return {
        name: gene_coverage(adata, library.genes(name, species))[0]
        for name in table.index[table["scored"]]
    }


def csr_mib(matrix) -> float:
    """Bytes of a CSR matrix's data, indices and indptr, in MiB."""
    return (matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes) / 2**20


def run_score_genes_loop(adata, sets, timer):
    with timer.step(f"score_genes loop ({len(sets)} sets)"):
        for name, genes in sets.items():
            sc.tl.score_genes(
                adata, genes, ctrl_as_ref=False, random_state=SEED, score_name=f"score_{name}"
            )
    return {"score_genes": adata.obs[[f"score_{name}" for name in sets]].to_numpy()}


def run_mean(adata, sets, timer):
    with timer.step("mean_scores (vectorised score_genes)"):
        scores = mean_scores(adata, sets, seed=SEED)
    return {"mean": scores.to_numpy()}


def run_rank(adata, sets, timer):
    with timer.step("rank_scores (UCell)"):
        scores = rank_scores(adata, sets)
    return {"ucell": scores.to_numpy()}


def run_all(adata, sets, timer):
    with timer.step("calibrate UCell (score, z, p; 100 null)"):
        ucell = calibrate(adata, sets, method="ucell", seed=SEED)
    with timer.step("calibrate mean (score, z, p; 100 null)"):
        mean = calibrate(adata, sets, method="mean", seed=SEED)
    with timer.step("rank_scores (AUCell)"):
        rank_scores(adata, sets, method="aucell")
    with timer.step("method agreement"):
        agreement = method_agreement(ucell.score, mean.score)
    print(agreement.to_string(), flush=True)
    return {
        "ucell": ucell.score.to_numpy(),
        "mean_calibrated": mean.score.to_numpy(),
        "agreement": agreement["spearman"].to_numpy(),
    }


WORKERS = {
    "score_genes_loop": run_score_genes_loop,
    "mean": run_mean,
    "rank": run_rank,
    "all": run_all,
}


def worker(run: str, h5ad: Path, record: Path, species: str) -> None:
    """One benchmark run in this process: read, score; write the JSON record."""
    timer = StepTimer()
    with timer.step("read"):
        adata = ad.read_h5ad(h5ad)
    counts_mib, nnz = csr_mib(adata.X), int(adata.X.nnz)
    sets = scored_sets(adata, species)
    before_mib = peak_rss_mib()
    reset = reset_peak_rss()
    start_mib = rss_mib()
    outputs = WORKERS[run](adata, sets, timer)
    scoring_s = sum(s for step, s in timer.seconds.items() if step != "read")
    np.savez(record.with_suffix(".npz"), **outputs)
    timer.write(
        record,
        run=run,
        n_cells=adata.n_obs,
        n_genes=adata.n_vars,
        nnz=nnz,
        n_sets=len(sets),
        count_matrix_mib=counts_mib,
        peak_before_scoring_mib=before_mib,
        rss_scoring_start_mib=start_mib,
        scoring_peak_mib=peak_rss_mib() if reset else None,
        process_peak_mib=max(before_mib, peak_rss_mib()),
        scoring_s=scoring_s,
        sets=list(sets),
    )


def run_one(run: str, h5ad: Path, record: Path, species: str) -> dict:
    """Run one benchmark in a fresh interpreter; return its JSON record."""
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            run,
            "--h5ad",
            str(h5ad),
            "--json",
            str(record),
            "--species",
            species,
        ],
        check=True,
    )
    result = json.loads(record.read_text())
    result["process_s"] = time.perf_counter() - start
    return result


def results_table(results: dict[str, dict]) -> pd.DataFrame:
    """Runs x (scoring time, process time, memory peaks and their ratio to the matrix)."""
    rows = {}
    for run, r in results.items():
        matrix = r["count_matrix_mib"]
        rows[run] = {
            "scoring s": r["scoring_s"],
            "process wall s": r["process_s"],
            "peak RSS MiB": r["process_peak_mib"],
            "RSS after read MiB": r["rss_scoring_start_mib"],
            "scoring adds MiB": r["scoring_peak_mib"] - r["rss_scoring_start_mib"],
            "matrix MiB": matrix,
            "peak / matrix": r["process_peak_mib"] / matrix,
        }
    table = pd.DataFrame(rows).T
    table.index.name = "run"
    return table


def check_outputs(out: Path, tag: str) -> dict:
    """Agreement of the vectorised scores with the score_genes loop, and of the methods."""
    loop = np.load(out / f"score_genes_loop_{tag}.npz")["score_genes"]
    mean = np.load(out / f"mean_{tag}.npz")["mean"]
    every = np.load(out / f"all_{tag}.npz")
    rank = np.load(out / f"rank_{tag}.npz")["ucell"]
    return {
        "max |mean_scores - score_genes loop|": float(np.abs(mean - loop).max()),
        "max |calibrate(mean).score - score_genes loop|": float(
            np.abs(every["mean_calibrated"] - loop).max()
        ),
        "max |calibrate(ucell).score - rank_scores|": float(np.abs(every["ucell"] - rank).max()),
        "Spearman UCell vs mean, median over sets": float(np.median(every["agreement"])),
        "Spearman UCell vs mean, min over sets": float(np.min(every["agreement"])),
    }


def main(argv: list[str] | None = None) -> pd.DataFrame | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--h5ad", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--species", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.h5ad, args.json, args.species)
        return None
    species = load_registry(ROOT / "config" / "datasets.yaml")[args.dataset]["species"]
    h5ad = prepare(args.dataset, args.cells, args.seed)
    tag = f"{args.dataset}_{args.cells}"
    load = [os.getloadavg()[0]]
    results = {
        run: run_one(run, h5ad, resample.OUT / f"{run}_{tag}.json", species) for run in args.runs
    }
    load.append(os.getloadavg()[0])
    table = results_table(results)
    table.to_csv(resample.OUT / f"scoring_{tag}.tsv", sep="\t", float_format="%.2f")
    first = next(iter(results.values()))
    print(
        f"\n{first['n_cells']} resampled cells of {args.dataset} ({first['n_genes']} genes, "
        f"{first['nnz'] / first['n_cells']:.0f} nonzero per cell), {first['n_sets']} sets, "
        f"1-min load average {load[0]:.1f} before, {load[1]:.1f} after\n"
    )
    print(table.to_markdown(floatfmt=".1f"))
    for run, r in results.items():
        print(f"\n{run}: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["steps"].items()))
    if set(RUNS) <= set(args.runs):
        print("\n" + json.dumps(check_outputs(resample.OUT, tag), indent=1))
    return table


if __name__ == "__main__":
    main()
