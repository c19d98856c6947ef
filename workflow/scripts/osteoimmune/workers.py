"""Worker processes for the steps of one job that can run beside each other.

A job given two threads (``threads: 2``) runs independent, seeded steps in a second process:
UMAP and the stability subsamples beside the Leiden grid (cluster_cells), scrublet beside the
coarse QC clustering (qc_sample). Each step's result depends only on its input and seed, so
the results are the same as with one process; only the wall time changes.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import h5py

# Below this many cells a job runs its steps one after the other: starting the workers
# (a fresh interpreter importing scanpy, ~3 s) costs more than the steps it would overlap.
PARALLEL_MIN_CELLS = 5_000
# What the workers import once, before any task: the modules whose functions they run.
PRELOAD = ("osteoimmune.qc", "osteoimmune.cluster", "osteoimmune.stability")


def workers_for(n_cells: int, threads: int) -> int:
    """How many worker processes a job of ``n_cells`` cells and ``threads`` threads uses."""
    return threads if n_cells >= PARALLEL_MIN_CELLS else 1


def h5ad_cells(path) -> int:
    """The number of cells of an h5ad file, from its obs index alone (no matrix is read)."""
    with h5py.File(path, "r") as f:
        obs = f["obs"]
        return obs[obs.attrs["_index"]].shape[0]


def threads_for_file(path, threads: int = 2) -> int:
    """Threads a job on the h5ad at ``path`` asks for: as many as it uses (:func:`workers_for`).

    One while the file is not written yet: Snakemake asks again once a job's input exists
    (before it runs, for the job it then starts).
    """
    if not Path(path).exists():
        return 1
    return workers_for(h5ad_cells(path), threads)


@contextmanager
def worker_pool(workers: int) -> Iterator[Executor | None]:
    """Worker processes for the steps that can run beside each other (None for one worker).

    The workers are forked from a fresh server process (multiprocessing's ``forkserver``)
    that has imported :data:`PRELOAD`, not from this one: a process that already ran OpenMP
    or BLAS threads (sklearn's neighbour search, numba) cannot safely fork workers that use
    them again. Tasks and results travel pickled.
    """
    if workers < 2:
        yield None
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))  # and not this job's __main__ script
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield pool
