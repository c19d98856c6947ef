"""Per-step wall-clock timer and peak memory, shared by the two benchmarked scripts."""

from __future__ import annotations

import json
import resource
import time
from contextlib import contextmanager
from pathlib import Path


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (``VmHWM``), MiB.

    Not ``ru_maxrss``: Linux carries that across ``exec``, so a child started by a large
    parent would report the parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepTimer:
    """Record the wall time and the running peak RSS of named steps (``step``: a context).

    Made after the imports, it also records the baseline RSS of the interpreter and libraries.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_after: dict[str, float] = {}
        self.baseline_mib = peak_rss_mib()

    @contextmanager
    def step(self, name: str, *, add: bool = False):
        """Time a step; with ``add`` the time adds to earlier steps of that name."""
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.seconds[name] = elapsed + (self.seconds.get(name, 0.0) if add else 0.0)
        self.peak_after[name] = peak_rss_mib()
        print(f"{name}: {elapsed:.2f} s", flush=True)

    def write(self, path: str | Path, **extra) -> None:
        """Write step times and this process's peak RSS (MiB; Linux reports KiB) as JSON."""
        record = {
            "steps": self.seconds, "peak_rss_mib": peak_rss_mib(),
            "baseline_rss_mib": self.baseline_mib, "peak_after_step_mib": self.peak_after,
            **extra,
        }
        Path(path).write_text(json.dumps(record, indent=1))
