"""Cluster jobs: what each asks for, and why one failed (out of memory or time) said plainly.

Requests (:func:`memory_request`, :func:`runtime_request`) grow with the size of what a job
reads and with each retry, and never pass the config's caps. Memory follows the data a job
loads, not its files' compression: an h5ad input counts with its arrays uncompressed
(:func:`data_mb`). Memory per input MB is each rule's own, measured on 100,000 resampled
cells of a full transcriptome (:data:`RULE_MEMORY_PER_INPUT_MB`, bench/README.md); the
default run's jobs (inputs of 1-13 MB) peak at 220-880 MB, under the 1,000 MB base. The whole
100,000-cell workflow, fetch to report, took 10 min on 2 cores when this was set (6.3 min
now) and the slowest default-run job 21 s: 15 min plus 0.1 min per input MB leaves a wide
margin for slower, shared nodes.

SLURM reports a job killed for memory as ``FAILED`` (reason unknown to Snakemake) and the rule's
own log stays empty: the process was killed. What it ran out of is written by slurmstepd into
the job's SLURM log (``.snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log``). After a
failed run (the Snakefile's ``onerror``), :func:`explain_failures` reads the failed jobs from
Snakemake's log, finds that reason in each job's SLURM log, and writes a sentence naming the
resource and the setting to raise into the rule's log and to the terminal.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import h5py

# What slurmstepd / slurmctld write when a job is killed for memory or time.
MEMORY = re.compile(
    r"exceeded memory limit|exceeded job memory limit|oom[-_ ]kill|out_of_memory|out of memory",
    re.IGNORECASE,
)
TIME = re.compile(r"due to time limit|time limit exhausted|\bTIMEOUT\b", re.IGNORECASE)
MEMORY_BASE_MB = 1000
MEMORY_PER_INPUT_MB = 15
# Peak memory per input MB of each rule, measured on 100,000 resampled cells of a full
# transcriptome with inputs counted uncompressed (bench/README.md, `bench/scaling.py
# --memory-model`; Snakemake's peak of the job's processes per input MB: qc_sample 4.59,
# cluster_cells 4.08, report_dataset 4.17, filter_cells 3.08, compare_conditions 2.77,
# infer_communication 1.47, annotate_cells 1.24, compare_expression 1.12, export_h5ad 1.08,
# enrichment 0.99, score_signatures 0.64, compare_composition 0.11), doubled and rounded up.
# The rules that read only the annotations of a large h5ad (composition, scoring's X) have
# small ratios; the report and compare_conditions read the small scores file, so theirs are
# high on few MB. Rules not listed (the read jobs, whose input formats range from h5ad to
# gzipped text, reference training, the index) keep MEMORY_PER_INPUT_MB.
RULE_MEMORY_PER_INPUT_MB = {
    "qc_sample": 9.2,
    "filter_cells": 6.2,
    "cluster_cells": 8.2,
    "annotate_cells": 2.5,
    "score_signatures": 1.3,
    "export_h5ad": 2.2,
    "enrichment": 2.0,
    "compare_expression": 2.3,
    "compare_composition": 0.3,
    "compare_conditions": 5.6,
    "infer_communication": 3.0,
    "report_dataset": 8.4,
}
RUNTIME_BASE_MIN = 15
RUNTIME_PER_INPUT_MB = 0.1


def memory_request(
    input_mb: float,
    attempt: int,
    *,
    cap_mb: int,
    base_mb: float = MEMORY_BASE_MB,
    per_input_mb: float | None = None,
    rule: str | None = None,
) -> int:
    """``mem_mb`` of a job: (base + per_input_mb x input MB) x attempt, at most ``cap_mb``.

    ``per_input_mb`` defaults to the rule's measured ratio (:data:`RULE_MEMORY_PER_INPUT_MB`),
    or :data:`MEMORY_PER_INPUT_MB` for a rule not measured.
    """
    if per_input_mb is None:
        per_input_mb = RULE_MEMORY_PER_INPUT_MB.get(rule, MEMORY_PER_INPUT_MB)
    return int(min((base_mb + per_input_mb * input_mb) * attempt, cap_mb))


def data_mb(paths) -> float:
    """MiB of the data in a job's input files (h5ad arrays counted uncompressed).

    An HDF5 file (h5ad) counts the bytes of its arrays uncompressed, any other file its size,
    a file not there yet 0. A job's memory follows the arrays it loads, which an lzf or gzip
    intermediate holds in 1.5-3.5x fewer bytes than an uncompressed one (config
    ``intermediate_compression``): the file's size would make the request depend on the
    compression. Read from the files' metadata only; MiB as Snakemake's ``input.size_mb``.
    """
    total = 0
    for path in map(Path, paths):
        if not path.is_file():
            continue
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as handle:
                total += _array_bytes(handle)
        else:
            total += path.stat().st_size
    return total / 2**20


def _array_bytes(handle: h5py.File) -> int:
    """Bytes of every array of an open HDF5 file, uncompressed."""
    sizes: list[int] = []

    def add(_: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            sizes.append(obj.size * obj.dtype.itemsize)

    handle.visititems(add)
    return sum(sizes)


def manifest_mb(path: str | Path) -> float:
    """MB of the files a fetch manifest lists: what a read job really reads (0 before the fetch).

    The read jobs' only input is the manifest, a few KB; their memory follows the data files.
    """
    try:
        files = json.loads(Path(path).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return 0.0
    return sum(float(item.get("bytes") or 0) for item in files) / 1e6


def runtime_request(
    input_mb: float,
    attempt: int,
    *,
    cap_min: int,
    base_min: float = RUNTIME_BASE_MIN,
    per_input_mb: float = RUNTIME_PER_INPUT_MB,
) -> str:
    """``runtime`` of a job with its unit (Snakemake reads a bare number as seconds)."""
    return f"{int(min((base_min + per_input_mb * input_mb) * attempt, cap_min))}m"


_ERROR = re.compile(r"^Error in rule (\w+):\n((?:[ \t]+.*\n?)*)", re.MULTILINE)


@dataclass(frozen=True)
class FailedJob:
    """A failed job as Snakemake's log names it: its rule, its logs, its SLURM log if any."""

    rule: str
    logs: tuple[Path, ...]
    slurm_log: Path | None


def failed_jobs(text: str) -> list[FailedJob]:
    """The failed jobs in the text of Snakemake's log (its ``Error in rule ...`` blocks)."""
    jobs = {}
    for match in _ERROR.finditer(text):
        fields = dict(re.findall(r"^[ \t]+(\w+): (.*)$", match.group(2), flags=re.MULTILINE))
        paths = [Path(p.strip()) for p in fields.get("log", "").split(" (check")[0].split(",") if p]
        slurm = [p for p in paths if "slurm_logs" in p.parts]
        own = tuple(p for p in paths if "slurm_logs" not in p.parts)
        job = FailedJob(match.group(1), own, slurm[0] if slurm else None)
        jobs[(job.rule, job.logs, job.slurm_log)] = job
    return list(jobs.values())


def diagnose(slurm_log: str) -> str | None:
    """``"memory"`` or ``"time"`` when the SLURM log says the job was killed for it."""
    if MEMORY.search(slurm_log):
        return "memory"
    if TIME.search(slurm_log):
        return "time"
    return None


def explanation(job: FailedJob, kind: str, *, detail: str, max_mem_mb: int, max_runtime_min: int):
    """The sentence for a job killed for ``kind`` (memory or time)."""
    if kind == "memory":
        what, setting = "memory", f"resources.max_mem_mb (now {max_mem_mb})"
    else:
        what, setting = "time", f"resources.max_runtime_min (now {max_runtime_min})"
    return (
        f"Rule {job.rule}: the SLURM job ran out of {what} ({detail}). Its request grows with "
        f"its input and with each retry up to config {setting}: raise that cap, or `retries:` in "
        f"profiles/slurm/config.yaml, and run again. SLURM log: {job.slurm_log}"
    )


def explain_failures(main_log, *, max_mem_mb: int, max_runtime_min: int) -> list[str]:
    """Explain every failed job of a run that SLURM killed for memory or time.

    ``main_log`` is Snakemake's log of the run (a path, or the list of them ``onerror`` gets).
    Each sentence is appended to the rule's own log (so it is never empty) and returned.
    """
    logs = [main_log] if isinstance(main_log, str | Path) else list(main_log or [])
    text = "".join(Path(p).read_text(errors="replace") for p in logs if Path(p).is_file())
    messages = []
    for job in failed_jobs(text):
        if job.slurm_log is None or not job.slurm_log.is_file():
            continue
        text = job.slurm_log.read_text(errors="replace")
        kind = diagnose(text)
        if kind is None:
            continue
        pattern = MEMORY if kind == "memory" else TIME
        line = next(ln for ln in text.splitlines() if pattern.search(ln)).strip()
        message = explanation(
            job, kind, detail=line, max_mem_mb=max_mem_mb, max_runtime_min=max_runtime_min
        )
        for log in job.logs:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as handle:
                handle.write(message + "\n")
        messages.append(message)
    return messages
