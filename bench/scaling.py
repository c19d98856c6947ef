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
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from osteoimmune.slurm import data_mb

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


def input_mb(folder: Path) -> pd.Series:
    """MiB of the input data of each rule's largest job in a workflow folder.

    From Snakemake's ``--detailed-summary`` of the run (which files each output was made
    from), measured as the resource model of ``workflow/rules/resources.smk`` does
    (``osteoimmune.slurm.data_mb``: h5ad arrays uncompressed, other files' bytes).
    """
    cmd = [
        sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(folder.resolve()), "--configfile", str(ROOT / "config" / "config.yaml"),
        "--config", f"registry={folder.resolve() / 'datasets.yaml'}", "datasets=[bench]",
        "--detailed-summary",
    ]  # fmt: skip
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    summary = pd.read_csv(io.StringIO(text), sep="\t")
    sizes = {}
    for _, row in summary.drop_duplicates(["rule", "input-file(s)"]).iterrows():
        files = [folder / f for f in str(row["input-file(s)"]).split(",") if f and f != "-"]
        mb = data_mb(files)
        sizes[row["rule"]] = max(mb, sizes.get(row["rule"], 0.0))
    return pd.Series(sizes, name="input MB")


def memory_model(folder: Path) -> pd.DataFrame:
    """Peak MiB per input MB of each rule at one size: what the SLURM requests scale by."""
    costs = rule_costs(folder).join(input_mb(folder), how="left")
    costs["MiB per input MB"] = costs["mib"] / costs["input MB"].where(costs["input MB"] > 1)
    return costs


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument(
        "--memory-model",
        action="store_true",
        help="also print peak MiB per input MB of each rule in the largest run",
    )
    args = parser.parse_args(argv)
    table = scaling_table(args.folders)
    out = ROOT / "bench" / "out" / "scaling.tsv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, sep="\t", index=False)
    print(table.to_markdown(index=False, floatfmt=".2f"))
    if args.memory_model:
        largest = max(args.folders, key=cells_of)
        print(f"\n{largest.name}\n")
        print(memory_model(largest).to_markdown(floatfmt=".1f"))
    return table


if __name__ == "__main__":
    main()
