"""Logging set-up for the workflow's scripts (never configured at import time)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from osteoimmune.runguard import follow_workflow


@contextmanager
def logged(path: str | os.PathLike) -> Iterator[logging.Logger]:
    """Send log records, warnings and any failure's traceback of the block to ``path``.

    The exception is re-raised, so Snakemake still sees the job fail (and removes its
    outputs), while the rule's log file says why. Run as a Snakemake job, the script also
    stops when Snakemake dies (:func:`osteoimmune.runguard.follow_workflow`).
    """
    logging.basicConfig(
        filename=path,
        filemode="w",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.captureWarnings(True)
    log = logging.getLogger("osteoimmune")
    follow_workflow()
    try:
        yield log
    except Exception:
        log.exception("failed")
        raise
