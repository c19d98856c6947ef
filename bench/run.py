"""Benchmark the pipeline's QC -> clustering against the plain scanpy tutorial.

    .venv/bin/python bench/run.py --cells 20000

Makes (or reuses) ``bench/out/resampled_{N}.h5ad`` (resampled real cells, see resample.py),
runs ``plain_scanpy.py`` and ``pipeline.py`` on it, each in a fresh Python process, and writes
per-step wall time and each process's peak RSS to ``bench/out/results_{N}.tsv``; prints the
same as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import resample

BENCH = Path(__file__).resolve().parent
RUNS = {"plain": "plain_scanpy.py", "pipeline": "pipeline.py"}


def run_one(script: str, h5ad: Path, record: Path) -> dict:
    """Run one benchmarked script in a fresh interpreter; return its JSON record."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(BENCH / script), str(h5ad), "--json", str(record)], check=True
    )
    result = json.loads(record.read_text())
    result["process_s"] = time.perf_counter() - start
    record.write_text(json.dumps(result, indent=1))
    return result


def results_table(results: dict[str, dict]) -> pd.DataFrame:
    """Steps x runs (seconds), then total, process wall time, peak RSS, cells and clusters."""
    table = pd.DataFrame({name: r["steps"] for name, r in results.items()})
    table.loc["total (steps)"] = table.sum()
    for row, key in [
        ("process wall incl. imports (s)", "process_s"),
        ("peak RSS (MiB)", "peak_rss_mib"),
        ("RSS after imports (MiB)", "baseline_rss_mib"),
        ("cells after QC", "cells_out"),
        ("clusters", "clusters"),
    ]:
        table.loc[row] = [r[key] for r in results.values()]
    table.loc["peak RSS above imports (MiB)"] = (
        table.loc["peak RSS (MiB)"] - table.loc["RSS after imports (MiB)"]
    )
    peaks = pd.DataFrame({name: r.get("step_peak_mib", {}) for name, r in results.items()})
    table = pd.concat([table, peaks.rename(index=lambda step: f"peak MiB: {step}")])
    table.index.name = "step"
    return table.rename(columns=lambda name: f"{name} s")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dataset",
        default=resample.DEFAULT_DATASET,
        help="raw-count registry dataset whose cells are resampled",
    )
    parser.add_argument("--only", choices=sorted(RUNS), help="run one of the two scripts")
    args = parser.parse_args(argv)
    h5ad = resample.out_path(args.cells, args.dataset)
    if not h5ad.exists():
        resample.main(
            ["--cells", str(args.cells), "--seed", str(args.seed), "--dataset", args.dataset]
        )
    stem = h5ad.stem.removeprefix("resampled_")
    runs = {args.only: RUNS[args.only]} if args.only else RUNS
    results = {
        name: run_one(script, h5ad, resample.OUT / f"{name}_{stem}.json")
        for name, script in runs.items()
    }
    for name in RUNS:  # with --only, the other script's last record of this matrix
        record = resample.OUT / f"{name}_{stem}.json"
        if name not in results and record.exists():
            results[name] = json.loads(record.read_text())
    results = {name: results[name] for name in RUNS if name in results}
    table = results_table(results)
    table.to_csv(resample.OUT / f"results_{stem}.tsv", sep="\t", float_format="%.2f")
    print(f"\n{args.cells} resampled cells ({h5ad.name})\n")
    # tabulate shows None, not NaN, as missing: a step only one of the two runs has
    print(
        table.astype(object).where(table.notna(), None).to_markdown(floatfmt=".1f", missingval="–")
    )
    return table


if __name__ == "__main__":
    main()
