"""The plain scanpy script against the whole workflow, fetch to report, on resampled matrices.

    .venv/bin/python bench/end_to_end.py --cells 20000 100000

For each size: makes (or reuses) the resampled full-transcriptome matrix (``resample.py``,
Matsushita 2023 bone-marrow stroma, 20,243 genes, one sample), runs ``plain_scanpy.py`` on it
in a fresh process (QC, scrublet, normalise, HVG, PCA, neighbours, UMAP, Leiden, Wilcoxon
markers, one ``score_genes`` per library set; scrublet is left out above ``--plain-doublets-max``
cells, as in the issue's 100k reference) and then the workflow (``workflow.py``: Snakemake
``--cores 2``, fetch to report and index). Prints the issue's table: wall time and the largest
process of each, and the workflow's per-rule times; writes ``bench/out/end_to_end.tsv``.
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
DATASET = "matsushita2023_bm_stroma"


def plain(h5ad: Path, *, doublets: bool) -> dict:
    """Run the plain script in a fresh process: wall seconds, peak MiB, its step times."""
    record = resample.OUT / f"plain_{h5ad.stem}.json"
    cmd = [sys.executable, str(BENCH / "plain_scanpy.py"), str(h5ad), "--json", str(record)]
    start = time.perf_counter()
    subprocess.run([*cmd, *([] if doublets else ["--no-doublets"])], check=True)
    result = json.loads(record.read_text())
    return {"wall_s": time.perf_counter() - start, "peak_mib": result["peak_rss_mib"], **result}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--plain-doublets-max", type=int, default=50_000)
    parser.add_argument("--skip-plain", action="store_true", help="the workflow only")
    args = parser.parse_args(argv)
    rows = []
    for n in args.cells:
        h5ad = resample.out_path(n, DATASET)
        if not h5ad.exists():
            resample.main(["--cells", str(n), "--dataset", DATASET])
        row = {"cells": n}
        if not args.skip_plain:
            doublets = n <= args.plain_doublets_max
            result = plain(h5ad, doublets=doublets)
            slow = sorted(result["steps"].items(), key=lambda kv: -kv[1])[:3]
            row |= {
                "plain s": result["wall_s"],
                "plain MiB": result["peak_mib"],
                "plain": ("" if doublets else "no scrublet; ")
                + ", ".join(f"{k} {v:.0f}" for k, v in slow),
            }
        # a fresh process, whose children are only Snakemake and its jobs
        subprocess.run([sys.executable, str(BENCH / "workflow.py"), str(h5ad)], check=True)
        folder = resample.OUT / f"workflow_{h5ad.stem}"
        summary = json.loads((folder / "summary.json").read_text())
        row["workflow s"], row["workflow MiB"] = summary["wall_s"], summary["largest_mib"]
        jobs = pd.read_csv(folder / "jobs.tsv", sep="\t")
        by_rule = jobs.assign(rule=jobs["job"].str.split("/").str[0]).groupby("rule")["s"].sum()
        row["workflow"] = ", ".join(f"{k} {v:.0f}" for k, v in by_rule.nlargest(6).items())
        if "plain s" in row:
            row["speed-up"] = row["plain s"] / row["workflow s"]
            row["memory ratio"] = row["workflow MiB"] / row["plain MiB"]
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(resample.OUT / "end_to_end.tsv", sep="\t", index=False)
    print(table.to_markdown(index=False, floatfmt=".1f"))
    return table


if __name__ == "__main__":
    main()
