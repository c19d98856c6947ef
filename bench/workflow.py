"""Run the real workflow, fetch to report, on a resampled matrix.

    .venv/bin/python bench/workflow.py bench/out/resampled_20000.h5ad
    .venv/bin/python bench/workflow.py bench/out/resampled_20000.h5ad --until clustered

Registers the matrix as a local dataset (``path:`` entry, a registry written next to the
outputs), runs Snakemake with ``--cores 2`` up to the dataset's report and index (everything a
user's ``snakemake`` run makes; ``--until clustered`` stops at ``clustered.h5ad``) in
``bench/out/workflow_<name>/``, and tabulates each job's wall time and peak memory from the
rules' own ``benchmark:`` files (Snakemake samples the job's processes; ``max_rss`` in MiB),
plus the wall time of the whole run and the exact peak RSS of the largest single process. This
is what a user's run costs: samples are QC'd in parallel jobs, and every job holds only its
own data.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATASET = "bench"
TARGETS = {
    "report": "results/index.html",
    "clustered": f"results/{DATASET}/intermediate/clustered.h5ad",
}


def registry(h5ad: Path, *, species: str = "human") -> dict:
    """A one-dataset registry for the resampled matrix (raw counts in ``layers['counts']``)."""
    return {
        "datasets": {
            DATASET: {
                "title": f"RESAMPLED benchmark matrix {h5ad.name} (not real cells)",
                "species": species,
                "tissue": "resampled bone marrow",
                "paper": "none (benchmark)",
                "doi": None,
                "accession": None,
                "license": "as the source dataset",
                "values": "counts",
                "files": [
                    {
                        "role": "counts",
                        "path": str(h5ad.resolve()),
                        "format": "h5ad",
                        "layer": "counts",
                    }
                ],
                "metadata": {key: {"column": key} for key in ("sample", "donor", "condition")},
                "author_label": None,
            }
        }
    }


def job_table(workdir: Path) -> pd.DataFrame:
    """Wall seconds and peak RSS (MB) of every job, from the rules' benchmark files."""
    rows = []
    for path in sorted((workdir / "benchmarks").rglob("*.tsv")):
        record = pd.read_csv(path, sep="\t").iloc[0]
        job = path.relative_to(workdir / "benchmarks").with_suffix("")
        rows.append({"job": str(job), "s": record["s"], "max_rss_MB": record["max_rss"]})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("h5ad", type=Path)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument(
        "--mem-mb",
        type=int,
        default=20000,
        help="Snakemake --resources mem_mb: jobs run side by side only while their requests fit",
    )
    parser.add_argument("--until", choices=["report", "clustered"], default="report")
    parser.add_argument("--tag", default="", help="suffix of the output folder's name")
    parser.add_argument(
        "--config",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config keys to set for this run (Snakemake --config), e.g. to compare settings",
    )
    args = parser.parse_args(argv)
    workdir = ROOT / "bench" / "out" / f"workflow_{args.h5ad.stem}{args.tag}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    with h5py.File(args.h5ad, "r") as handle:  # the species the resampler recorded
        species = handle["uns/osteoimmune/species"][()].decode()
    (workdir / "datasets.yaml").write_text(yaml.safe_dump(registry(args.h5ad, species=species)))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(ROOT / "config" / "config.yaml"),
        "--cores",
        str(args.cores),
        "--resources",
        f"mem_mb={args.mem_mb}",
        "--config",
        f"registry={workdir / 'datasets.yaml'}",
        f"datasets=[{DATASET}]",
        *args.config,
        "--",
        TARGETS[args.until],
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    # Snakemake samples a job's RSS (every second for 30 s, then every 30 s), which can miss
    # short peaks. The kernel's ru_maxrss of reaped descendants is the exact peak of the
    # largest single process (a job's script, or Snakemake itself), KiB on Linux.
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    table = job_table(workdir)
    table.to_csv(workdir / "jobs.tsv", sep="\t", index=False)
    summary = {
        "wall_s": wall,
        "largest_mib": largest,
        "cores": args.cores,
        "mem_mb": args.mem_mb,
        "config": args.config,
        "until": args.until,
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(table.to_markdown(index=False, floatfmt=".1f"))
    print(
        f"\nwhole run (snakemake --cores {args.cores}): {wall:.1f} s wall; "
        f"largest job peak (Snakemake's samples): {table['max_rss_MB'].max():.0f} MiB; "
        f"largest process peak (ru_maxrss, exact): {largest:.0f} MiB"
    )
    return table


if __name__ == "__main__":
    main()
