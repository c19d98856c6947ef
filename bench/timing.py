"""Per-step wall-clock timer and peak memory, shared by the two benchmarked scripts."""

from __future__ import annotations

import json
import resource
import time
from contextlib import contextmanager
from pathlib import Path


class StepTimer:
    """Record the wall time of named steps; ``step`` is a context manager."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        print(f"{name}: {self.seconds[name]:.2f} s", flush=True)

    def write(self, path: str | Path, **extra) -> None:
        """Write step times and this process's peak RSS (MiB; Linux reports KiB) as JSON."""
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        record = {"steps": self.seconds, "peak_rss_mib": peak_mib, **extra}
        Path(path).write_text(json.dumps(record, indent=1))
