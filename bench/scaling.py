"""Per-rule time and peak memory of workflow runs at several sizes, with fitted exponents.

    .venv/bin/python bench/scaling.py bench/out/workflow_resampled_*_{20000,100000,300000}

Each argument is a folder written by ``bench/workflow.py`` (its ``jobs.tsv``; the cell count is
read from the folder's name). For every rule: wall seconds and Snakemake's sampled peak RSS
(MiB) at each size, and the exponent b of a least-squares fit ``cost = a * cells^b`` over the
sizes (b = 1: linear; the kNN graph's n log n fits ~1.1 over this range). Rules with one job
per sample are summed over samples for time and take the largest job's memory. Prints a
markdown table (the one in bench/README.md) and writes it to ``bench/out/scaling.tsv``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def cells_of(folder: Path) -> int:
    """The resampled cell count in a workflow folder's name (``..._100000[_per...]``)."""
    match = re.search(r"_(\d{4,})(?:_per\d+)?(?:_[a-z0-9]+)?$", folder.name)
    if not match:
        msg = f"{folder}: no cell count in the folder's name (made by bench/workflow.py?)"
        raise ValueError(msg)
    return int(match.group(1))


def rule_costs(folder: Path) -> pd.DataFrame:
    """One row per rule: total wall seconds over its jobs, largest sampled peak (MiB)."""
    jobs = pd.read_csv(folder / "jobs.tsv", sep="\t")
    jobs["rule"] = jobs["job"].str.split("/").str[0]
    return jobs.groupby("rule").agg(s=("s", "sum"), mib=("max_rss_MB", "max"))


def exponent(cells: np.ndarray, values: np.ndarray) -> float:
    """b of the least-squares fit of log(values) = log(a) + b log(cells)."""
    keep = values > 0
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(cells[keep]), np.log(values[keep]), 1)[0])


def scaling_table(folders: list[Path]) -> pd.DataFrame:
    sizes = {cells_of(f): rule_costs(f) for f in folders}
    order = sorted(sizes)
    rules = sorted(set().union(*(table.index for table in sizes.values())))
    rows = []
    for rule in rules:
        row = {"rule": rule}
        for n in order:
            table = sizes[n]
            row[f"s @ {n:,}"] = table.at[rule, "s"] if rule in table.index else np.nan
            row[f"MiB @ {n:,}"] = table.at[rule, "mib"] if rule in table.index else np.nan
        cells = np.array(order, dtype=float)
        row["time exponent"] = exponent(cells, np.array([row[f"s @ {n:,}"] for n in order]))
        row["memory exponent"] = exponent(cells, np.array([row[f"MiB @ {n:,}"] for n in order]))
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    args = parser.parse_args(argv)
    table = scaling_table(args.folders)
    out = ROOT / "bench" / "out" / "scaling.tsv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, sep="\t", index=False)
    print(table.to_markdown(index=False, floatfmt=".2f"))
    return table


if __name__ == "__main__":
    main()
